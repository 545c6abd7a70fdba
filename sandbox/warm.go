package sandbox

import (
	"context"
	"runtime"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
)

// Warm confined cells: a confined cell's setup (the init's start, the
// namespaces, the mounts, the filter) does not depend on the request, so
// cells of a route are set up ahead, each a cell of the route's profile
// holding an init that has applied the plan and waits for its exec frame.
// A request that finds one pays a hand-off and the program's fork and exec;
// one that finds none sets its cell up itself, as without the pool.
//
// A route's set is started by Warm (at policy load) or by its first
// request, refilled after each run that took from it (once that run has
// its Result, so that the setup does not compete with it for CPU), and
// dropped (its cells ended) when no
// request took one for warmIdle: the routes of a replaced policy let go of
// their cells without being told.
//
// How many: a set is sized by demand, between one cell and
// Config.WarmCells. Each request that finds the set empty doubles its
// target (a burst of n concurrent requests is met within log2 n bursts);
// each warmShrink without such a miss lowers it by one, takes or none
// (shrink). The refill sets up
// to warmParallel cells up at once: a setup is mostly CPU (the init's Go
// runtime starting, the mounts), so more than one per CPU only queues.

// warmIdle is how long a route's warm cells are kept without a request.
const warmIdle = time.Minute

// warmShrink is how long a set's target stays up without a miss.
const warmShrink = 10 * time.Second

// warmRetry is the pause after a warm cell could not be set up.
const warmRetry = time.Second

// warmParallel is how many cells a set's refill sets up at once.
var warmParallel = max(1, runtime.NumCPU())

type warmKey struct {
	prof *cgroup.Profile
	plan *confine.Prepared
}

// warmSet is one route's warm cells. Guarded by warmPool.mu.
type warmSet struct {
	ready     []*initProc
	want      int           // target size: 1 to warmPool.sizeFor
	preparing int           // setups in flight
	failing   int           // of those, failed ones pausing before the next try (warmRetry)
	busy      int           // resident cells taken from the set, serving a request (resident.go)
	returning int           // of those, the ones on their way back (putBackLater)
	awaited   int           // takes waiting for a cell coming, each for its own (awaitComing)
	back      chan struct{} // closed when a cell coming is ready or ended, for the takes waiting on it
	wake      chan struct{}
	taken     time.Time // the last take
	missed    time.Time // the last take that found none, or the last shrink
	dropped   bool      // Unwarm: its refill ends its cells now
}

type warmPool struct {
	hits, misses atomic.Uint64
	ends         [residentEnds]atomic.Uint64 // resident inits ended, by why (resident.go)

	r        *Runner
	size     int // the most cells a set may hold
	resident int // the most resident cells a resident route's set may hold (resident.go)
	ctx      context.Context
	cancel   context.CancelFunc
	wg       sync.WaitGroup
	returns  sync.WaitGroup // putBackLater's

	mu   sync.Mutex
	sets map[warmKey]*warmSet
}

func newWarmPool(r *Runner, size, resident int) *warmPool {
	ctx, cancel := context.WithCancel(context.Background())
	return &warmPool{r: r, size: size, resident: resident, ctx: ctx, cancel: cancel, sets: map[warmKey]*warmSet{}}
}

// sizeFor is the most cells the key's set may hold, resident ones
// serving requests included; 0: the key's cells are not kept.
func (w *warmPool) sizeFor(k warmKey) int {
	if w.r.residentFor(k.plan) {
		return w.resident
	}
	return w.size
}

