package policy

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"sync"
	"time"
)

// Sentinels for what Admit's callers branch on.
var (
	// ErrQueueFull: the tenant's queue is full, or it has none (503 with
	// Retry-After).
	ErrQueueFull = errors.New("admission queue full")
	// ErrQueueTimeout: the request waited its tenant's queue_timeout
	// without room becoming free (503 with Retry-After).
	ErrQueueTimeout = errors.New("admission queue timeout")
	// ErrUnknownTenant: no such tenant in the current policy (it may be
	// draining after a reload).
	ErrUnknownTenant = errors.New("unknown tenant")
	// ErrTooLarge: the request's memory exceeds its tenant's or the global
	// budget, so it could never be admitted. Parse rejects such routes; it
	// happens after a reload shrinks a budget, or with limits from flags.
	ErrTooLarge = errors.New("request memory exceeds the budget")
)

// Clock is the time source of Admission; tests inject a fake.
type Clock interface {
	Now() time.Time
	// AfterFunc calls f in its own goroutine after d; stop cancels it.
	AfterFunc(d time.Duration, f func()) (stop func() bool)
}

type systemClock struct{}

func (systemClock) Now() time.Time { return time.Now() }

func (systemClock) AfterFunc(d time.Duration, f func()) func() bool {
	return time.AfterFunc(d, f).Stop
}

// Admission decides when a request may start its cell: when its tenant
// and the global budget both have room for its memory reservation (its
// memory limit) and for one more cell in flight. Otherwise the request
// waits in its tenant's queue.
//
// Queueing is strict FIFO per tenant: only the head of a tenant's queue is
// ever admitted, and a request that arrives while its tenant has waiters
// queues behind them even if it would fit. So a small request does not
// overtake a big one at the head (head-of-line blocking, on purpose: the
// big request is never starved, and the queue timeout bounds what the
// others wait; when the head times out or is cancelled, the next one is
// considered at once).
//
// Between tenants there is no global order: when room frees up, the heads
// of the tenants' queues are served round-robin, one per tenant per round,
// starting after the tenant served last (fast-path admissions count too).
// A head blocked only by the global budget can therefore be passed by
// other tenants' smaller requests; its queue timeout bounds that wait.
// This keeps one tenant's big request from blocking every other tenant,
// which a global FIFO would do.
//
// Update swaps in a reloaded policy's budgets atomically. Counters live
// with the tenant (by name) across reloads, so cells in flight keep their
// reservations and release them against the same accounting. A shrunken
// budget admits nothing until enough has been released; a grown one wakes
// waiters at once. Waiters that can no longer ever fit fail with
// ErrTooLarge. A removed tenant admits no new requests (ErrUnknownTenant)
// but drains: its queued requests are still served under its last budgets
// and its cells release normally; it disappears from Stats when empty.
// Queue length and queue timeout changes apply to requests that arrive
// after the reload.
//
// An Admission is safe for concurrent use.
type Admission struct {
	clock Clock

	mu        sync.Mutex
	global    Global
	inFlight  int   // all tenants, guarded by mu
	reserved  int64 // all tenants, guarded by mu
	tenants   map[string]*tenantState
	order     []*tenantState // round-robin order: policy order, drained tenants kept until empty
	nextIndex int            // where the next round-robin round starts
	// holding: the budgets are Hold's, and no request is refused as too
	// large for them (tooLarge); the next Update's decide.
	holding bool
}

// tenantState is one tenant's budget and accounting; guarded by
// Admission.mu.
type tenantState struct {
	budget   Tenant
	removed  bool
	inFlight int
	reserved int64
	queue    []*waiter
}

type waiterState int

const (
	waiting waiterState = iota
	admitted
	failed
)

type waiter struct {
	memory int64
	ready  chan struct{} // closed when state leaves waiting
	state  waiterState   // guarded by Admission.mu
	err    error         // when failed
}

// NewAdmission returns an Admission with p's tenant and global budgets.
// clock nil means the real clock.
func NewAdmission(p *Policy, clock Clock) *Admission {
	if clock == nil {
		clock = systemClock{}
	}
	a := &Admission{clock: clock, tenants: map[string]*tenantState{}}
	a.Update(p)
	return a
}

