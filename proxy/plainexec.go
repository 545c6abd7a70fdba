package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/sandbox"
)

// PlainExec runs each worker as a plain child process of cellgate: no
// cgroup, no cell, no memory, CPU or process limit, no per-cell uid, no
// kernel accounting. It takes the same Spec and returns the same Result as
// sandbox.Runner (with a zero Usage that lists every file as Missing, and
// every controller as Unenforced), so the proxy cannot tell them apart.
//
// UNSAFE FOR PRODUCTION. A request that exhausts memory takes the machine's
// OOM killer to whatever it picks; a worker can fork without bound, read the
// daemon's files under the daemon's uid, and leave daemons behind: only its
// process group is killed at the end, and a process that left the group
// (setsid) survives. It exists for unit tests without root and for the
// benchmark baseline "the same server spawning without cells", and must be
// reachable only through an explicit serve setting that says so.
type PlainExec struct {
	// Timeout is the wall-clock deadline for a Spec without one. Default
	// DefaultPlainExecTimeout.
	Timeout time.Duration
	// WaitDelay bounds the wait for the worker's stream copies after it
	// exited (a daemon it left may hold them). Default 1 s.
	WaitDelay time.Duration
}

// DefaultPlainExecTimeout is PlainExec's default deadline, the same as
// sandbox's.
const DefaultPlainExecTimeout = 30 * time.Second

// plainExecMissing and plainExecUnenforced are shared by every Result;
// callers must not modify them.
var (
	plainExecMissing    = []string{"cpu.stat", "memory.peak", "memory.events", "pids.peak", "pids.events", "io.stat"}
	plainExecUnenforced = []string{"cpu", "memory", "pids", "io"}
)

// errPlainExecDeadline is the cause of a run's context when its deadline
// passed.
var errPlainExecDeadline = errors.New("plain exec deadline")

// Run starts spec's program, waits for it and kills its process group. Like
// sandbox.Runner it returns an error wrapping sandbox.ErrSpec or
// sandbox.ErrSpawn (with a zero Result) when nothing ran, and one wrapping
// sandbox.ErrStreams beside a complete Result when copying a stream failed.
func (p *PlainExec) Run(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
	if spec.Path == "" {
		return sandbox.Result{}, fmt.Errorf("plain exec: empty Path: %w", sandbox.ErrSpec)
	}
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = p.Timeout
	}
	if timeout <= 0 {
		timeout = DefaultPlainExecTimeout
	}
	waitDelay := p.WaitDelay
	if waitDelay <= 0 {
		waitDelay = time.Second
	}
	runCtx, cancel := context.WithTimeoutCause(ctx, timeout, errPlainExecDeadline)
	defer cancel()

	cmd := exec.CommandContext(runCtx, spec.Path)
	if len(spec.Args) > 0 {
		cmd.Args = spec.Args
	}
	cmd.Env = spec.Env
	if cmd.Env == nil {
		cmd.Env = []string{} // nil would inherit cellgate's environment
	}
	cmd.Dir = spec.Dir
	if cmd.Dir == "" {
		cmd.Dir = "/"
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	uid := uint32(os.Getuid())
	if u := spec.User; u != nil {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}
		uid = u.UID
	}
	// killedBy is the cause of a kill cellgate made, recorded when made so
	// that a deadline passing after the worker exited does not count.
	var killedBy atomic.Value
	cmd.Cancel = func() error {
		if errors.Is(context.Cause(runCtx), errPlainExecDeadline) {
			killedBy.Store(sandbox.CauseDeadline)
		} else {
			killedBy.Store(sandbox.CauseKilled)
		}
		return killGroup(cmd.Process)
	}
	// The streams are files (or pipes made here), so Wait returns when the
	// worker exits, the group can be killed at once, and only then are
	// the copies waited for.
	var ios plainStreams
	var err error
	if cmd.Stdin, err = ios.reader(spec.Stdin); err == nil {
		if cmd.Stdout, err = ios.writer(spec.Stdout); err == nil {
			cmd.Stderr, err = ios.writer(spec.Stderr)
		}
	}
	if err != nil {
		ios.abort()
		return sandbox.Result{}, fmt.Errorf("plain exec %s: streams: %w: %w", spec.Path, sandbox.ErrSpawn, err)
	}

	if err := cmd.Start(); err != nil {
		ios.abort()
		return sandbox.Result{}, fmt.Errorf("plain exec %s: %w: %w", spec.Path, sandbox.ErrSpawn, err)
	}
	ios.started()
	started := time.Now()
	werr := cmd.Wait()
	_ = killGroup(cmd.Process) // what the worker left in its group
	if err := ios.wait(waitDelay); err != nil && werr == nil {
		werr = err
	}
	res := sandbox.Result{
		Started:    started,
		Wall:       time.Since(started),
		UID:        uid,
		Usage:      cgroup.Usage{Missing: plainExecMissing},
		Unenforced: plainExecUnenforced,
	}
	st := cmd.ProcessState
	ws, _ := st.Sys().(syscall.WaitStatus)
	res.ExitCode = st.ExitCode()
	if ws.Signaled() {
		res.Signal = ws.Signal()
	}
	killed, _ := killedBy.Load().(sandbox.Cause)
	switch {
	case res.ExitCode == 0:
		res.Cause = sandbox.CauseOK
	case killed != "":
		res.Cause = killed
	case res.Signal != 0:
		res.Cause = sandbox.CauseSignal
	default:
		res.Cause = sandbox.CauseExit
	}
	var exitErr *exec.ExitError
	if werr != nil && !errors.As(werr, &exitErr) && killed == "" {
		return res, fmt.Errorf("plain exec %s: %w", spec.Path, werr)
	}
	return res, nil
}