// take returns a ready init of the key's, or nil, starting the set if
// need be. On a miss of a resident route it keeps a place in the set for
// the init the request starts itself (slot; the caller sets it as that
// init's set, or gives it back with unslot), so that the refill does not
// set up another one for the same place meanwhile. An init found gone
// (it died while it waited: killed, or OOM-killed with its tenant), and
// one whose view a request may no longer use (too old, or no longer
// covering the daemon's files: view.go), is passed over, its cell
// ended as a teardown (off the request's path when a slot is free). A
// resident route's take that finds none ready while one is on its way
// back (putBackLater) or being set up by the refill, and not waited for
// by another take, waits for it, up to returnWait and as long as ctx
// allows, rather than start an init of its own; if it was ended (or its
// setup failed) instead, the take starts one. The refill waits for
// kick: a setup is mostly CPU, which the request that took the cell needs
// more until it has its Result. refill says whether the take left the
// set wanting one: not when it took a resident init, which comes back
// (putBack wakes the refill if it does not), passed over none and did
// not wait for it (a wait raised the set's target: resize).
func (w *warmPool) take(ctx context.Context, k warmKey) (ip *initProc, slot *warmSet, refill bool) {
	resident := w.r.residentFor(k.plan)
	hidden := hiddenNow(k.plan) // a few stats, before the lock
	w.mu.Lock()
	var dead, old []*initProc
	var waited *time.Timer // returnWait, from the first wait on
	waiting := true        // until returnWait or ctx ends the waits
	for s := w.set(k); s != nil; s = w.set(k) {
		now := time.Now()
		for n := len(s.ready); n > 0 && ip == nil; n-- {
			ip, s.ready = s.ready[n-1], s.ready[:n-1]
			switch {
			case ip.gone():
				w.endedIf(ip, EndFailed)
				dead, ip = append(dead, ip), nil
			case !ip.view.current(now, hidden):
				w.endedIf(ip, EndAged)
				old, ip = append(old, ip), nil
			}
		}
		if ip == nil && waiting && s.coming(resident) > 0 {
			if waited == nil {
				waited = time.NewTimer(returnWait)
				defer waited.Stop()
			}
			waiting = w.awaitComing(ctx, s, resident, waited.C)
			continue
		}
		if ip != nil {
			w.hits.Add(1)
			if ip.resident {
				s.busy++
				ip.set = s
			}
		} else {
			w.misses.Add(1)
			if resident {
				s.busy++
				slot = s
			}
		}
		s.resize(ip != nil, waited != nil, now, w.sizeFor(k))
		break
	}
	w.mu.Unlock()
	for _, d := range dead {
		w.r.log.Warn("warm confined cell: its init died while the cell waited; cell ended", "cell", d.cell.Path())
	}
	for _, d := range append(dead, old...) {
		w.r.teardowns.run(func() { w.r.discard(d) })
	}
	return ip, slot, ip == nil || !ip.resident || waited != nil || len(dead)+len(old) > 0
}

// coming counts the cells of s that a take finding none ready may wait
// for: the resident inits on their way back (putBackLater), and for a
// resident route the setups in flight too (a request that starts its own
// init meanwhile does the same work again, and one of the two then ends
// as surplus). Called with warmPool.mu held.
func (s *warmSet) coming(resident bool) int {
	if resident {
		return s.returning + s.preparing - s.failing
	}
	return s.returning
}

// awaitComing waits until a cell coming to s (warmSet.coming) is ready
// or ended, over fires (returnWait) or ctx ends; false: one of the last
// two, or every cell coming is already waited for by another take: no
// more waits. Called with warmPool.mu held, released meanwhile.
func (w *warmPool) awaitComing(ctx context.Context, s *warmSet, resident bool, over <-chan time.Time) bool {
	if s.awaited >= s.coming(resident) {
		return false
	}
	s.awaited++
	if s.back == nil {
		s.back = make(chan struct{})
	}
	back := s.back
	w.mu.Unlock()
	came := false
	select {
	case <-back:
		came = true
	case <-over:
	case <-ctx.Done():
	}
	w.mu.Lock()
	s.awaited--
	return came
}

// arrived wakes the takes waiting for a cell coming to s (awaitComing):
// one is ready, or ended. Called with warmPool.mu held.
func (s *warmSet) arrived() {
	if s.back != nil {
		close(s.back)
		s.back = nil
	}
}

// runWarm is Run for a confined Spec when warm cells are kept. A warm
// cell's init that died in the pool after take found it alive is found
// when its exec frame is refused (errInitGone, see run): nothing of the
// request ran, so it is run once more, on the next warm cell or a cold
// one, as again allows (a stdin that can be rewound, time left of the
// deadline). Only once; and never after the init took the whole frame,
// since then it may have started the program, however soon it died.
func (r *Runner) runWarm(ctx context.Context, spec Spec) (Result, error) {
	return r.runOnceMore(ctx, spec, errInitGone, func(err error) {
		r.log.Warn("warm confined cell's init was gone at the hand-off: request run on another cell", "err", err)
	})
}

// kick has the key's set refilled, once the run that took from it (or
// found it empty) has its Result.
func (w *warmPool) kick(k warmKey) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if s := w.sets[k]; s != nil {
		wakeUp(s.wake)
	}
}

// resize adjusts the set's target at a take that found a cell or not:
// doubled (up to most) by a miss, raised by one by a take that found one
// only after waiting for it (waited: a resident init on its way back or
// being set up), lowered as shrink does. A request that comes while the
// last one's init is being put back waits for that put back; one cell
// more lets the next request of a client that sends them back to back
// find one ready while the last is put back.
func (s *warmSet) resize(found, waited bool, now time.Time, most int) {
	s.taken = now
	switch {
	case !found:
		s.want = min(2*s.want, most)
		s.missed = now
	case waited:
		s.want = min(s.want+1, most)
		s.missed = now
	}
	s.shrink(now)
}

