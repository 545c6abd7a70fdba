package confine

import (
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime"
	"syscall"

	"golang.org/x/sys/unix"
)

// InitArg0 is argv[0] of a cell's init: cellgate's main runs Init instead
// of a subcommand when it is started under this name.
const InitArg0 = "cellgate-init"

// ControlFD is the init's fd 3, a socket: the launch message comes in
// (until the sender shuts its side down), the Report goes out.
const ControlFD = 3

// Exit statuses of the init when nothing ran (the Report says more).
const (
	exitSetup = 125
	exitSpawn = 127
)

// forwarded are the signals the init passes on to its program; the end of
// the cell (cgroup.kill, or the init's exit, which takes the whole PID
// namespace) needs none.
var forwarded = []os.Signal{syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP, syscall.SIGQUIT, syscall.SIGUSR1, syscall.SIGUSR2}

// unforwarded are the signals the Go runtime would end the init with
// (a stack dump, or a panic for a fault's signal sent by kill) that it
// neither forwards nor acts on (Init).
var unforwarded = []os.Signal{syscall.SIGILL, syscall.SIGTRAP, syscall.SIGABRT, syscall.SIGSTKFLT, syscall.SIGSYS,
	syscall.SIGSEGV, syscall.SIGBUS, syscall.SIGFPE}

// Init is the cell's init. It reads the plan frame on ControlFD, applies
// the plan (Apply) and reports ReportReady; then it reads the exec frame
// with the program's stdin, stdout and stderr (SCM_RIGHTS), starts the
// program as its child under the frame's credentials, forwards signals,
// reaps every process that is reparented to it, and when the program ends
// ends what it left (finish), writes a Report and exits with the program's
// status (128+N for signal N; the Report carries the signal itself). As
// PID 1 of the cell's PID namespace its exit ends every other process of
// the cell. The init's own fds 0-2 are /dev/null. It returns the status to
// exit with.
func Init() int {
	plan, err := applyPlanFrame("the cell")
	if err != nil {
		return fail(ReportSetup, exitSetup, err)
	}
	// What does not depend on the request is done before waiting for it:
	// the thread the program is forked from, with no_new_privs set on it.
	// The signals to forward are ignored while the cell waits for its
	// request (a warm cell): sent then, they are for no program, not the
	// next one (cellgate-init drops them likewise).
	sigs := make(chan os.Signal, 8)
	signal.Ignore(forwarded...)
	// The Go runtime handles every signal, so that, unlike cellgate-init
	// (PID 1 with no handler: the kernel drops what a process of the cell
	// sends it), a SIGSYS, SIGABRT, SIGSEGV and the like sent by a program
	// that may signal it (one run as the host's root) would end the init
	// with a stack dump and the program with it, reported as its exit 2.
	// Taken into a channel never read, they are dropped as there.
	signal.Notify(make(chan os.Signal, 1), unforwarded...)
	unlock, err := lockForFork()
	if err != nil {
		return fail(ReportSetup, exitSetup, err)
	}
	report(Report{Kind: ReportReady})
	body, fds, err := readFrame(ControlFD, 3)
	if errors.Is(err, io.EOF) {
		return 0 // a prepared cell that was never used
	}
	if err != nil {
		return fail(ReportSpawn, exitSpawn, fmt.Errorf("read the exec frame on fd %d: %w", ControlFD, err))
	}
	ex, err := DecodeExec(body)
	if err != nil {
		return fail(ReportSpawn, exitSpawn, err)
	}
	// On the thread that forks the program (lockForFork's), which is
	// this process's for good: it starts no other.
	if plan.CutsRootCaps(ex.UID) {
		if err := rootBounding(); err != nil {
			return fail(ReportSpawn, exitSpawn, err)
		}
	}
	// From here on what is sent is the program's: taken, and forwarded
	// once it runs.
	signal.Notify(sigs, forwarded...)
	pid, err := start(ex, fds)
	unlock()
	if err != nil {
		return fail(ReportSpawn, exitSpawn, err)
	}
	go func() {
		for s := range sigs {
			unix.Kill(pid, s.(syscall.Signal))
		}
	}()
	r := reap(pid)
	finish(plan)
	report(r)
	if r.Signal != 0 {
		return 128 + int(r.Signal)
	}
	return int(r.Code)
}