// killGroup kills the process group the worker leads.
func killGroup(p *os.Process) error {
	if p == nil {
		return nil
	}
	err := syscall.Kill(-p.Pid, syscall.SIGKILL)
	if errors.Is(err, syscall.ESRCH) {
		return nil
	}
	return err
}

// plainStreams connects non-file streams to a worker through pipes and
// copying goroutines, so that exec.Cmd.Wait does not wait for them.
type plainStreams struct {
	childEnds []*os.File // closed once the worker started
	ours      []*os.File // closed when the copies end or are given up
	done      chan error
	n         int
}

func (p *plainStreams) pipe() (r, w *os.File, err error) {
	if p.done == nil {
		p.done = make(chan error, 3)
	}
	r, w, err = os.Pipe()
	return r, w, err
}

func (p *plainStreams) reader(in io.Reader) (io.Reader, error) {
	if in == nil {
		return nil, nil
	}
	if f, ok := in.(*os.File); ok {
		return f, nil
	}
	r, w, err := p.pipe()
	if err != nil {
		return nil, err
	}
	p.childEnds, p.ours = append(p.childEnds, r), append(p.ours, w)
	p.n++
	go func() {
		_, err := io.Copy(w, in)
		w.Close()
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, os.ErrClosed) {
			err = nil // the worker did not read it all: not an error
		}
		p.done <- err
	}()
	return r, nil
}

func (p *plainStreams) writer(out io.Writer) (io.Writer, error) {
	if out == nil {
		return nil, nil
	}
	if f, ok := out.(*os.File); ok {
		return f, nil
	}
	r, w, err := p.pipe()
	if err != nil {
		return nil, err
	}
	p.childEnds, p.ours = append(p.childEnds, w), append(p.ours, r)
	p.n++
	go func() {
		_, err := io.Copy(out, r)
		r.Close()
		p.done <- err
	}()
	return w, nil
}

// started closes the worker's ends in the parent.
func (p *plainStreams) started() {
	for _, f := range p.childEnds {
		f.Close()
	}
	p.childEnds = nil
}

// abort closes every end after a failed start.
func (p *plainStreams) abort() {
	p.started()
	for _, f := range p.ours {
		f.Close()
	}
}

// wait waits for the copies, at most grace, then gives them up.
func (p *plainStreams) wait(grace time.Duration) error {
	timer := time.NewTimer(grace)
	defer timer.Stop()
	var errs []error
	for i := 0; i < p.n; i++ {
		select {
		case err := <-p.done:
			errs = append(errs, err)
		case <-timer.C:
			for _, f := range p.ours {
				f.Close()
			}
			return fmt.Errorf("%w: %d stream copies unfinished %s after the worker exited", sandbox.ErrStreams, p.n-i, grace)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("%w: %w", sandbox.ErrStreams, err)
	}
	return nil
}