// shrink lowers the set's target by one for each warmShrink without a
// miss (down to one), takes or none: the refill shrinks it too before it
// replaces the cells whose views aged, so that a set grown by a burst
// and then idle, or taken from now and then, does not have its whole
// size set up again every viewMaxAge. Called with warmPool.mu held.
func (s *warmSet) shrink(now time.Time) {
	steps := int(now.Sub(s.missed) / warmShrink)
	if steps < 1 {
		return
	}
	if s.want > 1 {
		s.want = max(1, s.want-steps)
	}
	s.missed = s.missed.Add(time.Duration(steps) * warmShrink)
}

// expire takes the inits whose view has reached viewMaxAge out of the
// ready ones (the refill ends them and sets up others, so that a route
// with few requests still finds one), and returns when the next one will
// (zero: none ready). Called with warmPool.mu held.
func (s *warmSet) expire(now time.Time) (expired []*initProc, next time.Time) {
	kept := s.ready[:0]
	for _, ip := range s.ready {
		switch end := ip.view.made.Add(viewMaxAge); {
		case ip.view.aged(now):
			expired = append(expired, ip)
		default:
			kept = append(kept, ip)
			if next.IsZero() || end.Before(next) {
				next = end
			}
		}
	}
	clear(s.ready[len(kept):])
	s.ready = kept
	return expired, next
}

// step is one round of the refill at now: the set shrinks to its use, its
// cells too old to serve are taken out (expired, for the caller to end;
// next, when the next one will be), and either the set is done with
// (dropped, or idle for warmIdle: done, nothing started) or start setups
// begin, counted in flight. Done is decided before anything is counted:
// setups counted and never started would have a take wait for their
// arrival (awaitComing) in vain, up to returnWait. Called with
// warmPool.mu held.
func (s *warmSet) step(now time.Time, par int) (expired []*initProc, next time.Time, start int, done bool) {
	s.shrink(now)
	expired, next = s.expire(now)
	if s.dropped || now.Sub(s.taken) >= warmIdle {
		return expired, next, 0, true
	}
	return expired, next, s.toStart(par), false
}

// toStart is how many setups the refill starts now to reach the target,
// with at most par in flight, and counts them as in flight.
func (s *warmSet) toStart(par int) int {
	n := max(min(s.want-len(s.ready)-s.preparing-s.busy, par-s.preparing), 0)
	s.preparing += n
	return n
}

func wakeUp(c chan struct{}) {
	select {
	case c <- struct{}{}:
	default:
	}
}

// set returns the key's set, starting its refiller; nil once closed.
// Called with mu held.
func (w *warmPool) set(k warmKey) *warmSet {
	if w.ctx.Err() != nil {
		return nil
	}
	s := w.sets[k]
	if s == nil {
		now := time.Now()
		s = &warmSet{want: 1, wake: make(chan struct{}, 1), taken: now, missed: now}
		w.sets[k] = s
		w.wg.Add(1)
		go w.refill(k, s)
	}
	return s
}

// refill keeps the set at its target until it has been idle for warmIdle
// or the pool closes, then ends its cells.
func (w *warmPool) refill(k warmKey, s *warmSet) {
	defer w.wg.Done()
	idle := time.NewTimer(warmIdle)
	defer idle.Stop()
	age := time.NewTimer(viewMaxAge)
	defer age.Stop()
	var setups sync.WaitGroup
	for {
		w.mu.Lock()
		taken := s.taken
		expired, next, start, done := s.step(time.Now(), warmParallel)
		w.mu.Unlock()
		for _, ip := range expired {
			w.endedIf(ip, EndAged)
			w.r.teardowns.run(func() { w.r.discard(ip) })
		}
		if done {
			break
		}
		for range start {
			setups.Go(func() {
				ip := w.prepare(k)
				if ip == nil { // could not: let the next try wait
					w.mu.Lock()
					s.failing++ // not coming: the takes waiting for it go on
					s.arrived()
					w.mu.Unlock()
					select {
					case <-time.After(warmRetry):
					case <-w.ctx.Done():
					}
				}
				w.mu.Lock()
				s.preparing--
				if ip != nil {
					s.ready = append(s.ready, ip)
				} else {
					s.failing--
				}
				s.arrived()
				w.mu.Unlock()
				wakeUp(s.wake)
			})
		}
		idle.Reset(warmIdle - time.Since(taken))
		var aged <-chan time.Time
		if !next.IsZero() {
			age.Reset(time.Until(next))
			aged = age.C
		}
		select {
		case <-s.wake:
			continue
		case <-idle.C:
			continue
		case <-aged:
			continue
		case <-w.ctx.Done():
		}
		break
	}
	w.mu.Lock()
	if w.sets[k] == s { // later takes start a new set
		delete(w.sets, k)
	}
	w.mu.Unlock()
	setups.Wait()
	w.mu.Lock()
	ready := s.ready
	s.ready = nil
	w.mu.Unlock()
	for _, ip := range ready {
		w.r.discard(ip)
	}
}

