package policy

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"runtime"
	"sync"
	"testing"
	"time"
)

// fakeClock runs timers when the test advances it.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	nextID int
	timers map[int]fakeTimer
}

type fakeTimer struct {
	at time.Time
	f  func()
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), timers: map[int]fakeTimer{}}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) AfterFunc(d time.Duration, f func()) func() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	id := c.nextID
	c.nextID++
	c.timers[id] = fakeTimer{at: c.now.Add(d), f: f}
	return func() bool {
		c.mu.Lock()
		defer c.mu.Unlock()
		_, ok := c.timers[id]
		delete(c.timers, id)
		return ok
	}
}

// Advance moves the clock and runs the timers that came due.
func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	var due []func()
	for id, t := range c.timers {
		if !t.at.After(c.now) {
			due = append(due, t.f)
			delete(c.timers, id)
		}
	}
	c.mu.Unlock()
	for _, f := range due {
		f()
	}
}

func (c *fakeClock) pending() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.timers)
}

// waitUntil yields until cond holds. It synchronizes with goroutines the
// test started; it asserts nothing about time (a hang is caught by go
// test's timeout).
func waitUntil(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for i := 0; !cond(); i++ {
		if i == 1000 {
			t.Logf("still waiting for %s", what)
		}
		if i > 1000 {
			time.Sleep(time.Millisecond)
		} else {
			runtime.Gosched()
		}
	}
}

type result struct {
	release func()
	waited  time.Duration
	err     error
}

// pending is an Admit running in its own goroutine.
type pending struct {
	done chan result
}

func admitAsync(ctx context.Context, a *Admission, tenant string, memory int64) *pending {
	p := &pending{done: make(chan result, 1)}
	go func() {
		release, waited, err := a.Admit(ctx, tenant, memory)
		p.done <- result{release, waited, err}
	}()
	return p
}

func (p *pending) result(t testing.TB) result {
	t.Helper()
	return <-p.done
}

func (p *pending) finished() bool {
	select {
	case r := <-p.done:
		p.done <- r
		return true
	default:
		return false
	}
}

func tenantStats(a *Admission, name string) TenantStats {
	for _, ts := range a.Stats().Tenants {
		if ts.Name == name {
			return ts
		}
	}
	return TenantStats{}
}

// queued waits until tenant has n waiters with their timers armed.
func queued(t testing.TB, a *Admission, c *fakeClock, tenant string, n, timers int) {
	t.Helper()
	waitUntil(t, fmt.Sprintf("%d queued in %s", n, tenant), func() bool {
		return tenantStats(a, tenant).Queued == n && c.pending() == timers
	})
}

func mustAdmit(t testing.TB, a *Admission, tenant string, memory int64) func() {
	t.Helper()
	release, waited, err := a.Admit(context.Background(), tenant, memory)
	if err != nil || waited != 0 {
		t.Fatalf("Admit(%s, %d) = %v, waited %v; want immediate admission", tenant, memory, err, waited)
	}
	return release
}

func onePolicy(tn Tenant, g Global) *Policy {
	return &Policy{Global: g, Tenants: []*Tenant{&tn}}
}