// ExecArg is argv[1] of an init started in exec mode (InitExec).
const ExecArg = "exec"

// TemplateArg is argv[1] of an init that builds a mount template, and
// FromTemplateArg that of a cell's init that copies one (its fd 4,
// TemplateFD). Only cellgate-init has these modes; the Go init refuses
// them (Unsupported), and the sandbox then builds each cell's view.
const (
	TemplateArg     = "template"
	FromTemplateArg = "from-template"
	TemplateFD      = 4
)

// SpawnerArg is argv[1] of cellgate-init as a daemon's spawner of cell
// inits (spawn.go); the Go init has no such mode.
const SpawnerArg = "spawner"

// Unsupported reports, as a setup failure on fd 3, that this init has no
// mode mode.
func Unsupported(mode string) int {
	return fail(ReportSetup, exitSetup, fmt.Errorf("the Go init has no %s mode (install %s beside cellgate)", mode, InitArg0))
}

// InitMain runs the Go init of a process started as InitArg0 with args
// (os.Args[1:]): Init without arguments, InitExec in exec mode, and
// Unsupported for cellgate-init's other modes. It returns the exit status.
func InitMain(args []string) int {
	nameSelf()
	closeLauncher()
	switch {
	case len(args) == 0:
		return Init()
	case len(args) == 1 && args[0] == ExecArg:
		return InitExec() // a fork route's preloader
	default:
		return Unsupported(args[0])
	}
}

// InitExec is the init's exec mode, for a long-lived process that must
// stay its starter's direct child (a fork route's preloader, whose
// children cellgate reaps through CLONE_PARENT). It reads the plan frame
// on ControlFD, applies it (Apply) and reports ReportReady like Init; then
// it reads the exec frame with one descriptor, makes that descriptor its
// fd 3 in place of the control socket and executes the frame's program in
// its own place under its own credentials (the frame's are not used):
// no child, no reaping, the program is the process cellgate started. A
// program that cannot be executed is reported on the control socket
// (ReportSpawn) before the init exits; once the exec succeeded the
// control socket is closed, which the starter reads as the end of the
// stream. It returns the status to exit with when the exec failed.
func InitExec() int {
	// One thread from the plan to the execve: what Apply sets of a
	// thread's (the bounding set without CAP_SYS_RESOURCE) is the
	// executing thread's only if they are the same.
	runtime.LockOSThread()
	if _, err := applyPlanFrame("the preloader"); err != nil {
		return fail(ReportSetup, exitSetup, err)
	}
	report(Report{Kind: ReportReady})
	body, fds, err := readFrame(ControlFD, 1)
	if errors.Is(err, io.EOF) {
		return 0
	}
	if err != nil {
		return fail(ReportSpawn, exitSpawn, fmt.Errorf("read the exec frame on fd %d: %w", ControlFD, err))
	}
	ex, err := DecodeExec(body)
	if err != nil {
		return fail(ReportSpawn, exitSpawn, err)
	}
	// The control socket moves out of the way (close-on-exec) so that a
	// failed exec can still be reported on it.
	ctl, err := unix.FcntlInt(ControlFD, unix.F_DUPFD_CLOEXEC, ControlFD+1)
	if err != nil {
		return fail(ReportSpawn, exitSpawn, fmt.Errorf("move the control socket: %w", err))
	}
	if err := unix.Dup3(fds[0], ControlFD, 0); err != nil {
		return failOn(ctl, ReportSpawn, exitSpawn, fmt.Errorf("make the program's socket fd %d: %w", ControlFD, err))
	}
	unix.Close(fds[0])
	// The thread that executes the program keeps no capability across
	// the preloader's later changes of uid, and nothing favoured.
	if err := noKeptCaps(); err != nil {
		return failOn(ctl, ReportSpawn, exitSpawn, err)
	}
	if err := notFavoured(); err != nil {
		return failOn(ctl, ReportSpawn, exitSpawn, err)
	}
	if ex.Dir != "" {
		if err := unix.Chdir(ex.Dir); err != nil {
			return failOn(ctl, ReportSpawn, exitSpawn, &os.PathError{Op: "chdir", Path: ex.Dir, Err: err})
		}
	}
	err = unix.Exec(ex.Path, ex.Args, ex.Env)
	return failOn(ctl, ReportSpawn, exitSpawn, &os.PathError{Op: "exec", Path: ex.Path, Err: err})
}

