package sandbox

import (
	"sync"
	"time"
)

// Teardown off the request's path. Once a confined cell's init has
// reported (the program ended, and in a PID namespace of its own every
// process it left was killed and reaped; the cell's tmpfs files removed),
// the Result is known, but the init's exit is not cheap: its PID, mount,
// IPC and network namespaces are torn down with it (the mount namespace's
// unmounts wait for an RCU grace period) and only then does the cell
// empty. The Runner answers at the report and leaves the rest here: wait
// for the init's exit (reaped through its pidfd), empty the cell (killed
// if need be, as after any run), return the uid only once the cell is
// empty, release the cell.
//
// A teardown in the background still holds what the cell holds until it
// ends: a uid, a cgroup, the init and the namespaces' kernel memory, all
// charged to the cell's tenant. So they are bounded: at most
// Config.Teardowns run at once; a run that finds them all busy tears its
// cell down itself before returning, as without this, which slows
// requests down to the rate at which cells can be torn down instead of
// letting teardowns pile up. Runner.Close waits for them.

// DefaultTeardowns is Config.Teardowns when zero.
const DefaultTeardowns = 32

// teardowns bounds and counts the teardowns in the background.
type teardowns struct {
	slots chan struct{}
	wg    sync.WaitGroup
}

func newTeardowns(n int) *teardowns {
	return &teardowns{slots: make(chan struct{}, n)}
}

// run runs f in the background when a slot is free, and otherwise now,
// before returning.
func (t *teardowns) run(f func()) {
	select {
	case t.slots <- struct{}{}:
		t.wg.Go(func() {
			defer func() { <-t.slots }()
			f()
		})
	default:
		f()
	}
}

// pending is how many teardowns run in the background.
func (t *teardowns) pending() int { return len(t.slots) }

// wait returns once every background teardown has ended.
func (t *teardowns) wait() { t.wg.Wait() }

// endCell tears down a confined cell whose init has reported: see above.
// done is called at the end, before the cell's release, with whether the
// cell emptied (only then may its uid return).
func (r *Runner) endCell(init *worker, cell Cell, done func(emptied bool)) {
	r.teardowns.run(func() {
		// The init exits by itself after its report; if it does not
		// within EmptyWait, the cell is killed.
		k := &killer{cell: cell, w: init, log: r.log}
		timer := time.AfterFunc(r.emptyWait, func() { k.kill(CauseKilled) })
		_, err := r.reaper.wait(init)
		timer.Stop()
		k.finish()
		if err != nil && init.proc != nil {
			r.log.Error("wait for a cell's init on its pidfd", "cell", cell.Path(), "err", err)
			cell.Kill()
			init.kill()
			waitBlocking(init.proc)
		}
		init.release()
		done(r.empty(cell) == nil)
		r.cells.Release(cell)
	})
}

// TeardownsPending returns how many confined cells are being torn down
// in the background (for metrics and tests).
func (r *Runner) TeardownsPending() int { return r.teardowns.pending() }