// Admit waits until the request may run: memory is its reservation in
// bytes (its memory limit), tenant its tenant ("" is DefaultTenant). On
// success the caller must call release exactly once when the cell has ended
// (later calls do nothing); waited is the time spent in the queue.
//
// Errors (wrapped, with the tenant): ErrUnknownTenant, ErrTooLarge,
// ErrQueueFull, ErrQueueTimeout, or ctx's error when ctx ends first (then
// no reservation is held, even if room came free at the same moment).
func (a *Admission) Admit(ctx context.Context, tenant string, memory int64) (release func(), waited time.Duration, err error) {
	if tenant == "" {
		tenant = DefaultTenant
	}
	if memory < 0 {
		return nil, 0, fmt.Errorf("admit to tenant %s: negative memory %d", tenant, memory)
	}
	start := a.clock.Now()
	a.mu.Lock()
	t := a.tenants[tenant]
	if t == nil || t.removed {
		a.mu.Unlock()
		return nil, 0, fmt.Errorf("admit to tenant %s: %w (reload the policy or fix the route)", tenant, ErrUnknownTenant)
	}
	if err := a.tooLarge(t, memory); err != nil {
		a.mu.Unlock()
		return nil, 0, err
	}
	if len(t.queue) == 0 && a.fits(t, memory) {
		a.charge(t, memory)
		a.mu.Unlock()
		return a.releaser(t, memory), 0, nil
	}
	if len(t.queue) >= t.budget.Queue {
		err := fmt.Errorf("admit to tenant %s: %w (%d waiting, %d in flight)", tenant, ErrQueueFull, len(t.queue), t.inFlight)
		a.mu.Unlock()
		return nil, 0, err
	}
	w := &waiter{memory: memory, ready: make(chan struct{})}
	t.queue = append(t.queue, w)
	timeout := t.budget.QueueTimeout
	a.mu.Unlock()

	expired := make(chan struct{})
	stop := a.clock.AfterFunc(timeout, func() { close(expired) })
	defer stop()
	var cause error
	select {
	case <-w.ready:
	case <-expired:
		cause = fmt.Errorf("admit to tenant %s: %w after %s", tenant, ErrQueueTimeout, timeout)
	case <-ctx.Done():
	}

	a.mu.Lock()
	defer a.mu.Unlock()
	waited = a.clock.Now().Sub(start)
	switch w.state {
	case failed:
		return nil, waited, w.err
	case admitted:
		if ctx.Err() == nil {
			return a.releaser(t, memory), waited, nil
		}
		a.uncharge(t, memory)
		a.dispatch()
		a.forget(t)
		return nil, waited, fmt.Errorf("admit to tenant %s: %w", tenant, ctx.Err())
	}
	// Still waiting: leave the queue, and let whoever is behind try.
	t.queue = slices.DeleteFunc(t.queue, func(x *waiter) bool { return x == w })
	a.dispatch()
	a.forget(t)
	if cause == nil {
		cause = fmt.Errorf("admit to tenant %s: %w", tenant, ctx.Err())
	}
	return nil, waited, cause
}

// Update swaps in p's budgets; see Admission for what happens to requests
// in flight and waiting.
func (a *Admission) Update(p *Policy) { a.update(p, true) }

// Hold swaps in p's budgets as Update does, but fails no request waiting
// in a queue that they could never admit: for the moment a change of
// budgets may yet be refused (one waiting for more than the budget held
// waits on, and is admitted, or failed, by the Update that follows).
func (a *Admission) Hold(p *Policy) { a.update(p, false) }

func (a *Admission) update(p *Policy, final bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.holding = !final
	a.global = p.Global
	keep := map[string]bool{}
	for _, pt := range p.Tenants {
		keep[pt.Name] = true
		t := a.tenants[pt.Name]
		if t == nil {
			t = &tenantState{}
			a.tenants[pt.Name] = t
			a.order = append(a.order, t)
		}
		t.budget, t.removed = *pt, false
	}
	for name, t := range a.tenants {
		if !keep[name] {
			t.removed = true
		}
	}
	// A waiter the new budgets can never admit fails now, wherever it is
	// in its queue (dispatch fails only a queue's head so), and the rest
	// keep their order.
	for _, t := range a.order {
		t.queue = slices.DeleteFunc(t.queue, func(w *waiter) bool {
			err := a.tooLarge(t, w.memory)
			if err != nil {
				w.state, w.err = failed, err
				close(w.ready)
			}
			return err != nil
		})
	}
	a.dispatch()
	for _, t := range slices.Clone(a.order) {
		a.forget(t)
	}
}

// fits reports whether one more cell of memory bytes fits t and the global
// budget now. A reservation is at most MaxSize, and so is what is reserved
// under a budget (at most a budget, or an earlier one): the sums cannot
// overflow.
func (a *Admission) fits(t *tenantState, memory int64) bool {
	b, g := t.budget, a.global
	return (b.MaxCells == 0 || t.inFlight < b.MaxCells) &&
		(b.Memory == 0 || t.reserved+memory <= b.Memory) &&
		(g.MaxCells == 0 || a.inFlight < g.MaxCells) &&
		(g.Memory == 0 || a.reserved+memory <= g.Memory)
}