// applyPlanFrame reads the plan frame on ControlFD (made close-on-exec)
// and applies it to the calling process, what; it returns the plan.
func applyPlanFrame(what string) (*Plan, error) {
	unix.CloseOnExec(ControlFD)
	body, _, err := readFrame(ControlFD, 0)
	if err != nil {
		return nil, fmt.Errorf("read the plan frame on fd %d: %w", ControlFD, err)
	}
	plan, filter, err := DecodePlan(body)
	if err != nil {
		return nil, err
	}
	if plan.Resident {
		// Its program must load the filter between clone3 and execve,
		// which Go's ForkExec cannot: the sandbox sends a resident frame
		// only to cellgate-init.
		return nil, fmt.Errorf("the Go init has no resident mode (install %s beside cellgate)", InitArg0)
	}
	if plan.RootMap != nil {
		// Its program must enter the namespace between fork and execve
		// (setns, single-threaded), which Go's ForkExec cannot: serve
		// refuses such a route without cellgate-init.
		return nil, fmt.Errorf("the Go init: %w", ErrUserNSNeedsCInit)
	}
	if err := Apply(plan, filter); err != nil {
		return nil, fmt.Errorf("confine %s: %w", what, err)
	}
	return plan, nil
}

// readFrame reads one length-prefixed frame from fd, with exactly nfds
// descriptors passed along with it (received close-on-exec).
func readFrame(fd, nfds int) ([]byte, []int, error) {
	var hdr [4]byte
	var oob []byte
	if nfds > 0 {
		oob = make([]byte, unix.CmsgSpace(4*nfds))
	}
	n, oobn, flags, _, err := unix.Recvmsg(fd, hdr[:], oob, unix.MSG_CMSG_CLOEXEC)
	for errors.Is(err, unix.EINTR) {
		n, oobn, flags, _, err = unix.Recvmsg(fd, hdr[:], oob, unix.MSG_CMSG_CLOEXEC)
	}
	if err != nil {
		return nil, nil, err
	}
	if n == 0 {
		return nil, nil, io.EOF
	}
	var fds []int
	if oobn > 0 {
		msgs, err := unix.ParseSocketControlMessage(oob[:oobn])
		if err != nil {
			return nil, nil, fmt.Errorf("control message: %w", err)
		}
		for _, m := range msgs {
			got, err := unix.ParseUnixRights(&m)
			if err != nil {
				return nil, nil, fmt.Errorf("control message: %w", err)
			}
			fds = append(fds, got...)
		}
	}
	if len(fds) != nfds || flags&unix.MSG_CTRUNC != 0 {
		for _, f := range fds {
			unix.Close(f)
		}
		// The kernel closed the descriptors that did not fit.
		switch {
		case flags&unix.MSG_CTRUNC != 0 && nfds == 0:
			return nil, nil, errors.New("descriptors with a frame that takes none")
		case flags&unix.MSG_CTRUNC != 0:
			return nil, nil, fmt.Errorf("more descriptors with the frame than the %d it takes", nfds)
		}
		return nil, nil, fmt.Errorf("%d descriptors with the frame, want %d", len(fds), nfds)
	}
	if err := ReadFull(fd, hdr[n:]); err != nil {
		return nil, fds, err
	}
	size := binary.LittleEndian.Uint32(hdr[:])
	if size > MaxLaunch {
		return nil, fds, fmt.Errorf("frame of %d bytes, over %d", size, MaxLaunch)
	}
	body := make([]byte, size)
	if err := ReadFull(fd, body); err != nil {
		return nil, fds, err
	}
	return body, fds, nil
}

