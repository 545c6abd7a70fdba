package sandbox

import (
	"testing"
	"time"
)

// TestWarmSetResize: a set's target starts at one, doubles with each take
// that finds it empty up to the pool's size, and comes down by one per
// warmShrink without such a miss.
func TestWarmSetResize(t *testing.T) {
	t0 := time.Now()
	type take struct {
		found bool
		after time.Duration // since t0
		want  int           // the target after the take
	}
	for _, tc := range []struct {
		name  string
		most  int
		takes []take
	}{
		{"misses double up to the size", 8, []take{{false, 0, 2}, {false, 0, 4}, {false, 0, 8}, {false, 0, 8}}},
		{"size not a power of two", 3, []take{{false, 0, 2}, {false, 0, 3}, {false, 0, 3}}},
		{"size one stays one", 1, []take{{false, 0, 1}, {true, 0, 1}}},
		{"hits keep the target", 8, []take{{false, 0, 2}, {false, 0, 4}, {true, time.Second, 4}, {true, 2 * time.Second, 4}}},
		{"shrinks by one per quiet period", 8, []take{
			{false, 0, 2}, {false, 0, 4},
			{true, warmShrink, 3}, {true, warmShrink + time.Second, 3}, {true, 2 * warmShrink, 2},
			{true, 3 * warmShrink, 1}, {true, 9 * warmShrink, 1},
		}},
		{"a miss after shrinking doubles again", 8, []take{{false, 0, 2}, {true, warmShrink, 1}, {false, warmShrink + 1, 2}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &warmSet{want: 1, taken: t0, missed: t0}
			for i, tk := range tc.takes {
				s.resize(tk.found, t0.Add(tk.after), tc.most)
				if s.want != tk.want {
					t.Fatalf("take %d (found %v at +%s): target %d, want %d", i, tk.found, tk.after, s.want, tk.want)
				}
			}
		})
	}
}

// TestWarmSetToStart: the refill starts what the target lacks, counting
// the cells ready and those being set up, never more than par at once.
func TestWarmSetToStart(t *testing.T) {
	for _, tc := range []struct {
		name                         string
		want, ready, preparing, busy int
		par, start                   int
	}{
		{"empty set", 4, 0, 0, 0, 2, 2},
		{"one short", 4, 3, 0, 0, 2, 1},
		{"full", 4, 4, 0, 0, 2, 0},
		{"over the target after a shrink", 2, 4, 0, 0, 2, 0},
		{"setups in flight count", 4, 1, 2, 0, 2, 0},
		{"room for one more setup", 4, 0, 1, 0, 2, 1},
		{"one at a time", 8, 0, 0, 0, 1, 1},
		{"resident cells serving requests count", 4, 1, 0, 3, 2, 0},
		{"room beside those serving", 4, 0, 0, 2, 4, 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &warmSet{want: tc.want, ready: make([]*initProc, tc.ready), preparing: tc.preparing, busy: tc.busy}
			if got := s.toStart(tc.par); got != tc.start {
				t.Errorf("toStart(%d) = %d, want %d", tc.par, got, tc.start)
			}
			if s.preparing != tc.preparing+tc.start {
				t.Errorf("preparing %d after, want %d", s.preparing, tc.preparing+tc.start)
			}
		})
	}
}

// TestWarmSetExpire: the refill takes resident inits that have served for
// residentMaxAge out of the ready ones, keeps the younger ones and any
// warm (non-resident) init, and is woken when the next one expires.
func TestWarmSetExpire(t *testing.T) {
	t0 := time.Now()
	old := &initProc{resident: true, born: t0.Add(-residentMaxAge)}
	young := &initProc{resident: true, born: t0.Add(-time.Second)}
	younger := &initProc{resident: true, born: t0}
	warm := &initProc{born: t0.Add(-time.Hour)}
	s := &warmSet{ready: []*initProc{old, younger, warm, young}}
	expired, next := s.expire(t0)
	if len(expired) != 1 || expired[0] != old {
		t.Errorf("expired %v, want the one born residentMaxAge ago", expired)
	}
	if len(s.ready) != 3 || s.ready[0] != younger || s.ready[1] != warm || s.ready[2] != young {
		t.Errorf("ready after: %v, want the others in their order", s.ready)
	}
	if want := young.born.Add(residentMaxAge); !next.Equal(want) {
		t.Errorf("next expiry %v, want %v (the oldest kept resident init's)", next, want)
	}
	if _, next := (&warmSet{ready: []*initProc{warm}}).expire(t0); !next.IsZero() {
		t.Errorf("a set without resident inits: next expiry %v, want none", next)
	}
}
