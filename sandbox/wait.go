package sandbox

import (
	"fmt"
	"os"
	"syscall"
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