func TestAdmitImmediate(t *testing.T) {
	const mi = 1 << 20
	tests := []struct {
		name    string
		tenant  Tenant
		global  Global
		held    []int64 // admitted first, in tenant "t"
		admitTo string
		memory  int64
		want    error // nil: admitted at once
	}{
		{"empty", Tenant{Name: "t"}, Global{}, nil, "t", 64 * mi, nil},
		{"tenant memory room", Tenant{Name: "t", Memory: 128 * mi}, Global{}, []int64{64 * mi}, "t", 64 * mi, nil},
		{"tenant memory full", Tenant{Name: "t", Memory: 128 * mi}, Global{}, []int64{64 * mi}, "t", 65 * mi, ErrQueueFull},
		{"tenant cells full", Tenant{Name: "t", MaxCells: 2}, Global{}, []int64{1, 1}, "t", 1, ErrQueueFull},
		{"global memory full", Tenant{Name: "t"}, Global{Memory: 100 * mi}, []int64{60 * mi}, "t", 41 * mi, ErrQueueFull},
		{"global memory exact", Tenant{Name: "t"}, Global{Memory: 100 * mi}, []int64{60 * mi}, "t", 40 * mi, nil},
		{"global cells full", Tenant{Name: "t"}, Global{MaxCells: 1}, []int64{1}, "t", 1, ErrQueueFull},
		{"zero memory", Tenant{Name: "t", Memory: mi}, Global{}, []int64{mi}, "t", 0, nil},
		{"too large for tenant", Tenant{Name: "t", Memory: 64 * mi}, Global{}, nil, "t", 65 * mi, ErrTooLarge},
		{"too large for global", Tenant{Name: "t"}, Global{Memory: 64 * mi}, nil, "t", 65 * mi, ErrTooLarge},
		{"unknown tenant", Tenant{Name: "t"}, Global{}, nil, "u", 1, ErrUnknownTenant},
		{"empty name is default", Tenant{Name: DefaultTenant}, Global{}, nil, "", 1, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a := NewAdmission(onePolicy(tt.tenant, tt.global), newFakeClock())
			for _, m := range tt.held {
				mustAdmit(t, a, tt.tenant.Name, m)
			}
			release, _, err := a.Admit(context.Background(), tt.admitTo, tt.memory)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Admit = %v, want %v", err, tt.want)
			}
			if (release != nil) != (tt.want == nil) {
				t.Fatalf("release = %v with err %v", release != nil, err)
			}
			if release != nil {
				before := a.Stats()
				release()
				release() // a second call does nothing
				after := a.Stats()
				if after.InFlight != before.InFlight-1 || after.Reserved != before.Reserved-tt.memory {
					t.Errorf("release: %+v -> %+v", before, after)
				}
			}
		})
	}
}

func TestAdmitNegativeMemory(t *testing.T) {
	a := NewAdmission(onePolicy(Tenant{Name: "t"}, Global{}), newFakeClock())
	if _, _, err := a.Admit(context.Background(), "t", -1); err == nil {
		t.Fatal("Admit(-1) = nil error")
	}
}

// A small request must not overtake a big one at the head of its tenant's
// queue.
func TestAdmitStrictFIFO(t *testing.T) {
	c := newFakeClock()
	a := NewAdmission(onePolicy(Tenant{Name: "t", Memory: 100, Queue: 8, QueueTimeout: time.Minute}, Global{}), c)
	releaseA := mustAdmit(t, a, "t", 60)
	big := admitAsync(context.Background(), a, "t", 60)
	queued(t, a, c, "t", 1, 1)
	small := admitAsync(context.Background(), a, "t", 10) // would fit now, but queues behind big
	queued(t, a, c, "t", 2, 2)
	if s := tenantStats(a, "t"); s.InFlight != 1 || s.Reserved != 60 {
		t.Fatalf("small overtook big: %+v", s)
	}
	third := admitAsync(context.Background(), a, "t", 50)
	queued(t, a, c, "t", 3, 3)

	releaseA() // big (60) and small (10) fit; third (50) does not
	rb, rs := big.result(t), small.result(t)
	if rb.err != nil || rs.err != nil {
		t.Fatalf("big %v, small %v", rb.err, rs.err)
	}
	if s := tenantStats(a, "t"); s.InFlight != 2 || s.Reserved != 70 || s.Queued != 1 {
		t.Fatalf("after release: %+v, want big and small in flight, third queued", s)
	}
	rb.release()
	r3 := third.result(t)
	if r3.err != nil {
		t.Fatal(r3.err)
	}
	rs.release()
	r3.release()
	if s := a.Stats(); s.InFlight != 0 || s.Reserved != 0 || s.Queued != 0 {
		t.Fatalf("end: %+v", s)
	}
}