// tooLarge returns ErrTooLarge when memory could never fit.
func (a *Admission) tooLarge(t *tenantState, memory int64) error {
	if a.holding {
		return nil // Hold's budgets: it waits for the next Update's
	}
	if t.budget.Memory > 0 && memory > t.budget.Memory {
		return fmt.Errorf("admit to tenant %s: %w: %s above the tenant's %s", t.budget.Name, ErrTooLarge, FormatBytes(memory), FormatBytes(t.budget.Memory))
	}
	if a.global.Memory > 0 && memory > a.global.Memory {
		return fmt.Errorf("admit to tenant %s: %w: %s above the global %s", t.budget.Name, ErrTooLarge, FormatBytes(memory), FormatBytes(a.global.Memory))
	}
	return nil
}

func (a *Admission) charge(t *tenantState, memory int64) {
	t.inFlight++
	t.reserved += memory
	a.inFlight++
	a.reserved += memory
	if i := slices.Index(a.order, t); i >= 0 {
		a.nextIndex = i + 1
	}
}

func (a *Admission) uncharge(t *tenantState, memory int64) {
	t.inFlight--
	t.reserved -= memory
	a.inFlight--
	a.reserved -= memory
}

// releaser returns the release function of one admitted request; it
// releases against t, the state the request was charged to, whatever
// reloads happened since.
func (a *Admission) releaser(t *tenantState, memory int64) func() {
	var once sync.Once
	return func() {
		once.Do(func() {
			a.mu.Lock()
			defer a.mu.Unlock()
			a.uncharge(t, memory)
			a.dispatch()
			a.forget(t)
		})
	}
}

// dispatch admits queued heads while any fits, round-robin over tenants,
// and fails heads that can never fit. Called with mu held after anything
// that may make room.
func (a *Admission) dispatch() {
	for progress := true; progress; {
		progress = false
		n := len(a.order)
		start := a.nextIndex
		for i := range n {
			t := a.order[(start+i)%n]
			if len(t.queue) == 0 {
				continue
			}
			w := t.queue[0]
			if err := a.tooLarge(t, w.memory); err != nil {
				a.pop(t)
				w.state, w.err = failed, err
				close(w.ready)
				progress = true
				continue
			}
			if a.fits(t, w.memory) {
				a.pop(t)
				a.charge(t, w.memory)
				w.state = admitted
				close(w.ready)
				progress = true
			}
		}
	}
}

func (a *Admission) pop(t *tenantState) {
	t.queue[0] = nil
	t.queue = t.queue[1:]
}

// forget drops a removed tenant once it has drained.
func (a *Admission) forget(t *tenantState) {
	if !t.removed || t.inFlight > 0 || len(t.queue) > 0 || a.tenants[t.budget.Name] != t {
		return
	}
	delete(a.tenants, t.budget.Name)
	if i := slices.Index(a.order, t); i >= 0 {
		a.order = slices.Delete(a.order, i, i+1)
		if a.nextIndex > i {
			a.nextIndex--
		}
	}
}

// Stats is a snapshot of admission, for metrics.
type Stats struct {
	InFlight int    // cells admitted and not released, all tenants
	Reserved int64  // their memory reservations, bytes
	Queued   int    // requests waiting, all tenants
	Global   Global // the global budget admission holds requests to
	Tenants  []TenantStats
}

// TenantStats is one tenant's part of Stats.
type TenantStats struct {
	Name     string
	InFlight int
	Reserved int64
	Queued   int
	// Draining is true for a tenant removed by a reload that still has
	// cells in flight or requests waiting.
	Draining bool
	// Budget is the budget admission holds the tenant's requests to: the
	// newest policy's, or, for a tenant a reload dropped while a policy
	// naming it still serves requests, its last.
	Budget Tenant
}

// Stats returns a consistent snapshot; tenants sorted by name.
func (a *Admission) Stats() Stats {
	a.mu.Lock()
	defer a.mu.Unlock()
	s := Stats{InFlight: a.inFlight, Reserved: a.reserved, Global: a.global}
	for _, t := range a.tenants {
		s.Queued += len(t.queue)
		s.Tenants = append(s.Tenants, TenantStats{
			Name: t.budget.Name, InFlight: t.inFlight, Reserved: t.reserved,
			Queued: len(t.queue), Draining: t.removed, Budget: t.budget,
		})
	}
	sort.Slice(s.Tenants, func(i, j int) bool { return s.Tenants[i].Name < s.Tenants[j].Name })
	return s
}
