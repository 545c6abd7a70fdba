package sandbox

import (
	"errors"
	"testing"
)

func TestUIDPool(t *testing.T) {
	r := UIDRange{First: 70000, Count: 130} // crosses two 64-bit words, ends mid-word
	p := newUIDPool(r)
	seen := map[uint32]bool{}
	for i := range r.Count {
		uid, err := p.acquire()
		if err != nil {
			t.Fatalf("acquire #%d: %v", i, err)
		}
		if uid < r.First || uid >= r.First+r.Count {
			t.Fatalf("acquire #%d = %d, outside %s", i, uid, r)
		}
		if seen[uid] {
			t.Fatalf("acquire #%d = %d, handed out twice", i, uid)
		}
		seen[uid] = true
	}
	if _, err := p.acquire(); !errors.Is(err, ErrNoUID) {
		t.Fatalf("acquire on a full range: %v, want ErrNoUID", err)
	}
	p.release(70005)
	p.release(70129)
	// Round-robin: the search goes on after the last uid handed out
	// (70129, the end), wraps, and finds 70005 before 70129.
	if uid, _ := p.acquire(); uid != 70005 {
		t.Errorf("after releasing 70005 and 70129: got %d, want 70005", uid)
	}
	if uid, _ := p.acquire(); uid != 70129 {
		t.Errorf("then got %d, want 70129", uid)
	}
	if p.inFlight() != int(r.Count) {
		t.Errorf("inFlight %d, want %d", p.inFlight(), r.Count)
	}
}

func TestUIDPoolRoundRobin(t *testing.T) {
	p := newUIDPool(UIDRange{First: 100000, Count: 4})
	var got []uint32
	for range 6 {
		uid, err := p.acquire()
		if err != nil {
			t.Fatal(err)
		}
		got = append(got, uid)
		p.release(uid) // freed at once, but not reused at once
	}
	want := []uint32{100000, 100001, 100002, 100003, 100000, 100001}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("sequence %v, want %v", got, want)
		}
	}
}

func TestUIDPoolReleasePanics(t *testing.T) {
	p := newUIDPool(UIDRange{First: 100000, Count: 4})
	for _, tt := range []struct {
		name string
		uid  uint32
	}{{"outside", 5}, {"never acquired", 100002}} {
		t.Run(tt.name, func(t *testing.T) {
			defer func() {
				if recover() == nil {
					t.Errorf("release(%d) did not panic", tt.uid)
				}
			}()
			p.release(tt.uid)
		})
	}
}

func TestUIDRangeValidate(t *testing.T) {
	tests := []struct {
		name string
		r    UIDRange
		ok   bool
	}{
		{"default", DefaultUIDRange, true},
		{"empty", UIDRange{First: 100000}, false},
		{"root", UIDRange{First: 0, Count: 10}, false},
		{"nobody", UIDRange{First: 60000, Count: 10000}, false},
		{"past 2^31-1", UIDRange{First: 2147483000, Count: 1000}, false},
		{"up to 2^31-1", UIDRange{First: 2147483000, Count: 648}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.r.Validate()
			if (err == nil) != tt.ok {
				t.Errorf("%s.Validate() = %v, want ok=%v", tt.r, err, tt.ok)
			}
		})
	}
}

// TestReserveUIDFor: a key is given the uid it hashes to, the same from
// one Runner (one start of the daemon) to the next, whatever the
// round-robin has handed out; where that uid is held, the next free one;
// and the round-robin goes on where it was.
func TestReserveUIDFor(t *testing.T) {
	rg := UIDRange{First: 5000, Count: 128}
	fresh := func() *Runner { return &Runner{uids: newUIDPool(rg)} }
	a, b := fresh(), fresh()
	if _, err := b.uids.acquire(); err != nil { // a cell in flight first
		t.Fatal(err)
	}
	ua, err := a.ReserveUIDFor("root route x")
	if err != nil {
		t.Fatal(err)
	}
	ub, err := b.ReserveUIDFor("root route x")
	if err != nil {
		t.Fatal(err)
	}
	if ua != ub || ua == rg.First {
		t.Errorf("the same key: uid %d in one Runner, %d in another (the first handed out: %d); want the one it hashes to in both", ua, ub, rg.First)
	}
	// Held: the next free one, wrapping at the range's end.
	again, err := a.ReserveUIDFor("root route x")
	if err != nil || again == ua || (again != ua+1 && !(ua == rg.First+rg.Count-1 && again == rg.First)) {
		t.Errorf("the key's uid %d held: got %d (%v), want the next free one", ua, again, err)
	}
	// The round-robin is where it was: the first uid of the range.
	if u, err := a.uids.acquire(); err != nil || u != rg.First {
		t.Errorf("a cell after the reservations: uid %d (%v), want %d", u, err, rg.First)
	}
	if _, err := (&Runner{}).ReserveUIDFor("k"); err == nil {
		t.Error("a Runner without a uid range reserved a uid")
	}
}
