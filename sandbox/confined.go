package sandbox

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// The confined start: when a Spec carries a confinement plan, the process
// cloned into the cell (still with CLONE_INTO_CGROUP, plus CLONE_NEW* for the
// plan's namespaces) is not the program but the cell's init (confine.Init,
// cellgate-init), which applies the plan and runs the program as its child.
// The two talk over a socket on the init's fd 3: the plan frame in (the init
// applies it and reports ready), then the exec frame with the program's
// stdin, stdout and stderr (SCM_RIGHTS), then one Report out: how the
// program ended, or why it never ran. The init stays root inside the cell
// (it only waits); the program runs under the cell's credentials. Because
// the request's part comes last, a cell can be prepared before its request
// exists (warm.go).

// initProc is a confined cell's init, started in its cell and sent its
// plan.
type initProc struct {
	cell   Cell
	proc   *os.Process
	w      *worker // the init's worker, once made (worker)
	ctl    int     // the daemon's end of the control socket
	netns  int     // a network namespace made ahead that the init was cloned into, or -1
	tenant string  // the cell's tenant, whose cells may reuse netns

	// A resident init (resident.go) runs request after request, each in a
	// cell of its own: cell is then the init's own group.
	resident    bool
	view        viewStamp // when its view was made, and what it covers (view.go)
	set         *warmSet  // the set it was taken from, while it serves a request
	next        Cell      // the next request's cell, its stub started in it (prepareNext), or nil
	stubs       *[2]int   // the socket pair its stubs wait on (prepareNext), made once, or nil
	hostRootRan bool      // a program ran in it as the host's root: its network namespace is not reused
	started     bool      // it reported the request's program started (confine.ReportStarted)
	returning   bool      // on its way back to its set (putBackLater)
	sockstat    *[2]int   // its network namespace's sockstat files, held open (netQuiet), or nil

	got   []byte          // read from ctl, not yet decoded
	final *confine.Report // the last report, once read
}

// reportTimeout bounds the wait for an init's ready report.
const reportTimeout = 30 * time.Second

// startInit starts an init in cell, a cell of tenant, and sends it plan.
// Its fds 0-2 are /dev/null; the program's come with the exec frame.
func (r *Runner) startInit(cell Cell, plan *confine.Prepared, tenant string) (*initProc, error) {
	if r.launcher == nil {
		return nil, fmt.Errorf("%w: route asks for confinement but the runner has no Launcher (Config.Launcher)", ErrSpec)
	}
	var template *os.File
	view := stampView(plan)
	if r.templates != nil {
		if mt := r.templates.take(plan, view.hidden); mt != nil {
			// The view is a copy of the route's template (templates.go):
			// the init enters it instead of cloning the daemon's.
			defer r.templates.release(mt)
			template, view = mt.f, mt.view
		}
	}
	// A network namespace made ahead (netns.go): the init is cloned into
	// it instead of making its own.
	ns := r.takeNetns(plan, tenant)
	for try := 0; ; try++ {
		fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			if ns >= 0 {
				unix.Close(ns)
			}
			return nil, fmt.Errorf("%w: control socket: %w", ErrSpawn, err)
		}
		child := os.NewFile(uintptr(fds[1]), "cell-init-control")
		attr := r.initAttr(child, plan.CloneFlags())
		if fd := cell.FD(); fd >= 0 {
			attr.Sys.UseCgroupFD = true
			attr.Sys.CgroupFD = fd
		}
		if template != nil {
			attr.Sys.Cloneflags &^= unix.CLONE_NEWNS
		}
		if ns >= 0 {
			attr.Sys.Cloneflags &^= unix.CLONE_NEWNET
		}
		proc, again, err := r.launchInit(cell, attr, ns, template, try == 0)
		child.Close()
		if err != nil {
			unix.Close(fds[0])
			if again {
				// The spawner died with the request; the cell is empty
				// again. Once more, on a control socket that nothing of
				// the first try wrote to.
				continue
			}
			if ns >= 0 {
				// Not started in the namespace made ahead: once more,
				// making its own, as without one. The namespace is
				// closed, whatever refused the start with it; a cause
				// that is not the namespace's fails the second start
				// too, which returns it.
				r.log.Warn("confined cell: its init could not start in a network namespace made ahead; it makes its own", "cell", cell.Path(), "err", err)
				unix.Close(ns)
				ns = -1
				continue
			}
			return nil, fmt.Errorf("%w: init %s in cell %s: %w", ErrSpawn, r.launcher.Name(), cell.Path(), err)
		}
		ip := &initProc{cell: cell, proc: proc, ctl: fds[0], netns: ns, tenant: tenant, view: view}
		frame := plan.Frame()
		if r.residentFor(plan) {
			ip.resident, frame = true, plan.ResidentFrame()
		}
		// A failed send means the init died at once: its report, if any,
		// says why, and the caller learns it as from any init.
		_ = ip.send(frame, nil)
		return ip, nil
	}
}

