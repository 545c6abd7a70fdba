// Package sandbox owns a cell's lifecycle: taking a cgroup cell, starting the
// worker directly inside it (clone3 CLONE_INTO_CGROUP) under its own
// credentials, the deadline, waiting on the worker through its pidfd,
// killing the whole cell, and the Result of a run. Drivers live here, one
// per file, behind one interface (driver.go): cgi (cgi.go) executes a
// program per request, for a confined cell (Spec.Confine) through its init
// started in new namespaces (confined.go; cells set up ahead in warm.go);
// fork (fork.go) has a route's warm preloader (preloader.go, the protocol in
// forkproto.go, the Python program in preload/) clone each request's process
// straight into its cell. It changes kernel state only through
// processes; cgroupfs is reached only through package cgroup. It may be
// imported by proxy and cmd/cellgate.
package sandbox

import (
	"io"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
)

// Spec describes one run of a worker in a fresh cell.
type Spec struct {
	// Path is the program to execute; Args its argv (Args[0] included).
	Path string
	Args []string
	// Env is exactly the worker's environment ("KEY=value"); nothing is
	// inherited from the daemon.
	Env []string
	// Dir is the working directory ("" = "/").
	Dir string

	// Stdin, Stdout and Stderr are the worker's standard streams; nil is
	// /dev/null. An *os.File is passed to the worker directly.
	Stdin  io.Reader
	Stdout io.Writer
	Stderr io.Writer

	// Profile is the cell's tenant and limits, converted once (per route, at
	// start-up) with cgroup.NewProfile; nil means the Runner's default
	// profile. A resident request of a cgroup.Profile.Reused profile
	// hands its group, once empty, to a later request of the profile
	// instead of its removal (groups: reused; cgroup.Pool.Recycle): its
	// accounting then has no pids.peak, and no memory.peak before Linux
	// 6.12 (cgroup.Cell.Usage).
	Profile *cgroup.Profile
	// User runs the worker under fixed credentials; nil gives the cell a uid
	// of its own from the runner's range (and the shared gid).
	User *Credential
	// GID is the group of a cell's own uid (a tenant's gid); 0 is the
	// Runner's. Ignored with User.
	GID uint32
	// Confine confines the cell (namespaces, filesystem view, seccomp,
	// rlimits; see package confine), built once per route; nil runs the
	// program with the cgroup, uid and no_new_privs only. It needs the
	// Runner's Launcher.
	Confine *confine.Prepared
	// Timeout is the wall-clock deadline from the start of the worker;
	// 0 means the runner's default.
	Timeout time.Duration
	// LateUsage lets a confined cell whose program exited 0 be answered
	// before its accounting is read: Run returns at the init's report with
	// Usage empty and Result.Late true, and the accounting is read at the
	// end of the cell's teardown (its init's exit included), off the
	// request's path; Result.Account waits for it. Nothing else about the
	// Result depends on it: a status of 0 is CauseOK whatever the kernel's
	// counters say. Without it, or for any other end, Run reads the
	// accounting before returning.
	LateUsage bool
	// Started, when set, is called once the worker runs, with its cell's
	// cgroup directory (for live readings such as the status page's; the
	// directory is gone once Run returns, or serves a later request of
	// a Reused profile) and the CPU the group had used before
	// the request (cpu.stat usage_usec: 0 for a group of its own, what
	// earlier requests used for a reused one), which live readings
	// subtract. Runners without cells do not call it.
	Started func(cellPath string, cpuBefore uint64)

	// Preloader, when set, runs the request with the fork driver: a clone
	// of the route's warm preloader serves it, Path, Args, Dir and User
	// are not used, and the uid comes from the preloader's range. nil runs
	// Path with the cgi driver.
	Preloader *Preloader
}

// Credential is a fixed uid/gid for a worker.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

// Cause says why a cell ended.
type Cause string

const (
	CauseOK     Cause = "ok"     // exit status 0
	CauseExit   Cause = "exit"   // non-zero exit status
	CauseSignal Cause = "signal" // killed by a signal it did not get from cellgate (a crash)
	CauseOOM    Cause = "oom"    // the kernel OOM-killed the cell at its own memory limit (from memory.events)
	// CauseOOMBudget: the kernel OOM-killed the cell at an ancestor's limit
	// (its tenant's or the global budget), the cell under its own: its
	// memory.events counts an oom_kill but no oom of its own.
	CauseOOMBudget Cause = "oom_budget"
	CauseDeadline  Cause = "deadline" // the wall-clock deadline passed; cellgate killed the cell
	CausePids      Cause = "pids"     // pids.max refused a fork (pids.events) and the worker failed
	CauseKilled    Cause = "killed"   // cellgate killed the cell for another reason (context cancelled, shutdown)
)

// Result is what one run produced.
type Result struct {
	Cause    Cause
	ExitCode int            // exit status, or -1 when ended by a signal
	Signal   syscall.Signal // the signal that ended the worker, or 0
	Usage    cgroup.Usage   // read from the cell's cgroup after it emptied
	Started  time.Time      // when the worker was started
	Wall     time.Duration  // from start to the cell being empty
	UID      uint32         // the uid the worker ran as
	// Unenforced lists the controllers whose limits were not enforced for
	// this cell (operator's --unenforced); empty in normal operation.
	Unenforced []string
	// Spawn is a fork request's hand-off: from sending the spawn to the
	// preloader to holding the verified child (before Started). Clone is
	// the preloader's own part of it (what it reported). Both 0 for cgi.
	Spawn, Clone time.Duration

	// late is the accounting still to be read (Spec.LateUsage), nil once
	// Usage holds it.
	late *lateUsage
}

// Late reports whether the Result was returned before its cell's
// accounting was read (Spec.LateUsage): Usage is empty until Account.
func (res *Result) Late() bool { return res.late != nil }

// Account waits until a Late Result's accounting has been read and puts it
// in Usage; a Result that is not Late returns nil at once. The wait is the
// rest of the cell's teardown, bounded by the Runner's EmptyWait (a cell
// that does not empty by then is killed). The error is a failed read
// (Usage then holds what was read). It changes res: call it from one
// goroutine.
func (res *Result) Account() error {
	l := res.late
	if l == nil {
		return nil
	}
	<-l.done
	res.Usage, res.late = l.usage, nil
	return l.err
}

// WithLateUsage returns res as a Late Result whose accounting read
// returns, for a Runner other than this package's (a wrapper, a test's
// fake) that reads it after answering; read runs once, in a goroutine of
// its own, and Account waits for it.
func WithLateUsage(res Result, read func() (cgroup.Usage, error)) Result {
	l := newLateUsage()
	go l.fill(read)
	res.Usage, res.late = cgroup.Usage{}, l
	return res
}

// lateUsage is a cell's accounting read at the end of its teardown.
type lateUsage struct {
	done  chan struct{} // closed once usage and err are set
	usage cgroup.Usage
	err   error
}

func newLateUsage() *lateUsage { return &lateUsage{done: make(chan struct{})} }

// fill sets the accounting from read, once (for a cell, before its
// release), and lets Account return.
func (l *lateUsage) fill(read func() (cgroup.Usage, error)) {
	l.usage, l.err = read()
	close(l.done)
}