// prepare sets up one cell of the key and waits until its init is ready.
func (w *warmPool) prepare(k warmKey) *initProc {
	cell, err := w.r.cells.Get(w.ctx, k.prof)
	if err != nil {
		if w.ctx.Err() == nil {
			w.r.log.Warn("warm confined cell: no cell", "tenant", k.prof.Tenant(), "err", err)
		}
		return nil
	}
	ip, err := w.r.startInit(cell, k.plan, k.prof.Tenant())
	if err != nil {
		w.r.log.Warn("warm confined cell: start its init", "cell", cell.Path(), "err", err)
		w.r.cells.Release(cell)
		return nil
	}
	if err := ip.waitReady(&Spec{}); err != nil {
		w.r.log.Warn("warm confined cell: its init is not ready", "cell", cell.Path(), "err", err)
		w.r.discard(ip)
		return nil
	}
	if ip.resident && !w.r.prepareNext(w.ctx, ip, k.prof) {
		w.r.discard(ip) // gone before its prepare frame
		return nil
	}
	return ip
}

// close ends every warm cell.
func (w *warmPool) close() {
	w.cancel()
	w.mu.Lock()
	for _, s := range w.sets {
		wakeUp(s.wake)
	}
	w.mu.Unlock()
	w.returns.Wait()
	w.wg.Wait()
}

// discard ends an init that serves no request (the end of its control
// socket makes it exit; cgroup.kill makes sure), waits for it, and
// releases its cell.
func (r *Runner) discard(ip *initProc) {
	ip.closeCtl()
	ip.cell.Kill()
	ip.proc.Kill()
	if w, err := ip.worker(); err == nil {
		if _, err := r.reaper.wait(w); err != nil {
			waitBlocking(ip.proc)
		}
		w.release()
	} else {
		waitBlocking(ip.proc)
		ip.proc.Release()
	}
	r.endInitCell(ip)
}

// endInitCell ends what an init that has been reaped held: its cell,
// emptied and released, its network namespace, given back (for reuse
// unless a program ran in it as the host's root), and the cell prepared
// for its next request (endNext).
func (r *Runner) endInitCell(ip *initProc) {
	err := r.empty(ip.cell)
	if err != nil {
		r.log.Error("the cell of an ended init did not empty", "cell", ip.cell.Path(), "err", err)
	}
	ip.endNetns(r, err == nil && !ip.hostRootRan)
	r.cells.Release(ip.cell)
	r.endNext(ip)
	ip.dropStubs()
	ip.closeSockstat()
}

// Warm starts keeping warm (or resident) confined cells of prof (nil: the
// Runner's) and plan, a route's, ahead of its first request; a no-op when
// the route's cells are not kept (Config.WarmCells, Config.ResidentCells).
func (r *Runner) Warm(prof *cgroup.Profile, plan *confine.Prepared) {
	if plan == nil {
		return
	}
	if prof == nil {
		prof = r.profile
	}
	k := warmKey{prof, plan}
	if !r.keeps(k) {
		return
	}
	r.warm.mu.Lock()
	r.warm.set(k)
	r.warm.mu.Unlock()
}

// Unwarm ends the warm (or resident) cells kept for prof (nil: the
// Runner's) and plan, a route that no policy in force has any more: its
// set's refill ends the ready ones now rather than after warmIdle
// without a request, and those serving a request are ended when it does
// (putBack finds no set). Its tenant's group, if the tenant went too,
// can then be removed at once. A later Warm or request of the key starts
// a set anew.
func (r *Runner) Unwarm(prof *cgroup.Profile, plan *confine.Prepared) {
	if r.warm == nil || plan == nil {
		return
	}
	if prof == nil {
		prof = r.profile
	}
	k := warmKey{prof, plan}
	r.warm.mu.Lock()
	defer r.warm.mu.Unlock()
	if s := r.warm.sets[k]; s != nil {
		s.dropped = true
		delete(r.warm.sets, k)
		wakeUp(s.wake)
	}
}

// keeps reports whether cells of the key are kept ahead of requests
// (warm, or resident).
func (r *Runner) keeps(k warmKey) bool {
	return r.warm != nil && r.warm.sizeFor(k) > 0
}

// WarmReady is how many warm confined cells are ready, over all routes.
func (r *Runner) WarmReady() int {
	if r.warm == nil {
		return 0
	}
	r.warm.mu.Lock()
	defer r.warm.mu.Unlock()
	n := 0
	for _, s := range r.warm.sets {
		n += len(s.ready)
	}
	return n
}

// WarmStats counts the confined runs that found a warm cell (hits) and
// those that set their cell up themselves (misses).
func (r *Runner) WarmStats() (hits, misses uint64) {
	if r.warm == nil {
		return 0, 0
	}
	return r.warm.hits.Load(), r.warm.misses.Load()
}