// launchInit starts an init with attr (its fd 3 the cell's control
// socket), in the network namespace ns made ahead (or -1) and from the
// mount template (or nil): on the first try cloned by the spawner when
// there is one (spawner.go), else forked and executed by the daemon.
// again: the spawner died with the request, and the cell was emptied of
// any init it may have cloned; the caller tries once more, on a new
// control socket, and the daemon starts that init itself (a spawner that
// dies at every request would fail every request otherwise).
func (r *Runner) launchInit(cell Cell, attr *os.ProcAttr, ns int, template *os.File, first bool) (proc *os.Process, again bool, err error) {
	if r.spawner != nil && first {
		var opts uint32
		fds := []int{int(attr.Files[confine.ControlFD].Fd())}
		if attr.Sys.UseCgroupFD {
			opts |= confine.SpawnCgroup
			fds = append(fds, attr.Sys.CgroupFD)
		}
		if ns >= 0 {
			opts |= confine.SpawnNetns
			fds = append(fds, ns)
		}
		if template != nil {
			opts |= confine.SpawnFromTemplate
			fds = append(fds, int(template.Fd()))
		}
		pid, sent, err := r.spawner.spawn(opts, attr.Sys.Cloneflags, fds)
		switch {
		case err == nil:
			proc, err := os.FindProcess(pid)
			return proc, false, err
		case !errors.Is(err, errSpawnerGone):
			return nil, false, err
		case sent:
			// An init may have been cloned that the daemon does not
			// know: it is ended and reaped. A cell that had to be
			// killed takes no further init: the request fails.
			if killed, oerr := r.endOrphans(cell); killed || oerr != nil {
				return nil, false, err
			}
			return nil, true, err
		}
		// Nothing was sent: the daemon starts the init itself.
	}
	args := []string{confine.InitArg0}
	if template != nil {
		args = append(args, confine.FromTemplateArg)
		attr.Files = append(attr.Files, template) // fd 4 = confine.TemplateFD
	}
	path, attr := r.launcher.Attach(attr)
	if ns >= 0 {
		r.spawns.do(func() { proc, err = r.netns.start(ns, path, args, attr) })
	} else {
		r.spawns.do(func() { proc, err = startNoNewPrivs(path, args, attr) })
	}
	return proc, false, r.launchError(err)
}

// launchError is err, a failed start of an init from the launcher, with
// the launcher's Check added when its fd is not the launcher any more.
func (r *Runner) launchError(err error) error {
	if err == nil {
		return nil
	}
	if lerr := r.launcher.Check(); lerr != nil {
		return fmt.Errorf("%w (%w)", err, lerr)
	}
	return err
}

