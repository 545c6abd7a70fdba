package sandbox

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// Defaults for the Config fields left zero.
const (
	DefaultTimeout     = 30 * time.Second
	DefaultStreamGrace = time.Second
	DefaultEmptyWait   = 10 * time.Second
)

// Config configures a Runner. Zero fields take the documented defaults.
type Config struct {
	// Cells gives the Runner its cells (required): PoolCells over the
	// daemon's cgroup pool, or a fake in tests.
	Cells Cells
	// Logger receives the anomalies of a run (a kill that failed, a cell that
	// did not empty); nil discards them.
	Logger *slog.Logger
	// Profile is the cell profile (tenant and limits) used when a Spec has
	// none (required).
	Profile *cgroup.Profile
	// Timeout is the deadline used when a Spec has none (DefaultTimeout).
	Timeout time.Duration

	// UIDs is the range of per-cell uids (DefaultUIDRange) and GID the group
	// every per-cell uid runs with (DefaultGID).
	UIDs UIDRange
	GID  uint32
	// AsSelf runs workers that have no Spec.User under the daemon's own
	// credentials instead of a per-cell uid. It gives up the isolation of
	// cells from each other and from the daemon; it exists for unprivileged
	// use (unit tests, a non-root `cellgate run`).
	AsSelf bool

	// Launcher starts the init of confined cells (Specs with Confine);
	// nil refuses them. The Runner does not close it.
	Launcher *confine.Launcher
	// WarmCells is the most confined cells per route set up ahead of their
	// requests, the set sized by demand between one and this (see
	// warm.go); 0 sets every cell up on its request.
	WarmCells int
	// ResidentCells is the most resident cells per route (see
	// resident.go), ready or serving a request, the set sized by demand
	// as WarmCells'; 0 has none. Only with a Launcher that is
	// cellgate-init (the Go init has no resident mode); a route's plan
	// says whether its cells may be resident (confine.Plan.Resident),
	// and those that may not are kept as WarmCells says.
	ResidentCells int
	// NetNamespaces is how many network namespaces are kept made ahead
	// for confined cells that have one of their own (see netns.go); 0 has
	// every such cell's init make its own.
	NetNamespaces int
	// MountTemplates has a confined route's cells copy its filesystem view
	// from a mount namespace made once (see templates.go) instead of
	// each building it; false has every cell build its own.
	MountTemplates bool
	// InitSpawner has a long-lived cellgate-init clone each confined
	// cell's init (see spawner.go) instead of the daemon forking and
	// executing it; only with a Launcher that is cellgate-init (the Go
	// init has no spawner mode).
	InitSpawner bool
	// Teardowns bounds the confined cells torn down in the background
	// after their Result is known (DefaultTeardowns; see teardown.go); a
	// negative value tears every cell down before Run returns.
	Teardowns int
	// Spawns bounds the workers and inits being started at once (0 =
	// GOMAXPROCS, at least 2; see spawnslots.go): each start holds an OS
	// thread, which the Go runtime keeps once made.
	Spawns int

	// StreamGrace bounds how long stdout/stderr copying may go on after the
	// cell emptied (DefaultStreamGrace).
	StreamGrace time.Duration
	// EmptyWait bounds the wait for a killed cell to empty (DefaultEmptyWait).
	EmptyWait time.Duration
}

// Runner runs workers, each in a fresh cell. It is safe for concurrent use;
// the daemon has one.
type Runner struct {
	cells       Cells
	log         *slog.Logger
	profile     *cgroup.Profile
	timeout     time.Duration
	uids        *uidPool
	gid         uint32
	asSelf      bool
	streamGrace time.Duration
	emptyWait   time.Duration
	devNull     *os.File
	hasTTY      bool // the daemon has a controlling terminal
	reaper      *reaper
	launcher    *confine.Launcher
	warm        *warmPool // nil without Config.WarmCells
	teardowns   *teardowns
	netns       *netnsPool      // nil without Config.NetNamespaces
	templates   *mountTemplates // nil without Config.MountTemplates
	spawner     *initSpawner    // nil without Config.InitSpawner
	spawns      spawnSlots
}

