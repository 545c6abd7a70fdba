package sandbox

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/cellgate/cellgate/confine"
)

// TestWarmSetResize: a set's target starts at one, doubles with each take
// that finds it empty up to the pool's size, grows by one with each take
// that found one only after waiting for it, and comes down by one per
// warmShrink without either.
func TestWarmSetResize(t *testing.T) {
	t0 := time.Now()
	type take struct {
		found  bool
		after  time.Duration // since t0
		want   int           // the target after the take
		waited bool          // found one only after waiting
	}
	for _, tc := range []struct {
		name  string
		most  int
		takes []take
	}{
		{"misses double up to the size", 8, []take{{false, 0, 2, false}, {false, 0, 4, false}, {false, 0, 8, false}, {false, 0, 8, false}}},
		{"size not a power of two", 3, []take{{false, 0, 2, false}, {false, 0, 3, false}, {false, 0, 3, false}}},
		{"size one stays one", 1, []take{{false, 0, 1, false}, {true, 0, 1, false}}},
		{"hits keep the target", 8, []take{{false, 0, 2, false}, {false, 0, 4, false}, {true, time.Second, 4, false}, {true, 2 * time.Second, 4, false}}},
		{"shrinks by one per quiet period", 8, []take{
			{false, 0, 2, false}, {false, 0, 4, false},
			{true, warmShrink, 3, false}, {true, warmShrink + time.Second, 3, false}, {true, 2 * warmShrink, 2, false},
			{true, 3 * warmShrink, 1, false}, {true, 9 * warmShrink, 1, false},
		}},
		{"a miss after shrinking doubles again", 8, []take{{false, 0, 2, false}, {true, warmShrink, 1, false}, {false, warmShrink + 1, 2, false}}},
		{"a wait adds one", 4, []take{
			{found: true, want: 2, waited: true}, {found: true, want: 2}, {found: true, after: time.Second, want: 3, waited: true},
			{found: true, after: 2 * time.Second, want: 4, waited: true}, {found: true, after: 3 * time.Second, want: 4, waited: true},
		}},
		{"a wait holds the target up", 8, []take{
			{found: false, want: 2}, {found: true, after: warmShrink - time.Second, want: 3, waited: true},
			{found: true, after: 2*warmShrink - 2*time.Second, want: 3}, {found: true, after: 2*warmShrink - time.Second, want: 2},
		}},
		{"a long quiet period counts each of its steps", 8, []take{
			{false, 0, 2, false}, {false, 0, 4, false}, {false, 0, 8, false},
			{true, 3*warmShrink + time.Second, 5, false}, {true, 4 * warmShrink, 4, false},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &warmSet{want: 1, taken: t0, missed: t0}
			for i, tk := range tc.takes {
				s.resize(tk.found, tk.waited, t0.Add(tk.after), tc.most)
				if s.want != tk.want {
					t.Fatalf("take %d (found %v at +%s): target %d, want %d", i, tk.found, tk.after, s.want, tk.want)
				}
			}
		})
	}
}