// initAttr is how an init is started: /dev/null on fds 0-2, ctl on fd 3
// (confine.ControlFD), in a process group (or, under a terminal, a
// session) of its own, killed with the daemon, cloned with flags.
func (r *Runner) initAttr(ctl *os.File, flags uintptr) *os.ProcAttr {
	return &os.ProcAttr{
		Dir: "/",
		// One P: every thread of a Go init counts against the cell's
		// pids.max.
		Env:   []string{"GOMAXPROCS=1"},
		Files: []*os.File{r.devNull, r.devNull, r.devNull, ctl},
		Sys: &syscall.SysProcAttr{
			Setsid:     r.hasTTY,
			Setpgid:    !r.hasTTY,
			Pdeathsig:  syscall.SIGKILL,
			Cloneflags: flags,
		},
	}
}

// takeNetns returns a network namespace made ahead for a plan that wants
// one of its own, or -1.
func (r *Runner) takeNetns(plan *confine.Prepared, tenant string) int {
	if r.netns == nil || plan.CloneFlags()&unix.CLONE_NEWNET == 0 {
		return -1
	}
	return r.netns.take(tenant)
}

// endNetns ends the cell's use of the network namespace made ahead, if it
// has one, once no process of the cell is left (netns.go); reusable: the
// cell emptied and its program did not run as the host's root.
func (ip *initProc) endNetns(r *Runner, reusable bool) {
	if ip.netns < 0 {
		return
	}
	r.netns.give(ip.tenant, ip.netns, reusable)
	ip.netns = -1
}

// send writes a frame to the init, the fds attached to its first bytes.
func (ip *initProc) send(frame []byte, fds []int) error {
	return sendFrame(ip.ctl, -1, frame, fds, "the cell's init")
}

// sendFrame writes a frame on the socket fd, to whom, the fds attached to
// its first bytes. With watch < 0 a send waits for room as long as it
// takes (whom's end closing ends it); with a watch it never waits in the
// send: while fd has no room it waits for room or for watch to become
// readable or hang up, which fails the send with errStubEnded
// (sendToStub).
func sendFrame(fd, watch int, frame []byte, fds []int, whom string) error {
	var oob []byte
	if len(fds) > 0 {
		oob = unix.UnixRights(fds...)
	}
	flags := unix.MSG_NOSIGNAL
	if watch >= 0 {
		flags |= unix.MSG_DONTWAIT
	}
	for len(frame) > 0 {
		n, err := unix.SendmsgN(fd, frame, oob, nil, flags)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN) && watch >= 0:
			pfd := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLOUT}, {Fd: int32(watch), Events: unix.POLLIN | unix.POLLRDHUP}}
			if _, err := unix.Poll(pfd, -1); err != nil && !errors.Is(err, unix.EINTR) {
				return fmt.Errorf("send to %s: poll: %w", whom, err)
			}
			if pfd[1].Revents != 0 {
				return errStubEnded
			}
			continue
		case err != nil:
			return fmt.Errorf("send to %s: %w", whom, err)
		}
		frame, oob = frame[n:], nil
	}
	return nil
}

// worker is the init's worker (a pidfd of its own), made once.
func (ip *initProc) worker() (*worker, error) {
	if ip.w == nil {
		w, err := newProcWorker(ip.proc)
		if err != nil {
			return nil, err
		}
		ip.w = w
	}
	return ip.w, nil
}