// New returns a Runner. It opens /dev/null for workers' unset streams and,
// once per process, marks every inherited fd above 2 close-on-exec (see
// sealInheritedFDs). Close releases /dev/null.
func New(cfg Config) (*Runner, error) {
	if cfg.Cells == nil {
		return nil, errors.New("sandbox: Config.Cells is nil")
	}
	if cfg.Profile == nil {
		return nil, errors.New("sandbox: Config.Profile is nil")
	}
	if cfg.GID == noID {
		return nil, fmt.Errorf("sandbox: Config.GID %d is (gid_t)-1, which the kernel reads as no change: the cells would keep the daemon's group", cfg.GID)
	}
	r := &Runner{
		cells:       cfg.Cells,
		log:         cfg.Logger,
		profile:     cfg.Profile,
		timeout:     cfg.Timeout,
		gid:         cfg.GID,
		asSelf:      cfg.AsSelf,
		streamGrace: cfg.StreamGrace,
		emptyWait:   cfg.EmptyWait,
		launcher:    cfg.Launcher,
	}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.timeout <= 0 {
		r.timeout = DefaultTimeout
	}
	if r.streamGrace <= 0 {
		r.streamGrace = DefaultStreamGrace
	}
	if r.emptyWait <= 0 {
		r.emptyWait = DefaultEmptyWait
	}
	switch {
	case cfg.Teardowns == 0:
		cfg.Teardowns = DefaultTeardowns
	case cfg.Teardowns < 0:
		cfg.Teardowns = 0
	}
	r.teardowns = newTeardowns(cfg.Teardowns)
	r.spawns = newSpawnSlots(cfg.Spawns)
	uids := cfg.UIDs
	if uids == (UIDRange{}) {
		uids = DefaultUIDRange
	}
	if !r.asSelf {
		if err := uids.Validate(); err != nil {
			return nil, fmt.Errorf("sandbox: %w", err)
		}
		if r.gid == 0 {
			r.gid = DefaultGID
		}
		r.uids = newUIDPool(uids)
	}
	if err := sealInheritedFDs(); err != nil {
		return nil, err
	}
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		return nil, fmt.Errorf("sandbox: open %s: %w", os.DevNull, err)
	}
	r.devNull = devNull
	r.hasTTY = hasControllingTTY()
	if r.reaper, err = newReaper(); err != nil {
		devNull.Close()
		return nil, fmt.Errorf("sandbox: %w", err)
	}
	if cfg.NetNamespaces > 0 && cfg.Launcher != nil {
		if r.netns, err = newNetnsPool(cfg.NetNamespaces, r.log); err != nil {
			r.reaper.close()
			devNull.Close()
			return nil, fmt.Errorf("sandbox: %w", err)
		}
	}
	if cfg.MountTemplates && cfg.Launcher != nil {
		if err := canEnterTemplates(); err != nil {
			r.log.Warn("mount templates are off: each confined cell builds its own filesystem view", "err", err)
		} else {
			r.templates = newMountTemplates(r)
		}
	}
	if cfg.InitSpawner && cfg.Launcher != nil {
		r.spawner = newInitSpawner(cfg.Launcher, r.devNull, r.hasTTY, r.log)
	}
	if (cfg.WarmCells > 0 || cfg.ResidentCells > 0) && cfg.Launcher != nil {
		r.warm = newWarmPool(r, cfg.WarmCells, cfg.ResidentCells)
	}
	return r, nil
}

// Close releases the Runner's own fds and ends its reaper goroutine. Runs
// in flight must have returned.
func (r *Runner) Close() error {
	if r.warm != nil {
		r.warm.close()
	}
	r.teardowns.wait()
	if r.spawner != nil {
		r.spawner.close()
	}
	if r.templates != nil {
		r.templates.close()
	}
	if r.netns != nil {
		r.netns.close()
	}
	r.reaper.close()
	return r.devNull.Close()
}

// UIDsInFlight returns how many per-cell uids are handed out (for metrics
// and leak checks).
func (r *Runner) UIDsInFlight() int {
	if r.uids == nil {
		return 0
	}
	return r.uids.inFlight()
}