func TestAdmitQueueFull(t *testing.T) {
	c := newFakeClock()
	a := NewAdmission(onePolicy(Tenant{Name: "t", MaxCells: 1, Queue: 1, QueueTimeout: time.Second}, Global{}), c)
	release := mustAdmit(t, a, "t", 1)
	w := admitAsync(context.Background(), a, "t", 1)
	queued(t, a, c, "t", 1, 1)
	if _, _, err := a.Admit(context.Background(), "t", 1); !errors.Is(err, ErrQueueFull) {
		t.Fatalf("third Admit = %v, want ErrQueueFull", err)
	}
	release()
	r := w.result(t)
	if r.err != nil {
		t.Fatal(r.err)
	}
	r.release()
}

func TestAdmitQueueTimeout(t *testing.T) {
	c := newFakeClock()
	a := NewAdmission(onePolicy(Tenant{Name: "t", MaxCells: 1, Queue: 4, QueueTimeout: 2 * time.Second}, Global{}), c)
	release := mustAdmit(t, a, "t", 1)
	w := admitAsync(context.Background(), a, "t", 1)
	queued(t, a, c, "t", 1, 1)
	c.Advance(time.Second)
	if w.finished() {
		t.Fatal("timed out before queue_timeout")
	}
	c.Advance(time.Second)
	r := w.result(t)
	if !errors.Is(r.err, ErrQueueTimeout) || r.release != nil {
		t.Fatalf("Admit = %v, want ErrQueueTimeout", r.err)
	}
	if r.waited != 2*time.Second {
		t.Errorf("waited = %v, want the fake clock's 2s", r.waited)
	}
	if s := tenantStats(a, "t"); s.Queued != 0 || s.InFlight != 1 {
		t.Fatalf("after timeout: %+v", s)
	}
	release()
	if s := a.Stats(); s.InFlight != 0 {
		t.Fatalf("end: %+v", s)
	}
}

// When the head leaves (timeout or cancel), the next one is considered at
// once.
func TestAdmitHeadLeavesNextAdmitted(t *testing.T) {
	c := newFakeClock()
	a := NewAdmission(onePolicy(Tenant{Name: "t", Memory: 100, Queue: 4, QueueTimeout: time.Minute}, Global{}), c)
	release := mustAdmit(t, a, "t", 60)
	ctx, cancel := context.WithCancel(context.Background())
	big := admitAsync(ctx, a, "t", 80)
	queued(t, a, c, "t", 1, 1)
	small := admitAsync(context.Background(), a, "t", 30)
	queued(t, a, c, "t", 2, 2)
	cancel()
	rb := big.result(t)
	if !errors.Is(rb.err, context.Canceled) {
		t.Fatalf("big = %v, want context.Canceled", rb.err)
	}
	rs := small.result(t)
	if rs.err != nil {
		t.Fatalf("small = %v, want admitted once big left", rs.err)
	}
	rs.release()
	release()
	if s := a.Stats(); s.InFlight != 0 || s.Reserved != 0 || s.Queued != 0 {
		t.Fatalf("end: %+v", s)
	}
}

// Tenants share the global budget round-robin.
func TestAdmitRoundRobin(t *testing.T) {
	c := newFakeClock()
	p := &Policy{Global: Global{MaxCells: 1}, Tenants: []*Tenant{
		{Name: "a", Queue: 8, QueueTimeout: time.Minute},
		{Name: "b", Queue: 8, QueueTimeout: time.Minute},
	}}
	a := NewAdmission(p, c)
	release := mustAdmit(t, a, "a", 1)
	var as, bs []*pending
	for i := range 2 {
		as = append(as, admitAsync(context.Background(), a, "a", 1))
		queued(t, a, c, "a", i+1, 2*i+1)
		bs = append(bs, admitAsync(context.Background(), a, "b", 1))
		queued(t, a, c, "b", i+1, 2*i+2)
	}
	// a was served last, so b goes next, then a, b, a.
	want := []*pending{bs[0], as[0], bs[1], as[1]}
	for i, w := range want {
		release()
		r := w.result(t)
		if r.err != nil {
			t.Fatalf("step %d: %v", i, r.err)
		}
		for _, other := range want[i+1:] {
			if other.finished() {
				t.Fatalf("step %d: a later waiter was admitted too (global max_cells 1)", i)
			}
		}
		release = r.release
	}
	release()
}

