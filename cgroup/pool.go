package cgroup

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// PoolOptions configure a Pool; zero values take the documented defaults.
type PoolOptions struct {
	// MaxIdle is how many ready cells are kept per profile (0 = 4), and
	// as many recycled ones besides (Recycle). Each holds up to 10 fds
	// (its directory, cgroup.events, cgroup.kill, six accounting files
	// and, once recycled, memory.current; see Cell), so the pool's idle
	// cells hold up to 2 × 10 × MaxIdle × profiles fds, and each cell in
	// use or waiting for removal (MaxRemovals) up to 10 more.
	MaxIdle int
	// MaxRemovals is how many released cells may wait for the background
	// removers (0 = 256). When the queue is full, Release removes inline
	// rather than drop a cell.
	MaxRemovals int
	// Removers is the number of background removal goroutines (0 = 2).
	Removers int
	// RemoveTimeout bounds one removal: kill, wait for empty, rmdir
	// (0 = 5s). A cell that does not empty in time is left for the next
	// start-up sweep and logged.
	RemoveTimeout time.Duration
	// MinBackoff and MaxBackoff bound the refill backoff after creation
	// failures (0 = 10ms and 1s): a failing kernel is retried, not spun
	// on.
	MinBackoff, MaxBackoff time.Duration
	// Logger receives refill and removal failures (nil = discard).
	Logger *slog.Logger
}

// Pool hands out cells pre-created per profile in the background and
// removes used cells off the hot path. A used cell is handed out again
// only when its user asks for it with Recycle: then its counters are
// read as the next request's from where they stood (Cell.Usage), and
// its peaks are not the next request's on every kernel, so only a
// caller that can do without them recycles (a resident route with
// groups: reused); Release never hands a cell out twice.
//
// A Pool is safe for concurrent use.
type Pool struct {
	tree *Tree
	o    PoolOptions
	log  *slog.Logger
	ctx  context.Context
	stop context.CancelFunc

	mu       sync.RWMutex // guards closed, profiles, retired; RLock around sends on removals
	closed   bool
	profiles map[ProfileKey]*poolProfile
	// retired are the profiles Retain dropped: a Get of one (a warm or
	// resident cell of a replaced policy's route, still setting up) makes
	// its cell without registering the profile again, which would start
	// a refill nothing takes from. Warm and Retain bring one back; it is
	// forgotten after retiredFor.
	retired  map[ProfileKey]time.Time
	removals chan *Cell
	removers sync.WaitGroup

	stats struct {
		hits, reused, misses, createErrors, removed, removeErrors, inline atomic.Uint64
	}
}

// poolProfile is one profile's idle cells and its refiller.
type poolProfile struct {
	prof *Profile
	idle chan *Cell
	// reused are cells readied for another request (Recycle), handed
	// out before the idle ones.
	reused chan *Cell
	wake   chan struct{}
	stop   context.CancelFunc
	done   chan struct{}
}

// PoolStats are counters since NewPool, for metrics.
type PoolStats struct {
	Hits           uint64 // Get served a pre-created cell
	Reused         uint64 // Get served a recycled cell (Recycle)
	Misses         uint64 // Get created a cell itself
	CreateErrors   uint64 // creations that failed (Get or refill)
	Removed        uint64 // cells removed
	RemoveErrors   uint64 // removals that failed (left for the sweep)
	InlineRemovals uint64 // Release calls that removed inline (queue full or pool closed)
}

// NewPool starts a pool of cells on t. Close it before t.
func NewPool(t *Tree, o PoolOptions) *Pool {
	if o.MaxIdle <= 0 {
		o.MaxIdle = 4
	}
	if o.MaxRemovals <= 0 {
		o.MaxRemovals = 256
	}
	if o.Removers <= 0 {
		o.Removers = 2
	}
	if o.RemoveTimeout <= 0 {
		o.RemoveTimeout = 5 * time.Second
	}
	if o.MinBackoff <= 0 {
		o.MinBackoff = 10 * time.Millisecond
	}
	if o.MaxBackoff < o.MinBackoff {
		o.MaxBackoff = max(time.Second, o.MinBackoff)
	}
	p := &Pool{tree: t, o: o, log: o.Logger, profiles: map[ProfileKey]*poolProfile{}, retired: map[ProfileKey]time.Time{}, removals: make(chan *Cell, o.MaxRemovals)}
	if p.log == nil {
		p.log = slog.New(slog.DiscardHandler)
	}
	p.ctx, p.stop = context.WithCancel(context.Background())
	for range o.Removers {
		p.removers.Add(1)
		go p.remover()
	}
	return p
}