// Run runs spec's worker in a fresh cell and returns once the cell is empty
// and released: its main process has exited and been reaped, everything else
// in the cell (daemons, grandchildren) has been killed with cgroup.kill, and
// the kernel's accounting has been read. A confined cell returns earlier,
// once its init reports that the program ended (and, with a PID namespace,
// that what it left is killed and reaped): its accounting is read then,
// with the init's own still in it, and the init's exit, the cell's
// emptying and release and the uid's return follow in the background,
// bounded by Config.Teardowns (teardown.go). With spec.LateUsage and a
// status of 0, not even the accounting is read first: it is read at the
// end of that teardown, and the Result is Late until Account.
//
// The deadline (spec.Timeout or the Runner's) counts from the start of the
// worker. Cancelling ctx kills the cell too (CauseKilled); ctx also bounds the
// wait for a cell.
//
// Run returns an error wrapping ErrSpec, ErrNoUID, ErrNoCell or ErrSpawn when
// the worker never ran (the Result is then zero; ErrSpawn is joined with
// ErrCellNotEmpty when the failed start's cell did not empty, and the uid
// is then kept out of circulation). When the worker ran, the
// Result is complete (but for a Late one's Usage) and the error is nil, or
// wraps ErrStreams or ErrCellNotEmpty, or reports that the accounting could
// not be read (a Late one's Account reports that).
//
// A fork request caught in the hand-off to a preloader that died is
// retried once on a fresh cell (runFork) when its child never ran; else
// Run returns ErrNoPreloader when nothing of it ran, ErrPreloaderLost
// when it may have (the Result is then zero either way). A confined
// request whose warm cell's init was gone before it took the exec frame
// is retried once on another cell (runWarm).
func (r *Runner) Run(ctx context.Context, spec Spec) (Result, error) {
	switch {
	case spec.Preloader != nil:
		return r.runFork(ctx, spec)
	case spec.Confine != nil && r.warm != nil:
		return r.runWarm(ctx, spec)
	}
	return r.run(ctx, spec)
}