// ReadFull reads len(b) bytes from fd (io.ErrUnexpectedEOF when it ends
// first): the control socket's reads, on the init's side and the
// daemon's.
func ReadFull(fd int, b []byte) error {
	for len(b) > 0 {
		n, err := unix.Read(fd, b)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return err
		case n == 0:
			return io.ErrUnexpectedEOF
		}
		b = b[n:]
	}
	return nil
}

// start starts the program with fds as its 0-2 (closed here). The caller
// holds the thread with no_new_privs (lockForFork). syscall.ForkExec, not
// os.StartProcess: the latter probes pidfd support with an extra fork on
// its first use, which would be on the request's path.
func start(ex *Exec, fds []int) (int, error) {
	defer func() {
		for _, fd := range fds {
			unix.Close(fd)
		}
	}()
	files := make([]uintptr, len(fds))
	for i, fd := range fds {
		files[i] = uintptr(fd)
	}
	pid, err := syscall.ForkExec(ex.Path, ex.Args, &syscall.ProcAttr{
		Dir:   ex.Dir,
		Env:   ex.Env,
		Files: files,
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: ex.UID, Gid: ex.GID, Groups: ex.Groups},
			Setpgid:    true,
		},
	})
	if err != nil {
		return 0, &os.PathError{Op: "fork/exec", Path: ex.Path, Err: err}
	}
	return pid, nil
}

// reap waits for every child until the program (pid) has ended, and
// returns how it ended.
func reap(pid int) Report {
	for {
		var ws unix.WaitStatus
		got, err := unix.Wait4(-1, &ws, 0, nil)
		switch {
		case errors.Is(err, unix.EINTR):
			continue
		case err != nil:
			return Report{Kind: ReportExited, Code: -1, Signal: int32(unix.SIGKILL), Msg: "wait4: " + err.Error()}
		case got != pid:
			continue // an orphan of the cell
		case ws.Signaled():
			return Report{Kind: ReportExited, Code: -1, Signal: int32(ws.Signal())}
		case ws.Exited():
			return Report{Kind: ReportExited, Code: int32(ws.ExitStatus())}
		}
	}
}

func report(r Report) {
	unix.Write(ControlFD, r.Encode())
}

// fail reports that nothing ran and returns status. The Runner turns the
// report into its error; when the report cannot be written (nobody reads
// fd 3) the message goes to stderr.
func fail(kind ReportKind, status int, err error) int {
	return failOn(ControlFD, kind, status, err)
}

// failOn is fail with the report written to fd.
func failOn(fd int, kind ReportKind, status int, err error) int {
	r := Report{Kind: kind, Msg: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = int32(errno)
	}
	if _, werr := unix.Write(fd, r.Encode()); werr != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", InitArg0, err)
	}
	return status
}

// closeLauncher closes the fd after ControlFD when it holds the running
// executable: the daemon passed the launcher there (Launcher.Attach) and
// the exec left it inheritable, and the program must not get it. Another
// file there (an init started otherwise) may be the runtime's: it stays.
func closeLauncher() {
	var fd, exe unix.Stat_t
	if unix.Fstat(ControlFD+1, &fd) == nil && unix.Stat("/proc/self/exe", &exe) == nil && fd.Dev == exe.Dev && fd.Ino == exe.Ino {
		unix.Close(ControlFD + 1)
	}
}

// nameSelf names the init InitArg0 in ps, top and the kernel's OOM
// reports, where started from an fd (/proc/self/fd/N) its name would be
// that fd's number. /proc/self/comm is the thread group leader's name
// (PR_SET_NAME would name whichever thread the call runs on). Best
// effort: a name is not worth failing a cell for.
func nameSelf() {
	os.WriteFile("/proc/self/comm", []byte(InitArg0), 0)
}