// exec sends the request's part: argv, environment, credentials and the
// program's stdin, stdout and stderr, and group, when not nil, the cell a
// resident init clones the program into (nil: it was prepared, or the
// init is in the request's cell). It goes to the init, or, when prepared, to
// the process a resident init started ahead in the request's prepared
// cell, on the init's stub socket (prepareNext).
func (ip *initProc) exec(spec *Spec, cred *syscall.Credential, stdio [3]*os.File, group Cell, prepared bool) error {
	frame, err := confine.EncodeExec(&confine.Exec{
		Path: spec.Path, Args: spec.Args, Env: spec.Env, Dir: spec.Dir,
		Credential: confine.Credential{UID: cred.Uid, GID: cred.Gid, Groups: cred.Groups},
	})
	if err != nil {
		return err
	}
	// Fd, as os/exec does for a child's files: a file Go made
	// non-blocking (os.Pipe's ends) becomes blocking, which the program
	// expects of its standard streams, and the caller's I/O on it, if any,
	// blocks from now on; a descriptor the caller set O_NONBLOCK itself
	// (os.NewFile) is passed on as it is, as os/exec does too. workerPipe's
	// ends are blocking already.
	fds := make([]int, 3, 4)
	for i, f := range stdio {
		fds[i] = int(f.Fd())
	}
	if group != nil {
		if group.FD() < 0 {
			return fmt.Errorf("cell %s has no group to clone the program into", group.Path())
		}
		fds = append(fds, group.FD())
	}
	if prepared {
		return sendToStub(ip.stubs[0], ip.ctl, frame, fds)
	}
	return ip.send(frame, fds)
}

// errStubEnded marks an exec frame not sent whole to a resident init's
// stub because the stub ended first: the init reported its end (or the
// init ended) while the send waited for room. It wraps EPIPE, as the
// send to a stub's own socket closed at its end did, so that refused
// reports it: the stub took no frame, and nothing of the request ran.
var errStubEnded = fmt.Errorf("the process started ahead in the request's cell ended before it took the request: %w", unix.EPIPE)

// sendToStub sends the exec frame on stub, the daemon's end of a resident
// init's stub socket pair, whose other end the daemon holds too
// (prepareNext): a stub's end gives no hang-up, so a frame larger than
// the socket's room would wait forever for a stub that died. It waits
// for room only while the init, on ctl, has not reported the stub's end
// (it reaps the stub at once, and sends nothing else before that) and
// has not ended: a deadline or a client gone kills the stub's group, and
// the send then fails with errStubEnded.
func sendToStub(stub, ctl int, frame []byte, fds []int) error {
	return sendFrame(stub, ctl, frame, fds, "the process started ahead in the request's cell")
}

// errInitGone marks the failed hand-off of a warm cell whose init was gone
// before it had the whole exec frame (killed, or OOM-killed with its
// tenant, while it waited in the pool): the init starts the program only
// once it has read the whole frame, so nothing of the request ran, and
// runWarm runs it on another cell.
var errInitGone = errors.New("the warm cell's init was gone before its exec frame")

// refused reports whether the send of an exec frame failed because the
// init's end of the control socket was closed (EPIPE; ECONNRESET had it
// closed with data unread): the kernel took not all of the frame, so the
// init never read all of it. A frame the kernel took whole is not known to
// be unread, however soon the init died.
func refused(err error) bool {
	return errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET)
}

// gone reports, without blocking, whether the init has exited (its end
// of the control socket is closed) or sent a report while it waited for
// a request (a warm init sends none between its ready report and the
// exec frame; a resident one none before the end of the process it
// started ahead for the next request, which it reaps and reports at
// once).
func (ip *initProc) gone() bool {
	fds := []unix.PollFd{{Fd: int32(ip.ctl), Events: unix.POLLIN | unix.POLLRDHUP}}
	for {
		n, err := unix.Poll(fds, 0)
		if errors.Is(err, unix.EINTR) {
			continue
		}
		return err == nil && n > 0
	}
}

// waitReady waits for the init's ready report; any other report, or none,
// is an error saying why the cell cannot be used.
func (ip *initProc) waitReady(spec *Spec) error {
	rep, err := ip.firstReport()
	if err != nil {
		return fmt.Errorf("%w: cell %s: %w", ErrSpawn, ip.cell.Path(), err)
	}
	if rep.Kind == confine.ReportReady {
		return nil
	}
	return notRun(rep, spec, ip.cell)
}