// Warm starts pre-creating cells for prof before its first Get. It fails
// when cells of prof cannot be created on this tree (a missing
// controller).
func (p *Pool) Warm(prof *Profile) error {
	p.mu.Lock()
	delete(p.retired, prof.key) // a loaded policy's route wants it
	p.mu.Unlock()
	pp, err := p.profile(prof)
	if err != nil || pp == nil {
		return err
	}
	pp.kick()
	return nil
}

// Get returns a ready cell for prof: an idle one, or, when none is ready,
// one created now (see refill for when the idle cells are topped up). It never waits for the refiller; creation errors (a
// kernel cap: ErrTooManyCells, a missing controller) are returned. The
// caller hands the cell back with Release.
func (p *Pool) Get(ctx context.Context, prof *Profile) (*Cell, error) {
	pp, err := p.profile(prof)
	if err != nil {
		return nil, err
	}
	if pp != nil { // nil: retired, its cell made here and removed at its Release
		select {
		case c := <-pp.reused:
			p.stats.reused.Add(1)
			return c, nil
		default:
		}
		select {
		case c := <-pp.idle:
			p.stats.hits.Add(1)
			if len(pp.idle) <= cap(pp.idle)/2 {
				pp.kick()
			}
			return c, nil
		default:
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("get cell for tenant %s: %w", prof.tenant, context.Cause(ctx))
	}
	p.stats.misses.Add(1)
	if pp != nil {
		pp.kick()
	}
	c, err := p.tree.NewCell(prof)
	if err != nil {
		p.stats.createErrors.Add(1)
		return nil, err
	}
	return c, nil
}

// Release hands a used (or unused) cell back for removal: kill what is
// left, wait for empty, rmdir, close the fds, in a background remover; and
// wakes the cell's profile's refiller.
// Nothing more is read from the cell. When the removal queue is full or
// the pool is closed it removes inline. c must not be used afterwards.
func (p *Pool) Release(c *Cell) {
	if c == nil {
		return
	}
	p.queue(c)
}

// Recycle hands a used cell back to be readied for another request of
// its profile, in a background remover: what is left is killed, the
// cell waited for to empty, its charge checked (ReuseCharged), its
// counters read for the next Usage to subtract and its memory.peak
// reset where the kernel allows (Features.MemoryPeakReset); Get hands it
// out before the idle cells. A cell that cannot be readied, or for
// whose profile MaxIdle recycled cells wait already, is removed as
// Release would. c must not be used afterwards.
//
// Only a cell of a Reused profile is handed on: any other is removed, so
// that a request of a profile that did not ask for reused groups never
// gets one.
func (p *Pool) Recycle(c *Cell) {
	if c == nil {
		return
	}
	c.recycle = c.key.Reused
	p.queue(c)
}

// queue hands c to the background removers, or removes it inline when
// their queue is full or the pool is closed.
func (p *Pool) queue(c *Cell) {
	p.mu.RLock()
	if !p.closed {
		select {
		case p.removals <- c:
			p.mu.RUnlock()
			return
		default:
		}
	}
	p.mu.RUnlock()
	p.stats.inline.Add(1)
	p.remove(c)
}

// kickProfile wakes the refiller of c's profile, if it has one.
func (p *Pool) kickProfile(c *Cell) {
	p.mu.RLock()
	defer p.mu.RUnlock()
	if pp := p.profiles[c.key]; pp != nil {
		pp.kick()
	}
}

func (p *Pool) remover() {
	defer p.removers.Done()
	for c := range p.removals {
		p.remove(c)
	}
}

func (p *Pool) remove(c *Cell) {
	ctx, cancel := context.WithTimeout(context.Background(), p.o.RemoveTimeout)
	defer cancel()
	if c.recycle && p.reuse(ctx, c) {
		return
	}
	// A removal frees a cell's room under the kernel's caps: the
	// profile's refiller is woken (a recycled cell takes no new cell's
	// place, so only one removed instead wakes it).
	p.kickProfile(c)
	if err := c.Remove(ctx); err != nil {
		p.stats.removeErrors.Add(1)
		p.log.Error("remove cell (left for the next start-up sweep)", "cell", c.path, "err", err)
		return
	}
	p.stats.removed.Add(1)
}

// reuse readies c for another request (Cell.ready) and puts it with its
// profile's recycled cells; false: it is to be removed (it could not be
// readied, the profile was dropped, the pool closed, or MaxIdle recycled
// cells wait already).
func (p *Pool) reuse(ctx context.Context, c *Cell) bool {
	if err := c.ready(ctx); err != nil {
		if !errors.Is(err, errCharged) && !errors.Is(err, errKilled) {
			p.log.Warn("recycle cell: removed instead", "cell", c.path, "err", err)
		}
		return false
	}
	// Under the read lock, so that a drain (which deletes the profile
	// under the write lock first) finds every cell put here.
	p.mu.RLock()
	defer p.mu.RUnlock()
	pp := p.profiles[c.key]
	if p.closed || pp == nil {
		return false
	}
	select {
	case pp.reused <- c:
		return true
	default:
		return false
	}
}

// profile returns the pool state of prof, registering it (and starting
// its refiller) on first use; nil for a retired profile.
func (p *Pool) profile(prof *Profile) (*poolProfile, error) {
	p.mu.RLock()
	pp, closed := p.profiles[prof.key], p.closed
	_, retired := p.retired[prof.key]
	p.mu.RUnlock()
	if closed {
		return nil, ErrClosed
	}
	if pp != nil || retired {
		return pp, nil
	}
	if err := p.tree.Check(prof); err != nil {
		return nil, err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return nil, ErrClosed
	}
	if _, retired := p.retired[prof.key]; retired {
		return nil, nil
	}
	if pp = p.profiles[prof.key]; pp != nil {
		return pp, nil
	}
	ctx, stop := context.WithCancel(p.ctx)
	pp = &poolProfile{prof: prof, idle: make(chan *Cell, p.o.MaxIdle), reused: make(chan *Cell, p.o.MaxIdle), wake: make(chan struct{}, 1), stop: stop, done: make(chan struct{})}
	p.profiles[prof.key] = pp
	go p.refill(ctx, pp)
	return pp, nil
}

func (pp *poolProfile) kick() {
	select {
	case pp.wake <- struct{}{}:
	default:
	}
}

// refill keeps pp's idle cells topped up after each wake-up, backing off
// exponentially while creation fails.
//
// It is woken by Warm, by a Get that missed or left half the idle cells
// or fewer (a burst), and by Release: not by every Get, because the request that took the
// cell spawns its worker next, and a clone3 with CLONE_INTO_CGROUP takes
// the kernel's cgroup_mutex that the refill's mkdir holds. Refilling
// after the request's cell came back keeps the two apart (sequential p50
// cell/plain ratio in the microVM 1.45 → 1.35, BenchmarkCellLifecycle).
func (p *Pool) refill(ctx context.Context, pp *poolProfile) {
	defer close(pp.done)
	backoff := time.Duration(0)
	for {
		select {
		case <-ctx.Done():
			return
		case <-pp.wake:
		}
		for len(pp.idle) < cap(pp.idle) {
			if ctx.Err() != nil {
				return
			}
			c, err := p.tree.NewCell(pp.prof)
			if err != nil {
				p.stats.createErrors.Add(1)
				backoff = min(max(2*backoff, p.o.MinBackoff), p.o.MaxBackoff)
				p.log.Warn("pre-create cell failed; backing off", "tenant", pp.prof.tenant, "backoff", backoff, "err", err)
				if errors.Is(err, ErrClosed) {
					return
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(backoff):
				}
				continue
			}
			backoff = 0
			select {
			case pp.idle <- c:
			default:
				// Only this goroutine fills idle, so this is not reached;
				// if it ever is, the cell is removed, not leaked.
				p.remove(c)
			}
		}
	}
}

// DrainTenant stops pre-creating cells for the tenant's profiles and
// removes their idle cells, so the tenant group can be removed
// (Tree.RemoveTenant). A later Get for the tenant starts again.
func (p *Pool) DrainTenant(tenant string) error {
	name, err := tenantName(tenant)
	if err != nil {
		return err
	}
	p.mu.Lock()
	var drop []*poolProfile
	for k, pp := range p.profiles {
		if k.Tenant == name {
			drop = append(drop, pp)
			delete(p.profiles, k)
		}
	}
	p.mu.Unlock()
	p.drain(drop)
	return nil
}

// DrainProfile stops pre-creating cells of prof and removes its idle
// cells (before a RouteGroup is removed). A later Get starts it again.
func (p *Pool) DrainProfile(prof *Profile) {
	p.mu.Lock()
	pp := p.profiles[prof.key]
	delete(p.profiles, prof.key)
	p.mu.Unlock()
	if pp != nil {
		p.drain([]*poolProfile{pp})
	}
}

// Retain stops pre-creating cells for every profile not in keep and
// removes their idle cells: after a policy reload, the profiles whose
// limits changed would otherwise keep their idle cells (and fds) forever.
// A later Get for a dropped profile makes its cell without pooling any
// (retired); Warm, or a Retain that keeps it, pools it again.
func (p *Pool) Retain(keep []*Profile) {
	p.mu.Lock()
	now := time.Now()
	var drop []*poolProfile
	for k, pp := range p.profiles {
		if !slices.ContainsFunc(keep, func(q *Profile) bool { return q.key == k }) {
			drop = append(drop, pp)
			delete(p.profiles, k)
			p.retired[k] = now
		}
	}
	for k, at := range p.retired {
		if now.Sub(at) >= retiredFor || slices.ContainsFunc(keep, func(q *Profile) bool { return q.key == k }) {
			delete(p.retired, k)
		}
	}
	p.mu.Unlock()
	p.drain(drop)
}

// retiredFor is how long a retired profile is kept from being pooled
// again by a Get: longer than a replaced route's cells set up ahead live
// on (a warm or resident set idles out after a minute without requests),
// and short enough that reloads do not pile retired profiles up.
const retiredFor = 10 * time.Minute

// drain stops the refillers of pps and removes their idle cells inline.
func (p *Pool) drain(pps []*poolProfile) {
	for _, pp := range pps {
		pp.stop()
	}
	for _, pp := range pps {
		<-pp.done
		for _, ch := range []chan *Cell{pp.idle, pp.reused} {
			// Not len then a receive: a Get that took the profile before
			// it left the map may take the last cell in between, and the
			// receive would wait for ever (the refiller is gone).
			p.removeAll(ch)
		}
	}
}

// removeAll removes the cells ch holds now, without waiting for more.
func (p *Pool) removeAll(ch chan *Cell) {
	for {
		select {
		case c := <-ch:
			p.remove(c)
		default:
			return
		}
	}
}

// Close stops refilling, removes the idle cells and waits for queued
// removals. Cells still handed out may be Released afterwards (removed
// inline). Get after Close returns ErrClosed. Its error counts the
// removals that failed while it closed (a removal that failed before was
// logged then, and its cell left to the Tree's Close and the start-up
// sweep).
func (p *Pool) Close() error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	failedBefore := p.stats.removeErrors.Load()
	p.closed = true
	p.stop()
	var pps []*poolProfile
	for _, pp := range p.profiles {
		pps = append(pps, pp)
	}
	p.profiles = map[ProfileKey]*poolProfile{}
	close(p.removals)
	p.mu.Unlock()
	p.drain(pps)
	p.removers.Wait()
	if n := p.stats.removeErrors.Load() - failedBefore; n > 0 {
		return fmt.Errorf("close pool: %d cell removals failed (left for the start-up sweep)", n)
	}
	return nil
}

// Idle is how many ready cells the pool holds for prof now.
func (p *Pool) Idle(prof *Profile) int {
	p.mu.RLock()
	pp := p.profiles[prof.key]
	p.mu.RUnlock()
	if pp == nil {
		return 0
	}
	return len(pp.idle) + len(pp.reused)
}

// Stats returns the pool's counters.
func (p *Pool) Stats() PoolStats {
	return PoolStats{
		Hits:           p.stats.hits.Load(),
		Reused:         p.stats.reused.Load(),
		Misses:         p.stats.misses.Load(),
		CreateErrors:   p.stats.createErrors.Load(),
		Removed:        p.stats.removed.Load(),
		RemoveErrors:   p.stats.removeErrors.Load(),
		InlineRemovals: p.stats.inline.Load(),
	}
}

// IdleCells is how many ready cells the pool holds now, all profiles.
func (p *Pool) IdleCells() int {
	p.mu.RLock()
	defer p.mu.RUnlock()
	n := 0
	for _, pp := range p.profiles {
		n += len(pp.idle) + len(pp.reused)
	}
	return n
}
