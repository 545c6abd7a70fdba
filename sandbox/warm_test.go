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