// run is one attempt of Run.
func (r *Runner) run(ctx context.Context, spec Spec) (Result, error) {
	drv := r.driver(&spec)
	if err := checkSpec(&spec, drv); err != nil {
		return Result{}, err
	}
	id, err := drv.identity(&spec)
	if err != nil {
		return Result{}, err
	}
	if spec.Confine != nil && id.cred == nil {
		return Result{}, fmt.Errorf("%w: a confined cell needs credentials to drop to (not AsSelf)", ErrSpec)
	}
	// A program run as the host's root may have changed its cell's
	// namespaces: its init and network namespace serve no other request.
	hostRoot := spec.Confine != nil && spec.Confine.Plan().HostRoot(id.uid)
	keepUID := false
	defer func() {
		if id.release != nil && !keepUID {
			id.release()
		}
	}()

	prof := spec.Profile
	if prof == nil {
		prof = r.profile
	}
	var ip *initProc  // the init of a confined cell
	var slot *warmSet // a place kept for a resident init this run starts
	slotUsed := false // that init has it (as its set)
	k := warmKey{prof, spec.Confine}
	if spec.Confine != nil && r.keeps(k) {
		var refill bool
		ip, slot, refill = r.warm.take(ctx, k)
		if refill {
			defer r.warm.kick(k)
		}
		defer func() {
			if slot != nil && !slotUsed {
				r.warm.unslot(slot)
			}
		}()
	}
	pooled := ip != nil // a warm or resident cell's
	// A resident init (resident.go) runs the program in a cell of the
	// request's own, prepared (its stub in it) or not; any other init is
	// in the request's cell.
	resident := spec.Confine != nil && r.residentFor(spec.Confine)
	var cell Cell
	prepared := false // the program's process started ahead in cell (its stub)
	switch {
	case ip != nil && !resident:
		cell = ip.cell
	case ip != nil && ip.next != nil:
		cell, ip.next, prepared = ip.next, nil, true
	}
	if cell == nil {
		if cell, err = r.cells.Get(ctx, prof); err != nil {
			if ip != nil {
				r.warm.putBack(k, ip)
			}
			return Result{}, fmt.Errorf("%w: tenant %q: %w", ErrNoCell, prof.Tenant(), err)
		}
	}
	released := false
	defer func() {
		if !released {
			r.cells.Release(cell)
		}
	}()

	st, err := newStreams(&spec, r.devNull)
	if err != nil {
		switch {
		case ip != nil && resident:
			if prepared { // its stub waits in it still
				ip.next, released = cell, true
			}
			r.warm.putBack(k, ip)
		case ip != nil:
			r.discard(ip)
			released = true
		}
		return Result{}, fmt.Errorf("%w: %s: %w", ErrSpawn, spec.Path, err)
	}
	var w *worker
	initKept := false // a resident init put back, or ended, by this run
	if spec.Confine != nil {
		// A confined cell's first process is its init; the program is
		// handed to it below, once the deadline is armed.
		if ip == nil {
			if resident {
				if ip, err = r.startResident(ctx, k); err == nil && slot != nil {
					ip.set, slotUsed = slot, true
				}
			} else {
				ip, err = r.startInit(cell, spec.Confine, prof.Tenant())
			}
			if err != nil {
				st.closeAll()
				return Result{}, err
			}
		}
		defer func() {
			if !initKept {
				ip.closeCtl()
			}
		}()
		if w, err = ip.worker(); err != nil {
			st.closeAll()
			ip.proc.Kill()
			waitBlocking(ip.proc)
			if resident {
				r.endResident(ip, false)
			} else {
				ip.endNetns(r, false)
			}
			return Result{}, fmt.Errorf("%w: in cell %s: %w", ErrSpawn, cell.Path(), err)
		}
	} else {
		w, err = drv.start(ctx, cell, &spec, st.child, id)
		st.started()
		if err != nil {
			if spec.Preloader != nil {
				// runFork may run the request again on the same
				// streams: this attempt's copiers must have ended.
				err = st.abort(err, r.streamGrace)
				// A preloader that failed mid-request may have cloned the child
				// without handing over its pidfd: it is cellgate's child
				// (CLONE_PARENT), so it is killed with the cell and reaped
				// here, and the uid returns only once the cell is empty.
				if _, err := r.endOrphans(cell); err != nil {
					keepUID = true
				}
				return Result{}, fmt.Errorf("in cell %s: %w", cell.Path(), err)
			}
			st.closeAll()
			err = fmt.Errorf("%w: in cell %s: %w", ErrSpawn, cell.Path(), explainSpawn(spec.Path, spec.Dir, err))
			// The worker may have run before start failed (its pidfd
			// could not be dup'ed: cgiDriver.start killed and reaped it)
			// and left processes in the cell under the uid, which
			// returns only once the cell is empty, as after a run.
			if emptyErr := r.empty(cell); emptyErr != nil {
				keepUID = true
				err = errors.Join(err, emptyErr)
			}
			return Result{}, err
		}
	}
	start := time.Now()
	if spec.Started != nil {
		spec.Started(cell.Path(), cell.CPUBefore())
	}

	kl := &killer{cell: cell, w: w, log: r.log}
	if prepared {
		// The program's process is in its cell already (started
		// ahead): an end kills the cell, not the init, which then
		// reports the end (resident.go; started below).
		kl.spare(r.emptyWait)
	}
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = r.timeout
	}
	timer := time.AfterFunc(timeout, func() { kl.kill(CauseDeadline) })
	stopCtx := context.AfterFunc(ctx, func() { kl.kill(CauseKilled) })
	// disarm stops the deadline and the context's kill once the worker
	// has ended, and returns what killed it, if anything did.
	disarm := func() Cause {
		timer.Stop()
		stopCtx()
		return kl.finish()
	}
	var launchErr error
	if ip != nil {
		// The init takes the program's streams with the exec frame; the
		// deadline is armed, so a send that blocks ends with the cell.
		group := cell // the cell a resident init clones the program into
		if prepared || !resident {
			group = nil
		}
		launchErr = ip.exec(&spec, id.cred, st.child, group, prepared)
		st.started()
		if launchErr != nil {
			kl.kill(CauseKilled)
		}
	}
	var started func()
	if resident && !prepared {
		// A resident init outlives the request: once the program is in
		// its cell, an end kills the cell, not the init, which then
		// reports the program's end (until then, the init: its PID
		// namespace ends with it).
		started = func() { kl.spare(r.emptyWait) }
	}

	if ip != nil && launchErr == nil {
		if rep, ok := ip.awaitEnd(r.reaper, started); ok && rep.Kind == confine.ReportExited {
			// The program has ended and its init has ended what it left:
			// the Result is known now. The init's exit (the teardown of
			// its namespaces), the cell's emptying and release and the
			// uid's return follow off the request's path (teardown.go).
			killedBy := disarm()
			if prepared {
				took, reuse, errno := stubTook(ip.stubs[0])
				if !reuse {
					ip.dropStubs()
				}
				if (!took && killedBy == "") || errno != 0 {
					return r.notTaken(k, ip, cell, &spec, st, rep, &initKept, &keepUID, errno)
				}
				// A process killed before it took the frame ends the
				// request as a kill after its start would.
			}
			if spec.Confine.Plan().Namespaces&confine.NSPID == 0 {
				cell.Kill() // what the program left, outside a PID namespace
			}
			var errs []error
			exit := reported(rep)
			var late *lateUsage
			if spec.LateUsage && exit == (exitStatus{}) {
				// The answer does not depend on the accounting (a status
				// of 0 is CauseOK): it is read once the cell has ended,
				// before its release.
				late = newLateUsage()
			}
			wall, usage, unenforced, uerr := usageOf(cell, start, late == nil)
			if uerr != nil {
				errs = append(errs, uerr)
			}
			released, keepUID = true, true
			release := id.release
			// done ends the request's part once its cell is empty (or
			// given up on): the late accounting, the uid's return.
			done := func(emptied bool) {
				if late != nil {
					late.fill(func() (cgroup.Usage, error) { return endedUsage(cell, emptied) })
				}
				if emptied && release != nil {
					release()
				}
			}
			if resident {
				// The init waits for the next request: the program's cell
				// ends on its own, and the init goes back to its set, its
				// next request's cell prepared, off the request's path
				// (returning, putBack), unless the program ran as the
				// host's root or left what the init could not end.
				initKept = true
				reuse := !hostRoot && !rep.Unclean
				var back func() // the init's put back, run with the cell's end
				switch {
				case hostRoot:
					r.warm.ended(EndRoot)
				case rep.Unclean:
					r.warm.ended(EndUnclean)
				default:
					back = r.warm.returning(k, ip)
				}
				if !reuse {
					r.warm.forget(ip)
					ip.hostRootRan = ip.hostRootRan || hostRoot
					r.teardowns.run(func() { r.discard(ip) })
				}
				// One goroutine for both (a start and a wakeup less per
				// request): the init first, which a request may wait for.
				r.teardowns.run(func() {
					if back != nil {
						back()
					}
					emptied := r.empty(cell) == nil
					done(emptied)
					r.giveBack(cell, reuse && emptied)
				})
			} else {
				r.endCell(w, cell, func(emptied bool) {
					done(emptied)
					ip.endNetns(r, emptied && !hostRoot)
				})
			}
			if err := st.wait(r.streamGrace); err != nil {
				errs = append(errs, err)
			}
			res := ended(exit, killedBy, usage, start, wall, id.uid, unenforced, w)
			res.late = late
			return res, errors.Join(errs...)
		}
	}

	if resident {
		// The init failed the request (it died, or sent no report): it
		// ends, and its cell with it, below.
		w.kill()
	}
	exit, werr := r.reaper.wait(w)
	if werr != nil && w.proc != nil {
		// The pidfd wait failed (should not happen): end the cell and reap
		// the worker the blocking way, so that no zombie is left.
		r.log.Error("wait for worker on its pidfd", "cell", cell.Path(), "err", werr)
		kl.kill(CauseKilled)
		if st, err := waitBlocking(w.proc); err == nil {
			exit, werr = st, nil
		}
	}
	killedBy := disarm()
	if !resident {
		w.release() // a resident init's, with the init below
	} else if initOOMKilled(ip) {
		// The kernel chose the init when its tenant's budget (or the
		// global one) ran out, and its PID namespace's end killed the
		// program: the request ended for the budget, as it would have
		// had the program been chosen (the root cause, over a deadline
		// that fired meanwhile).
		killedBy = CauseOOMBudget
	}

	var errs []error
	if werr != nil {
		errs = append(errs, werr)
	}
	emptyErr := r.empty(cell)
	if emptyErr != nil {
		keepUID = true // a process may still run under it
		errs = append(errs, emptyErr)
	}
	switch {
	case resident:
		r.endResident(ip, hostRoot)
	case ip != nil:
		ip.endNetns(r, emptyErr == nil && !hostRoot)
	}
	wall, usage, unenforced, uerr := usageOf(cell, start, true)
	if uerr != nil {
		errs = append(errs, uerr)
	}
	released = true
	r.cells.Release(cell)
	if err := st.wait(r.streamGrace); err != nil {
		errs = append(errs, err)
	}
	if ip != nil {
		rep, ok := ip.report()
		switch {
		case ok && rep.Kind != confine.ReportExited:
			return Result{}, errors.Join(append([]error{notRun(rep, &spec, cell)}, errs...)...)
		case launchErr != nil:
			err := fmt.Errorf("%w: cell %s: %w", ErrSpawn, cell.Path(), launchErr)
			if pooled && killedBy != CauseDeadline && refused(launchErr) {
				// The warm cell's init died before it had the frame:
				// nothing ran, runWarm may run the request again once
				// its stream copiers have ended.
				err = st.abort(fmt.Errorf("%w: %w", errInitGone, err), r.streamGrace)
			}
			return Result{}, errors.Join(append([]error{err}, errs...)...)
		case ok:
			// The init's own status is the program's, but a signal
			// cannot be passed on by a PID 1: the report has it.
			exit = reported(rep)
		}
	}
	return ended(exit, killedBy, usage, start, wall, id.uid, unenforced, w), errors.Join(errs...)
}

