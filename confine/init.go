package confine

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
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

// Init is the cell's init. It reads the launch message on ControlFD,
// applies the plan (Apply), starts the program as its child under the
// launch's credentials with fds 0-2, lets go of those fds, forwards
// signals, reaps every process that is reparented to it, and when the
// program ends writes a Report and exits with the program's status (128+N
// for signal N; the Report carries the signal itself). As PID 1 of the
// cell's PID namespace its exit ends every other process of the cell.
// It returns the status to exit with.
func Init() int {
	unix.CloseOnExec(ControlFD)
	ctl := os.NewFile(ControlFD, "control")
	msg, err := io.ReadAll(io.LimitReader(ctl, MaxLaunch+1))
	if err == nil && len(msg) > MaxLaunch {
		err = fmt.Errorf("launch message over %d bytes", MaxLaunch)
	}
	if err != nil {
		return fail(ReportSetup, exitSetup, fmt.Errorf("read the launch message on fd %d: %w", ControlFD, err))
	}
	plan, ex, err := DecodeLaunch(msg)
	if err != nil {
		return fail(ReportSetup, exitSetup, err)
	}
	if err := Apply(plan); err != nil {
		return fail(ReportSetup, exitSetup, fmt.Errorf("confine the cell: %w", err))
	}
	sigs := make(chan os.Signal, 8)
	signal.Notify(sigs, forwarded...)
	pid, err := start(ex)
	if err != nil {
		return fail(ReportSpawn, exitSpawn, err)
	}
	releaseStreams()
	go func() {
		for s := range sigs {
			unix.Kill(pid, s.(syscall.Signal))
		}
	}()
	r := reap(pid)
	report(r)
	if r.Signal != 0 {
		return 128 + int(r.Signal)
	}
	return int(r.Code)
}

// start starts the program, from a thread with no_new_privs set.
func start(ex *Exec) (int, error) {
	unlock, err := lockForFork()
	if err != nil {
		return 0, err
	}
	defer unlock()
	p, err := os.StartProcess(ex.Path, ex.Args, &os.ProcAttr{
		Dir:   ex.Dir,
		Env:   ex.Env,
		Files: []*os.File{os.Stdin, os.Stdout, os.Stderr},
		Sys: &syscall.SysProcAttr{
			Credential: &syscall.Credential{Uid: ex.UID, Gid: ex.GID, Groups: ex.Groups},
			Setpgid:    true,
		},
	})
	if err != nil {
		return 0, err
	}
	pid := p.Pid
	p.Release() // reaped by reap's wait4(-1)
	return pid, nil
}

// releaseStreams points fds 0-2 at /dev/null, so that the cell's output
// ends when the program and its children close theirs, as without an init.
func releaseStreams() {
	fd, err := unix.Open("/dev/null", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		for i := 0; i <= 2; i++ {
			unix.Close(i)
		}
		return
	}
	for i := 0; i <= 2; i++ {
		unix.Dup3(fd, i, 0)
	}
	unix.Close(fd)
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
	r := Report{Kind: kind, Msg: err.Error()}
	var errno syscall.Errno
	if errors.As(err, &errno) {
		r.Errno = int32(errno)
	}
	if _, werr := unix.Write(ControlFD, r.Encode()); werr != nil {
		fmt.Fprintf(os.Stderr, "%s: %v\n", InitArg0, err)
	}
	return status
}