func TestAdmitContextCancelled(t *testing.T) {
	c := newFakeClock()
	a := NewAdmission(onePolicy(Tenant{Name: "t", MaxCells: 1, Queue: 1, QueueTimeout: time.Minute}, Global{}), c)
	release := mustAdmit(t, a, "t", 1)
	ctx, cancel := context.WithCancel(context.Background())
	w := admitAsync(ctx, a, "t", 1)
	queued(t, a, c, "t", 1, 1)
	cancel()
	if r := w.result(t); !errors.Is(r.err, context.Canceled) || r.release != nil {
		t.Fatalf("Admit = %v, want context.Canceled", r.err)
	}
	if c.pending() != 0 {
		t.Error("the queue timer was not stopped")
	}
	release()
	if s := a.Stats(); s.InFlight != 0 || s.Queued != 0 {
		t.Fatalf("end: %+v", s)
	}
}

func TestUpdate(t *testing.T) {
	const queue, timeout = 4, time.Minute
	tenant := func(name string, memory int64) *Tenant {
		return &Tenant{Name: name, Memory: memory, Queue: queue, QueueTimeout: timeout}
	}

	t.Run("shrink keeps reservations", func(t *testing.T) {
		c := newFakeClock()
		a := NewAdmission(&Policy{Tenants: []*Tenant{tenant("t", 100)}}, c)
		release := mustAdmit(t, a, "t", 60)
		a.Update(&Policy{Tenants: []*Tenant{tenant("t", 50)}})
		w := admitAsync(context.Background(), a, "t", 10) // 60+10 > 50: waits
		queued(t, a, c, "t", 1, 1)
		release()
		r := w.result(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.release()
		if s := tenantStats(a, "t"); s.InFlight != 0 || s.Reserved != 0 {
			t.Fatalf("end: %+v", s)
		}
	})

	t.Run("grow wakes waiters", func(t *testing.T) {
		c := newFakeClock()
		a := NewAdmission(&Policy{Tenants: []*Tenant{tenant("t", 100)}}, c)
		release := mustAdmit(t, a, "t", 60)
		w := admitAsync(context.Background(), a, "t", 60)
		queued(t, a, c, "t", 1, 1)
		a.Update(&Policy{Tenants: []*Tenant{tenant("t", 200)}})
		r := w.result(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.release()
		release()
	})

	t.Run("waiter that can never fit fails", func(t *testing.T) {
		c := newFakeClock()
		a := NewAdmission(&Policy{Tenants: []*Tenant{tenant("t", 100)}}, c)
		release := mustAdmit(t, a, "t", 60)
		w := admitAsync(context.Background(), a, "t", 80)
		queued(t, a, c, "t", 1, 1)
		a.Update(&Policy{Tenants: []*Tenant{tenant("t", 70)}})
		if r := w.result(t); !errors.Is(r.err, ErrTooLarge) {
			t.Fatalf("Admit = %v, want ErrTooLarge", r.err)
		}
		release()
	})

	t.Run("removed tenant drains", func(t *testing.T) {
		c := newFakeClock()
		a := NewAdmission(&Policy{Tenants: []*Tenant{tenant("gone", 100), tenant("kept", 100)}}, c)
		release := mustAdmit(t, a, "gone", 60)
		w := admitAsync(context.Background(), a, "gone", 60)
		queued(t, a, c, "gone", 1, 1)
		a.Update(&Policy{Tenants: []*Tenant{tenant("kept", 100)}})
		if _, _, err := a.Admit(context.Background(), "gone", 1); !errors.Is(err, ErrUnknownTenant) {
			t.Fatalf("Admit to removed tenant = %v, want ErrUnknownTenant", err)
		}
		if s := tenantStats(a, "gone"); !s.Draining || s.InFlight != 1 || s.Queued != 1 {
			t.Fatalf("draining tenant: %+v", s)
		}
		release() // the queued request is still served under the last budget
		r := w.result(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.release()
		if s := tenantStats(a, "gone"); s.Name != "" {
			t.Fatalf("drained tenant still in Stats: %+v", s)
		}
		mustAdmit(t, a, "kept", 100)()
	})

	t.Run("re-added while draining keeps accounting", func(t *testing.T) {
		noQueue := &Tenant{Name: "t", Memory: 100}
		a := NewAdmission(&Policy{Tenants: []*Tenant{noQueue}}, newFakeClock())
		release := mustAdmit(t, a, "t", 60)
		a.Update(&Policy{})
		a.Update(&Policy{Tenants: []*Tenant{noQueue}})
		if s := tenantStats(a, "t"); s.Draining || s.Reserved != 60 {
			t.Fatalf("re-added: %+v", s)
		}
		if _, _, err := a.Admit(context.Background(), "t", 50); !errors.Is(err, ErrQueueFull) {
			t.Fatalf("Admit(50) = %v, want ErrQueueFull: the 60 in flight still count", err)
		}
		release2 := mustAdmit(t, a, "t", 40)
		release()
		release2()
		if s := a.Stats(); s.Reserved != 0 || s.InFlight != 0 {
			t.Fatalf("end: %+v", s)
		}
	})

	t.Run("global budget swapped", func(t *testing.T) {
		c := newFakeClock()
		a := NewAdmission(&Policy{Global: Global{MaxCells: 1}, Tenants: []*Tenant{tenant("t", 0)}}, c)
		release := mustAdmit(t, a, "t", 1)
		w := admitAsync(context.Background(), a, "t", 1)
		queued(t, a, c, "t", 1, 1)
		a.Update(&Policy{Global: Global{MaxCells: 2}, Tenants: []*Tenant{tenant("t", 0)}})
		r := w.result(t)
		if r.err != nil {
			t.Fatal(r.err)
		}
		r.release()
		release()
		if s := a.Stats(); s.InFlight != 0 {
			t.Fatalf("end: %+v", s)
		}
	})
}

// Many goroutines admit and release under reloads; the budgets must hold
// at every snapshot and everything must return to zero.
func TestAdmitConcurrent(t *testing.T) {
	policies := []*Policy{
		{Global: Global{Memory: 300, MaxCells: 6}, Tenants: []*Tenant{
			{Name: "a", Memory: 200, MaxCells: 4, Queue: 16, QueueTimeout: time.Hour},
			{Name: "b", Memory: 100, MaxCells: 3, Queue: 16, QueueTimeout: time.Hour},
		}},
		{Global: Global{Memory: 250, MaxCells: 5}, Tenants: []*Tenant{
			{Name: "a", Memory: 150, MaxCells: 2, Queue: 4, QueueTimeout: time.Hour},
			{Name: "b", Memory: 100, MaxCells: 4, Queue: 16, QueueTimeout: time.Hour},
		}},
	}
	a := NewAdmission(policies[0], nil)
	var wg sync.WaitGroup
	stop := make(chan struct{})
	var reloads sync.WaitGroup
	reloads.Add(1)
	go func() {
		defer reloads.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				a.Update(policies[0])
				return
			default:
			}
			a.Update(policies[i%2])
			s := a.Stats()
			if s.InFlight < 0 || s.Reserved < 0 || s.Queued < 0 {
				t.Errorf("negative counts: %+v", s)
			}
			runtime.Gosched()
		}
	}()
	for g := range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			rng := rand.New(rand.NewPCG(uint64(g), 1))
			for range 200 {
				tenant := []string{"a", "b"}[rng.IntN(2)]
				ctx, cancel := context.WithCancel(context.Background())
				if rng.IntN(10) == 0 {
					cancel()
				}
				release, _, err := a.Admit(ctx, tenant, int64(10+rng.IntN(40)))
				cancel()
				switch {
				case err == nil:
					s := a.Stats()
					if s.Reserved > 300 || s.InFlight > 6 {
						t.Errorf("over the largest global budget: %+v", s)
					}
					runtime.Gosched()
					release()
				case errors.Is(err, ErrQueueFull), errors.Is(err, context.Canceled):
				default:
					t.Errorf("Admit: %v", err)
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	reloads.Wait()
	if s := a.Stats(); s.InFlight != 0 || s.Reserved != 0 || s.Queued != 0 {
		t.Fatalf("end: %+v", s)
	}
}

// The real clock's timer ends a wait too.
func TestAdmitRealClockTimeout(t *testing.T) {
	a := NewAdmission(onePolicy(Tenant{Name: "t", MaxCells: 1, Queue: 1, QueueTimeout: time.Millisecond}, Global{}), nil)
	release := mustAdmit(t, a, "t", 1)
	defer release()
	if _, _, err := a.Admit(context.Background(), "t", 1); !errors.Is(err, ErrQueueTimeout) {
		t.Fatalf("Admit = %v, want ErrQueueTimeout", err)
	}
}

// TestAdmissionUpdateFailsTooLargeInQueue: a waiter behind its queue's
// head that a reload's smaller budget can never admit fails at the
// reload (ErrTooLarge), and the one before it keeps its place. Before,
// only a queue's head was checked: it waited its whole queue_timeout and
// failed as a queue timeout, holding a queue slot meanwhile.
func TestAdmissionUpdateFailsTooLargeInQueue(t *testing.T) {
	c := newFakeClock()
	tenant := Tenant{Name: "a", Memory: 100, MaxCells: 1, Queue: 4, QueueTimeout: time.Minute}
	a := NewAdmission(onePolicy(tenant, Global{}), c)
	release := mustAdmit(t, a, "a", 10)
	small := admitAsync(context.Background(), a, "a", 10)
	queued(t, a, c, "a", 1, 1)
	large := admitAsync(context.Background(), a, "a", 80)
	queued(t, a, c, "a", 2, 2)
	tenant.Memory = 50
	a.Update(onePolicy(tenant, Global{}))
	select {
	case r := <-large.done:
		if !errors.Is(r.err, ErrTooLarge) {
			t.Fatalf("the 80-byte waiter under a budget of 50: %v, want ErrTooLarge at the reload", r.err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the 80-byte waiter, which a budget of 50 can never admit, still queued 10 s after the reload")
	}
	if st := tenantStats(a, "a"); st.Queued != 1 {
		t.Errorf("%d queued after the reload, want the small waiter alone", st.Queued)
	}
	release()
	r := small.result(t)
	if r.err != nil {
		t.Fatalf("the small waiter: %v, want admitted", r.err)
	}
	r.release()
}

// TestAdmissionHold: budgets a change may yet give up (Hold) admit no
// more than they allow, but fail no request for being larger than they
// allow, waiting or new: those wait for the next Update, which admits
// them (the change given up, its budgets back) or fails them.
func TestAdmissionHold(t *testing.T) {
	c := newFakeClock()
	budget := func(m int64) *Policy {
		return onePolicy(Tenant{Name: "t", Memory: m, Queue: 8, QueueTimeout: time.Minute}, Global{})
	}
	a := NewAdmission(budget(100), c)
	release := mustAdmit(t, a, "t", 30)
	waiting := admitAsync(context.Background(), a, "t", 80) // 30 + 80 > 100
	queued(t, a, c, "t", 1, 1)
	a.Hold(budget(60))
	fresh := admitAsync(context.Background(), a, "t", 70)
	queued(t, a, c, "t", 2, 2)
	a.Update(budget(100)) // the change given up
	release()
	if r := waiting.result(t); r.err != nil {
		t.Errorf("a request waiting across Hold: %v, want it admitted", r.err)
	} else {
		r.release()
	}
	if r := fresh.result(t); r.err != nil {
		t.Errorf("a request larger than Hold's budget, come during it: %v, want it admitted", r.err)
	} else {
		r.release()
	}

	a.Hold(budget(60))
	late := admitAsync(context.Background(), a, "t", 70)
	queued(t, a, c, "t", 1, 1)
	a.Update(budget(60)) // the change made
	if r := late.result(t); !errors.Is(r.err, ErrTooLarge) {
		t.Errorf("a request larger than the budget the change made: %v, want ErrTooLarge", r.err)
	}
}