// notTaken ends a request whose program's process, started ahead in its
// cell by the resident init ip (prepareNext), never ran the program: it
// ended before it took the exec frame (errno 0: its group's OOM kill, or
// its tenant's; that group's events are not the request's, and runWarm
// runs the request once more on another cell), or its execve failed
// (errno). The init has reaped it and reported (rep); it goes back to
// its set, the cell is emptied (the uid returns with it, as the caller's
// defers do).
func (r *Runner) notTaken(k warmKey, ip *initProc, cell Cell, spec *Spec, st *streams, rep confine.Report, initKept, keepUID *bool, errno syscall.Errno) (Result, error) {
	*initKept = true
	if rep.Unclean {
		r.warm.ended(EndUnclean)
		r.warm.forget(ip)
		r.teardowns.run(func() { r.discard(ip) })
	} else {
		r.warm.putBackLater(k, ip)
	}
	var errs []error
	if err := r.empty(cell); err != nil {
		*keepUID = true
		errs = append(errs, err)
	}
	if errno == 0 {
		err := st.abort(fmt.Errorf("%w: %w: in cell %s: the program's process started ahead ended before it took the request", errInitGone, ErrSpawn, cell.Path()), r.streamGrace)
		return Result{}, errors.Join(append([]error{err}, errs...)...)
	}
	if err := st.wait(r.streamGrace); err != nil {
		errs = append(errs, err)
	}
	err := notRun(confine.Report{Kind: confine.ReportSpawn, Errno: int32(errno)}, spec, cell)
	return Result{}, errors.Join(append([]error{err}, errs...)...)
}