// TestWarmSetShrinkIdle: the refill lowers the target of a set nobody
// takes from, one per warmShrink, so that the cells whose views age are
// not all set up again: a set grown to 16 by a burst and then idle for
// viewMaxAge has its aged cells replaced by 16 - viewMaxAge/warmShrink.
func TestWarmSetShrinkIdle(t *testing.T) {
	t0 := time.Now()
	s := &warmSet{want: 16, taken: t0, missed: t0}
	s.shrink(t0.Add(warmShrink - time.Millisecond))
	if s.want != 16 {
		t.Fatalf("within warmShrink of the last miss: target %d, want 16", s.want)
	}
	s.shrink(t0.Add(viewMaxAge))
	if want := 16 - int(viewMaxAge/warmShrink); s.want != want {
		t.Fatalf("viewMaxAge after the last miss: target %d, want %d", s.want, want)
	}
	// The steps counted are not counted again.
	s.shrink(t0.Add(viewMaxAge + warmShrink/2))
	if want := 16 - int(viewMaxAge/warmShrink); s.want != want {
		t.Errorf("half a period later: target %d, want %d", s.want, want)
	}
	s.shrink(t0.Add(time.Hour))
	if s.want != 1 {
		t.Errorf("an hour later: target %d, want 1", s.want)
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

// TestWarmSetStepDone: a set idle for warmIdle, or dropped, is done with
// and counts no setup in flight; one taken from starts what it lacks.
// Before, the refill counted the setups (toStart) and then found the set
// idle and ended without starting them: a take meanwhile waited up to
// returnWait for cells that never came.
func TestWarmSetStepDone(t *testing.T) {
	t0 := time.Now()
	for _, tc := range []struct {
		name    string
		taken   time.Time
		dropped bool
		done    bool
		start   int
	}{
		{"taken from", t0, false, false, 1},
		{"idle", t0.Add(-warmIdle), false, true, 0},
		{"dropped", t0, true, true, 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			s := &warmSet{want: 1, taken: tc.taken, missed: tc.taken, dropped: tc.dropped}
			_, _, start, done := s.step(t0, warmParallel)
			if done != tc.done || start != tc.start || s.preparing != tc.start || s.coming(true) != tc.start {
				t.Errorf("step: start %d, done %v, %d in flight, %d coming; want start %d, done %v, as many in flight and coming",
					start, done, s.preparing, s.coming(true), tc.start, tc.done)
			}
		})
	}
}

// TestWarmSetExpire: the refill takes the inits whose view has reached
// viewMaxAge out of the ready ones, resident or warm (a warm cell waiting
// an hour under a steady trickle of requests would otherwise serve an
// hour-old view), keeps the younger ones in their order, and is woken
// when the next one expires.
func TestWarmSetExpire(t *testing.T) {
	t0 := time.Now()
	made := func(ago time.Duration) viewStamp { return viewStamp{made: t0.Add(-ago)} }
	old := &initProc{resident: true, view: made(viewMaxAge)}
	young := &initProc{resident: true, view: made(time.Second)}
	younger := &initProc{resident: true, view: made(0)}
	warm := &initProc{view: made(time.Hour)}
	warmYoung := &initProc{view: made(2 * time.Second)}
	s := &warmSet{ready: []*initProc{old, younger, warm, warmYoung, young}}
	expired, next := s.expire(t0)
	if len(expired) != 2 || expired[0] != old || expired[1] != warm {
		t.Errorf("expired %v, want the resident and the warm init whose views are viewMaxAge old or more", expired)
	}
	if len(s.ready) != 3 || s.ready[0] != younger || s.ready[1] != warmYoung || s.ready[2] != young {
		t.Errorf("ready after: %v, want the others in their order", s.ready)
	}
	if want := warmYoung.view.made.Add(viewMaxAge); !next.Equal(want) {
		t.Errorf("next expiry %v, want %v (the oldest view kept)", next, want)
	}
	if _, next := (&warmSet{}).expire(t0); !next.IsZero() {
		t.Errorf("an empty set: next expiry %v, want none", next)
	}
}

// TestViewStamp: a view serves requests until viewMaxAge after it was
// made, and only while the daemon's files it covers are the ones the
// host holds: one renamed over, removed, or made where none was, ends it.
func TestViewStamp(t *testing.T) {
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policy, []byte("a"), 0o644); err != nil {
		t.Fatal(err)
	}
	plan, err := confine.Prepare(&confine.Plan{Namespaces: confine.NSMount, Binds: []confine.Bind{
		{Source: dir, Target: "/conf"},
		{Source: os.DevNull, Target: "/conf/policy.yaml", Mask: true, Hides: policy},
		{Source: os.DevNull, Target: "/conf/key.pem", Mask: true, Hides: filepath.Join(dir, "key.pem")},
	}})
	if err != nil {
		t.Fatal(err)
	}
	v := stampView(plan)
	now := v.made
	if !v.current(now, hiddenNow(plan)) {
		t.Fatal("a view just made is not current")
	}
	if v.current(now.Add(viewMaxAge), hiddenNow(plan)) {
		t.Error("a view viewMaxAge old is current")
	}
	// Written in place: the mask still covers it.
	if err := os.WriteFile(policy, []byte("b"), 0o644); err != nil {
		t.Fatal(err)
	}
	if !v.current(now, hiddenNow(plan)) {
		t.Error("a hidden file written in place ends the view")
	}
	for _, tc := range []struct {
		name   string
		change func() error
	}{
		{"renamed over", func() error {
			if err := os.WriteFile(policy+".new", []byte("c"), 0o644); err != nil {
				return err
			}
			return os.Rename(policy+".new", policy)
		}},
		{"removed", func() error { return os.Remove(policy) }},
		{"made where none was", func() error { return os.WriteFile(filepath.Join(dir, "key.pem"), nil, 0o600) }},
	} {
		if err := tc.change(); err != nil {
			t.Fatal(err)
		}
		if v.current(now, hiddenNow(plan)) {
			t.Errorf("%s: the view still current", tc.name)
		}
		v = stampView(plan)
		if !v.current(now, hiddenNow(plan)) {
			t.Errorf("%s: a view made after is not current", tc.name)
		}
	}
	if v := stampView(mustPrepare(t, &confine.Plan{})); v.hidden != nil || !v.current(v.made, nil) {
		t.Errorf("a plan hiding nothing: stamp %+v", v)
	}
}

func mustPrepare(t *testing.T, p *confine.Plan) *confine.Prepared {
	t.Helper()
	prep, err := confine.Prepare(p)
	if err != nil {
		t.Fatal(err)
	}
	return prep
}
