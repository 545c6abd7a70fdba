package sandbox

import (
	"errors"
	"fmt"
	"os"
	"syscall"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// The confined start: when a Spec carries a confinement plan, the process
// cloned into the cell (still with CLONE_INTO_CGROUP, plus CLONE_NEW* for the
// plan's namespaces) is not the program but the cellgate binary as the
// cell's init (confine.Init), which applies the plan and runs the program as
// its child. The two talk over a socket on the init's fd 3: the launch
// message in (plan, argv, environment, credentials), one Report out (how the
// program ended, or why it never ran). The init stays root inside the cell
// (it only waits); the program runs under the cell's credentials.

// control is the daemon's end of an init's fd 3.
type control struct{ fd int }

// prepareConfined turns attr (built for the program) into the init's: the
// launcher as the executable, no credentials (the init must be root to
// mount), the namespaces, and the control socket as fd 3. It returns the
// argv and path to start and the daemon's end of the socket.
func (r *Runner) prepareConfined(spec *Spec, attr *os.ProcAttr) (string, []string, *control, *os.File, error) {
	if r.launcher == nil {
		return "", nil, nil, nil, fmt.Errorf("%w: route asks for confinement but the runner has no Launcher (Config.Launcher)", ErrSpec)
	}
	if attr.Sys.Credential == nil {
		return "", nil, nil, nil, fmt.Errorf("%w: a confined cell needs credentials to drop to (not AsSelf)", ErrSpec)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return "", nil, nil, nil, fmt.Errorf("%w: control socket: %w", ErrSpawn, err)
	}
	child := os.NewFile(uintptr(fds[1]), "cell-init-control")
	attr.Files = append(attr.Files, child) // fd 3 = confine.ControlFD
	// One P: every thread of the init counts against the cell's pids.max.
	attr.Env = []string{"GOMAXPROCS=1"}
	attr.Dir = "/"
	attr.Sys.Credential = nil
	attr.Sys.Cloneflags = spec.Confine.CloneFlags()
	return r.launcher.Path(), []string{confine.InitArg0}, &control{fd: fds[0]}, child, nil
}

// launch sends the init its launch message and ends the stream.
func (c *control) launch(spec *Spec, cred *syscall.Credential) error {
	msg, err := spec.Confine.Launch(&confine.Exec{
		Path: spec.Path, Args: spec.Args, Env: spec.Env, Dir: spec.Dir,
		Credential: confine.Credential{UID: cred.Uid, GID: cred.Gid, Groups: cred.Groups},
	})
	if err != nil {
		return err
	}
	for len(msg) > 0 {
		n, err := unix.SendmsgN(c.fd, msg, nil, nil, unix.MSG_NOSIGNAL)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil {
			return fmt.Errorf("send the launch message: %w", err)
		}
		msg = msg[n:]
	}
	if err := unix.Shutdown(c.fd, unix.SHUT_WR); err != nil {
		return fmt.Errorf("end the launch message: %w", err)
	}
	return nil
}

// report reads the init's Report once the init has exited (its end of the
// socket is closed, so the read cannot block).
func (c *control) report() (confine.Report, bool) {
	buf := make([]byte, confine.MaxReport)
	n := 0
	for n < len(buf) {
		m, _, err := unix.Recvfrom(c.fd, buf[n:], unix.MSG_DONTWAIT)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		if err != nil || m == 0 {
			break
		}
		n += m
	}
	return confine.DecodeReport(buf[:n])
}

func (c *control) close() { unix.Close(c.fd) }

// notRun turns a report that the program never ran into Run's error.
func notRun(rep confine.Report, spec *Spec, cell Cell) error {
	var cause error = errors.New(rep.Msg)
	if rep.Errno != 0 {
		cause = fmt.Errorf("%s: %w", rep.Msg, syscall.Errno(rep.Errno))
	}
	if rep.Kind == confine.ReportSpawn {
		if rep.Errno != 0 {
			cause = &os.PathError{Op: "fork/exec", Path: spec.Path, Err: syscall.Errno(rep.Errno)}
		}
		return fmt.Errorf("%w: in cell %s: %w", ErrSpawn, cell.Path(), cause)
	}
	return fmt.Errorf("%w: confine cell %s (run cellgate doctor): %w", ErrSpawn, cell.Path(), cause)
}
