package sandbox

import (
	"context"
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// A driver starts a run's main process inside its cell. There are two:
// cgi (cgi.go) executes the route's program; fork (fork.go) has the
// route's warm preloader clone one. What comes before the start (the cell,
// the streams) and after it (the pidfd wait, the deadline, cgroup.kill,
// the Result) is the Runner's, the same for both: cellgate is the parent
// of every worker either way, so it reaps each through its pidfd.
type driver interface {
	// check validates spec for this driver and fills its defaults.
	check(spec *Spec) error
	// identity gives the run its uid; release returns it once the cell is
	// empty.
	identity(spec *Spec) (identity, error)
	// start starts the worker in cell with files as its fds 0, 1 and 2.
	// ctx bounds waiting (for a preloader being restarted).
	start(ctx context.Context, cell Cell, spec *Spec, files [3]*os.File, id identity) (*worker, error)
}

// identity is whom a worker runs as.
type identity struct {
	uid     uint32              // the uid as the host sees it (Result.UID)
	cred    *syscall.Credential // cgi: the credentials to start with; nil = the daemon's
	nsUID   int64               // fork: the uid in the preloader's user namespace; -1 = the preloader's own
	release func()              // gives the uid back; nil when there is nothing to give back
}

// worker is a started main process. pidfd is owned by the worker (-1 only
// for a cgi worker on a kernel without pidfds, then waited through proc).
type worker struct {
	pid   int
	pidfd int
	proc  *os.Process // cgi only
	// handOff: a fork worker's hand-off (Result.Spawn and Clone).
	handOff, clone time.Duration
}

// newProcWorker makes a worker of a process the daemon started, with a
// pidfd of its own (a dup of the process's).
func newProcWorker(p *os.Process) (*worker, error) {
	w := &worker{pid: p.Pid, pidfd: -1, proc: p}
	var dupErr error
	err := p.WithHandle(func(pidfd uintptr) {
		w.pidfd, dupErr = unix.FcntlInt(pidfd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if errors.Is(err, os.ErrNoHandle) {
		return w, nil
	}
	if err == nil {
		err = dupErr
	}
	if err != nil {
		return nil, fmt.Errorf("pidfd of pid %d: %w", p.Pid, err)
	}
	return w, nil
}

// kill sends SIGKILL to the worker's main process. Through the pidfd it
// can never reach another process that reused the pid.
func (w *worker) kill() {
	if w.pidfd >= 0 {
		unix.PidfdSendSignal(w.pidfd, unix.SIGKILL, nil, 0)
		return
	}
	w.proc.Kill()
}

// release frees the pidfd and the process handle; the worker has been
// reaped.
func (w *worker) release() {
	if w.pidfd >= 0 {
		unix.Close(w.pidfd)
		w.pidfd = -1
	}
	if w.proc != nil {
		w.proc.Release()
	}
}