// usageOf is what a cell used once its program has ended: the wall time
// since start, the kernel's accounting (when read; else left for later,
// Spec.LateUsage) and the limits not enforced.
func usageOf(cell Cell, start time.Time, read bool) (time.Duration, cgroup.Usage, []string, error) {
	wall := time.Since(start)
	var usage cgroup.Usage
	var err error
	if read {
		usage, err = cellUsage(cell)
	}
	return wall, usage, cell.Unenforced(), err
}

// cellUsage reads cell's accounting; an error names the cell.
func cellUsage(cell Cell) (cgroup.Usage, error) { return endedUsage(cell, false) }

// endedUsage is cellUsage of a cell after the wait for it to empty;
// emptied, a cell that keeps that reading as its next request's base
// (cgroup.Cell's UsageEnded, for a recycled group) reads it so.
func endedUsage(cell Cell, emptied bool) (cgroup.Usage, error) {
	read := cell.Usage
	if c, ok := cell.(interface{ UsageEnded() (cgroup.Usage, error) }); ok && emptied {
		read = c.UsageEnded
	}
	usage, err := read()
	if err != nil {
		err = fmt.Errorf("read usage of cell %s: %w", cell.Path(), err)
	}
	return usage, err
}

// reported is the program's status as its init reported it: a PID 1
// cannot die of a signal to pass one on, so the report carries it.
func reported(rep confine.Report) exitStatus {
	return exitStatus{code: int(rep.Code), signal: syscall.Signal(rep.Signal)}
}