// firstReport reads the init's first report (bounded by reportTimeout).
func (ip *initProc) firstReport() (confine.Report, error) {
	tv := unix.NsecToTimeval(reportTimeout.Nanoseconds())
	unix.SetsockoptTimeval(ip.ctl, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	var hdr [16]byte
	if err := confine.ReadFull(ip.ctl, hdr[:]); err != nil {
		return confine.Report{}, fmt.Errorf("no ready report from its init: %w", err)
	}
	if rep, ok := confine.DecodeReport(hdr[:]); ok && rep.Kind == confine.ReportReady {
		return rep, nil
	}
	msg := make([]byte, int(hdr[2])|int(hdr[3])<<8)
	confine.ReadFull(ip.ctl, msg)
	rep, ok := confine.DecodeReport(append(hdr[:], msg...))
	if !ok {
		return confine.Report{}, errors.New("its init sent no valid report")
	}
	return rep, nil
}

// awaitEnd waits, on the reaper's thread, for the init's last report:
// the program has ended and what it left is gone (confine's finish), or
// it never ran. false: the init ended without one (the cell was killed).
// started, if set, is called once when a resident init reports the
// program started.
func (ip *initProc) awaitEnd(r *reaper, started func()) (confine.Report, bool) {
	for {
		rep, ok, more := ip.readReports()
		if ip.started && started != nil {
			started()
			started = nil
		}
		if !more {
			return rep, ok
		}
		if err := r.readable(ip.ctl); err != nil {
			return confine.Report{}, false
		}
	}
}

// report is the init's last report once the init has exited (its end of
// the socket is closed, so the read cannot block).
func (ip *initProc) report() (confine.Report, bool) {
	rep, ok, _ := ip.readReports()
	return rep, ok
}

// readReports reads what the init has sent so far without blocking,
// skipping ready reports and noting a started one, and returns its last report if it came. more:
// none yet, and its end of the socket is still open.
func (ip *initProc) readReports() (rep confine.Report, ok, more bool) {
	if ip.final != nil {
		return *ip.final, true, false
	}
	var buf [2 * confine.MaxReport]byte
	ended := false
	for !ended && len(ip.got) <= len(buf) {
		n, _, err := unix.Recvfrom(ip.ctl, buf[:], unix.MSG_DONTWAIT)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case errors.Is(err, unix.EAGAIN):
			more = true
		case err != nil || n == 0:
			ended = true
		default:
			ip.got = append(ip.got, buf[:n]...)
			continue
		}
		break
	}
	for {
		r, ok := confine.DecodeReport(ip.got)
		if !ok {
			break
		}
		ip.got = ip.got[16+len(r.Msg):]
		if r.Kind == confine.ReportStarted {
			ip.started = true
			continue
		}
		if r.Kind != confine.ReportReady {
			ip.final = &r
			return r, true, false
		}
	}
	if len(ip.got) > len(buf) { // more than any report: not one of the init's
		return confine.Report{}, false, false
	}
	return confine.Report{}, false, more && !ended
}

func (ip *initProc) closeCtl() { unix.Close(ip.ctl) }

// reportError is the failure an init reported: its message, which names
// the errno already, and the errno itself for errors.Is.
type reportError struct {
	msg   string
	errno syscall.Errno
}

func (e *reportError) Error() string { return e.msg }

func (e *reportError) Unwrap() error {
	if e.errno == 0 {
		return nil
	}
	return e.errno
}

// notRun turns a report that the program never ran into Run's error.
func notRun(rep confine.Report, spec *Spec, cell Cell) error {
	var cause error = &reportError{msg: rep.Msg, errno: syscall.Errno(rep.Errno)}
	if rep.Kind == confine.ReportSpawn {
		if rep.Errno != 0 {
			cause = &os.PathError{Op: "fork/exec", Path: spec.Path, Err: syscall.Errno(rep.Errno)}
		}
		return fmt.Errorf("%w: in cell %s: %w", ErrSpawn, cell.Path(), cause)
	}
	return fmt.Errorf("%w: confine cell %s (run cellgate doctor): %w", ErrSpawn, cell.Path(), cause)
}
