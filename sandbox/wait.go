package sandbox

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// exitStatus is how the worker's main process ended.
type exitStatus struct {
	code   int            // exit status; -1 when ended by a signal
	signal syscall.Signal // the terminating signal, or 0
}

func (s exitStatus) String() string {
	if s.signal != 0 {
		return "signal " + s.signal.String()
	}
	return fmt.Sprintf("exit status %d", s.code)
}

// sigchldInfo is the kernel's siginfo_t as waitid fills it for a child
// (the SIGCHLD layout on 64-bit Linux: si_signo, si_errno, si_code, padding,
// then si_pid, si_uid, si_status). 128 bytes, like siginfo_t.
type sigchldInfo struct {
	Signo  int32
	Errno  int32
	Code   int32
	_      int32
	Pid    int32
	UID    uint32
	Status int32
	_      [100]byte
}

// waitExit waits for p to exit and reaps it, without holding an OS thread:
// it duplicates the process's pidfd, registers the copy with the runtime's
// netpoller (a pidfd becomes readable when the process exits) and calls
// waitid(P_PIDFD, WEXITED|WNOHANG) whenever it is. A blocking p.Wait would pin
// one OS thread per worker in flight (cgroup-facts §4.4: 200 waits, 203
// threads). Without a pidfd (kernel < 5.4, or the runtime's probe failed) it
// falls back to p.Wait.
//
// After waitExit the process is reaped: do not call p.Wait; p.Release frees
// the handle.
func waitExit(p *os.Process) (exitStatus, error) {
	dup := -1
	var dupErr error
	err := p.WithHandle(func(pidfd uintptr) {
		dup, dupErr = unix.FcntlInt(pidfd, unix.F_DUPFD_CLOEXEC, 0)
	})
	if errors.Is(err, os.ErrNoHandle) {
		return waitBlocking(p)
	}
	if err != nil {
		return exitStatus{}, fmt.Errorf("pidfd of pid %d: %w", p.Pid, err)
	}
	if dupErr != nil {
		return exitStatus{}, fmt.Errorf("dup pidfd of pid %d: %w", p.Pid, dupErr)
	}
	if err := unix.SetNonblock(dup, true); err != nil {
		unix.Close(dup)
		return exitStatus{}, fmt.Errorf("set pidfd of pid %d non-blocking: %w", p.Pid, err)
	}
	f := os.NewFile(uintptr(dup), fmt.Sprintf("pidfd:%d", p.Pid))
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return exitStatus{}, fmt.Errorf("pidfd of pid %d: %w", p.Pid, err)
	}
	var st exitStatus
	var werr error
	err = rc.Read(func(fd uintptr) bool {
		var info sigchldInfo
		for {
			_, _, e := unix.Syscall6(unix.SYS_WAITID, unix.P_PIDFD, fd,
				uintptr(unsafe.Pointer(&info)), unix.WEXITED|unix.WNOHANG, 0, 0)
			if e == unix.EINTR {
				continue
			}
			if e != 0 {
				werr = fmt.Errorf("waitid pidfd of pid %d: %w", p.Pid, e)
				return true
			}
			break
		}
		if info.Pid == 0 {
			return false // still running: park until the pidfd is readable
		}
		st = fromSiginfo(info.Code, info.Status)
		return true
	})
	if err != nil {
		return exitStatus{}, fmt.Errorf("wait on pidfd of pid %d: %w", p.Pid, err)
	}
	return st, werr
}

// fromSiginfo decodes waitid's si_code and si_status.
func fromSiginfo(code, status int32) exitStatus {
	const cldExited = 1 // CLD_EXITED; CLD_KILLED and CLD_DUMPED carry a signal
	switch code {
	case cldExited:
		return exitStatus{code: int(status)}
	default: // CLD_KILLED, CLD_DUMPED
		return exitStatus{code: -1, signal: syscall.Signal(status)}
	}
}

// waitBlocking is the fallback without a pidfd: one OS thread per waiter.
func waitBlocking(p *os.Process) (exitStatus, error) {
	ps, err := p.Wait()
	if err != nil {
		return exitStatus{}, fmt.Errorf("wait for pid %d: %w", p.Pid, err)
	}
	ws := ps.Sys().(syscall.WaitStatus)
	if ws.Signaled() {
		return exitStatus{code: -1, signal: ws.Signal()}, nil
	}
	return exitStatus{code: ws.ExitStatus()}, nil
}