// ended is the Result of a worker w that ran.
func ended(exit exitStatus, killedBy Cause, usage cgroup.Usage, start time.Time, wall time.Duration, uid uint32, unenforced []string, w *worker) Result {
	return Result{
		Cause:      classify(exit, killedBy, usage),
		ExitCode:   exit.code,
		Signal:     exit.signal,
		Usage:      usage,
		Started:    start,
		Wall:       wall,
		UID:        uid,
		Unenforced: unenforced,
		Spawn:      w.handOff,
		Clone:      w.clone,
	}
}

// driver returns the driver of spec: fork when it names a preloader, cgi
// otherwise.
func (r *Runner) driver(spec *Spec) driver {
	if spec.Preloader != nil {
		return forkDriver{spec.Preloader}
	}
	return cgiDriver{r}
}

// empty ends whatever is left in the cell once its main process has exited:
// daemons and grandchildren die with cgroup.kill. The first check is a single
// read of cgroup.events; the pidfd already told that the main process is gone,
// and after a single-process worker the cell is usually empty by then
// (kernel/exit.c do_exit: cgroup_exit runs before exit_notify, which wakes
// the pidfd).
func (r *Runner) empty(cell Cell) error {
	populated, err := cell.Populated()
	if err == nil && !populated {
		return nil
	}
	if err := cell.Kill(); err != nil {
		r.log.Error("kill cell", "cell", cell.Path(), "err", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), r.emptyWait)
	defer cancel()
	if err := cell.WaitEmpty(ctx); err != nil {
		r.log.Error("cell did not empty; its uid stays out of circulation", "cell", cell.Path(), "err", err)
		return fmt.Errorf("%w: %s after %s: %w", ErrCellNotEmpty, cell.Path(), r.emptyWait, err)
	}
	return nil
}

// giveBack hands an ended request's cell back: to be handed on, if the
// Cells can take it back and reuse (a resident request's cell, emptied,
// its program not root, the init's end of it clean), which the pool does
// for a Reused profile's cell alone (groups: reused), else for removal.
func (r *Runner) giveBack(cell Cell, reuse bool) {
	if rc, ok := r.cells.(Recycler); ok && reuse {
		rc.Recycle(cell)
		return
	}
	r.cells.Release(cell)
}

// checkSpec validates what every driver passes on (the environment) and
// then what drv needs.
func checkSpec(spec *Spec, drv driver) error {
	if u := spec.User; spec.GID == noID || u != nil && (u.UID == noID || u.GID == noID || slices.Contains(u.Groups, noID)) {
		return fmt.Errorf("%w: an id of 4294967295, (uid_t)-1, which the kernel reads as no change: the worker would keep the daemon's", ErrSpec)
	}
	for _, kv := range spec.Env {
		k, _, ok := strings.Cut(kv, "=")
		if !ok || k == "" || strings.IndexByte(kv, 0) >= 0 {
			return fmt.Errorf("%w: environment entry %q: want KEY=value", ErrSpec, kv)
		}
	}
	// A nil Env would make os.StartProcess give the worker the daemon's
	// environment; the worker gets exactly spec.Env.
	if spec.Env == nil {
		spec.Env = []string{}
	}
	return drv.check(spec)
}

// noID is (uid_t)-1 and (gid_t)-1: setresuid and setresgid leave an id
// given so as it is, so a cell given it keeps the daemon's (root's).
const noID = math.MaxUint32

// startNoNewPrivs starts the worker with no_new_privs set: it cannot gain
// privileges through execve of a set-uid/set-gid binary or one with file
// capabilities, whatever it runs later.
//
// SysProcAttr has no field for it. The flag is per thread and inherited by
// every task a thread clones, and Go forks on the calling thread. So the
// goroutine is locked to its thread, the flag is set there (idempotent, one
// prctl; it cannot be unset, and it does not restrict the daemon, which never
// execs anything but workers), and the worker is cloned from that thread.
// Over time the daemon's threads all carry the flag; that is harmless. Unlike
// unix.AllThreadsSyscall at start-up this works in cgo builds too (go test
// links cgo when a C compiler is present) and cannot be forgotten by a caller.
func startNoNewPrivs(path string, args []string, attr *os.ProcAttr) (*os.Process, error) {
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return nil, fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	return os.StartProcess(path, args, attr)
}

var sealOnce = sync.OnceValue(func() error {
	err := unix.CloseRange(3, ^uint(0), unix.CLOSE_RANGE_CLOEXEC)
	if err == nil {
		return nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EINVAL) {
		return fmt.Errorf("sandbox: close_range(3, ~0, CLOSE_RANGE_CLOEXEC): %w", err)
	}
	// Kernel < 5.11: mark each open fd.
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		return fmt.Errorf("sandbox: list /proc/self/fd: %w", err)
	}
	for _, e := range ents {
		var fd int
		if _, err := fmt.Sscan(e.Name(), &fd); err != nil || fd <= 2 {
			continue
		}
		unix.CloseOnExec(fd) // the listing's own fd is gone by now: ignore EBADF
	}
	return nil
})

// sealInheritedFDs marks every fd above 2 close-on-exec, once per process.
// Go opens its own fds with O_CLOEXEC and passes a worker only the three
// streams it is given; this covers fds the daemon inherited from whoever
// started it (a shell, a supervisor), which would otherwise reach every
// worker. It does not close them in the daemon.
func sealInheritedFDs() error { return sealOnce() }

// hasControllingTTY reports whether the process has a controlling
// terminal: opening /dev/tty fails with ENXIO when it has none.
func hasControllingTTY() bool {
	fd, err := unix.Open("/dev/tty", unix.O_RDONLY|unix.O_NOCTTY|unix.O_CLOEXEC, 0)
	if err != nil {
		return false
	}
	unix.Close(fd)
	return true
}

// killer kills a cell once, for the first reason that fires, and not after
// the worker's exit was observed.
type killer struct {
	mu     sync.Mutex
	cell   Cell
	w      *worker
	log    *slog.Logger
	reason Cause
	done   bool
	// spared: w is a resident init that has started the program in the
	// cell, and outlives the request: a kill ends the cell, and the init
	// only if it has not reported the program's end within grace (its
	// end of what the program left is stuck).
	spared bool
	grace  time.Duration
}

func (k *killer) kill(reason Cause) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done || k.reason != "" {
		return
	}
	k.reason = reason
	if err := k.cell.Kill(); err != nil {
		k.log.Error("kill cell", "cell", k.cell.Path(), "reason", reason, "err", err)
	}
	if k.spared {
		time.AfterFunc(k.grace, func() {
			k.mu.Lock()
			defer k.mu.Unlock()
			if !k.done {
				k.log.Warn("resident cell's init did not report its program's end after the cell was killed: init killed", "cell", k.cell.Path(), "grace", k.grace)
				k.w.kill()
			}
		})
		return
	}
	// Also signal the main process through its pidfd: a cell without a
	// cgroup (test fake) has no cgroup.kill, and it costs nothing.
	k.w.kill()
}

// spare has later kills leave w alone for grace: a resident init, once
// it has started the program in the cell.
func (k *killer) spare(grace time.Duration) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.spared, k.grace = true, grace
}

// finish stops further kills and returns the reason of the one that
// happened, if any.
func (k *killer) finish() Cause {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.done = true
	return k.reason
}
