package sandbox

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// A confined fork route: its preloader is started through the cell init's
// exec mode (confine.InitExec). The init is cloned into the preloader's
// group with a user namespace and the plan's namespaces but PID
// (Prepared.CloneFlags of a ForPreloader plan), applies the plan to itself
// (filesystem view, loopback-only network, host name, rlimits,
// no_new_privs, the preloader's seccomp filter), then executes the
// interpreter in its own place: the preloader stays cellgate's direct
// child, which CLONE_PARENT needs. Each request's child then sets up the
// rest in itself (childSetup): PID, mount and IPC namespaces of its own
// from its clone3, fresh tmpfs on /tmp, /var/tmp and /dev/shm and a /proc
// of its PID namespace, and the full seccomp filter on top of the
// preloader's.

// childSetup is what each child of a preloader sets up in itself before it
// runs the request: the preloader's last argument, as JSON (DESIGN.md
// "Preloader protocol", version 3).
type childSetup struct {
	// NewPID, NewNS, NewIPC: namespaces of its own (clone3 flags).
	NewPID bool `json:"newpid"`
	NewNS  bool `json:"newns"`
	NewIPC bool `json:"newipc"`
	// Tmpfs are mounted fresh (with NewNS): target, size in bytes, mode.
	Tmpfs []childTmpfs `json:"tmpfs,omitempty"`
	// Proc mounts a proc of its PID namespace on /proc (with NewNS and
	// NewPID).
	Proc bool `json:"proc"`
	// Seccomp is a seccomp filter to load last (struct sock_filter[] in
	// the machine's byte order, hex).
	Seccomp string `json:"seccomp,omitempty"`
}

type childTmpfs struct {
	Target string `json:"target"`
	Size   int64  `json:"size"`
	Mode   uint32 `json:"mode"`
}

// newChildSetup derives a child's set-up from the preloader's plan (nil:
// an unconfined preloader, whose children get only a PID namespace, when
// it has a user namespace to create one in).
func newChildSetup(plan *confine.Prepared, userns bool) (string, error) {
	var c childSetup
	if plan == nil {
		c.NewPID = userns
	} else {
		p := plan.Plan()
		ns := p.ChildNamespaces()
		c.NewPID, c.NewNS, c.NewIPC = ns&confine.NSPID != 0, ns&confine.NSMount != 0, ns&confine.NSIPC != 0
		if c.NewNS {
			for _, t := range p.Tmpfs {
				c.Tmpfs = append(c.Tmpfs, childTmpfs{Target: t.Target, Size: t.Size, Mode: t.Mode})
			}
			c.Proc = c.NewPID
		}
		if p.Seccomp {
			f, err := confine.Filter()
			if err != nil {
				return "", err
			}
			b := make([]byte, 0, 8*len(f))
			for _, in := range f {
				b = binary.NativeEndian.AppendUint16(b, in.Code)
				b = append(b, in.Jt, in.Jf)
				b = binary.NativeEndian.AppendUint32(b, in.K)
			}
			c.Seccomp = hex.EncodeToString(b)
		}
	}
	b, err := json.Marshal(c)
	return string(b), err
}

// startConfined starts the preloader (argv, with attr's environment,
// directory, stdio and user namespace) through the init's exec mode, with
// sock as its fd 3. It returns once the interpreter is being executed;
// ctl is the daemon's end of the init's control socket, on which a
// failed exec is reported (execFailure reads it). The end of ctx kills the
// init (its setup may wait on the view's file systems). Its errors are the
// caller's to wrap with the route.
func (p *Preloader) startConfined(ctx context.Context, argv []string, attr *os.ProcAttr, sock *os.File) (proc *os.Process, ctl int, err error) {
	r, plan := p.r, p.cfg.Confine
	if r.launcher == nil {
		return nil, -1, fmt.Errorf("%w: confined, but the runner has no Launcher (Config.Launcher)", ErrSpec)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, -1, fmt.Errorf("control socket: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "preloader-init-control")
	defer child.Close()
	sys := *attr.Sys
	sys.Cloneflags |= plan.CloneFlags()
	path, initAttr := r.launcher.Attach(&os.ProcAttr{
		Dir:   "/",
		Env:   []string{"GOMAXPROCS=1"},
		Files: []*os.File{attr.Files[0], attr.Files[1], attr.Files[2], child}, // fd 3 = confine.ControlFD
		Sys:   &sys,
	})
	proc, err = startNoNewPrivs(path, []string{confine.InitArg0, confine.ExecArg}, initAttr)
	if err = r.launchError(err); err != nil {
		unix.Close(fds[0])
		return nil, -1, err
	}
	// The init's end is the init's alone now: killed (ctx), it ends the
	// stream, which the reads below see at once.
	child.Close()
	ip := &initProc{proc: proc, ctl: fds[0]}
	defer context.AfterFunc(ctx, func() { proc.Kill() })()
	fail := func(err error) (*os.Process, int, error) {
		proc.Kill()
		proc.Wait()
		ip.closeCtl()
		if ctx.Err() != nil {
			err = fmt.Errorf("start abandoned, its init killed: %w", context.Cause(ctx))
		}
		return nil, -1, err
	}
	if err := ip.send(plan.Frame(), nil); err != nil {
		return fail(err)
	}
	if rep, ok := readReport(ip.ctl); !ok || rep.Kind != confine.ReportReady {
		return fail(fmt.Errorf("confine it (run cellgate doctor): %s", reportMsg(rep, ok)))
	}
	frame, err := confine.EncodeExec(&confine.Exec{Path: argv[0], Args: argv, Env: attr.Env, Dir: attr.Dir})
	if err != nil {
		return fail(err)
	}
	if err := ip.send(frame, []int{int(sock.Fd())}); err != nil {
		return fail(err)
	}
	return proc, ip.ctl, nil
}

// readReport reads one report of the init on ctl, waiting up to
// reportTimeout.
func readReport(ctl int) (confine.Report, bool) {
	tv := unix.NsecToTimeval(reportTimeout.Nanoseconds())
	unix.SetsockoptTimeval(ctl, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	var hdr [16]byte
	if err := confine.ReadFull(ctl, hdr[:]); err != nil {
		return confine.Report{Msg: "no report from the init: " + err.Error()}, false
	}
	msg := make([]byte, int(binary.LittleEndian.Uint16(hdr[2:])))
	if err := confine.ReadFull(ctl, msg); err != nil {
		return confine.Report{Msg: "a cut report from the init: " + err.Error()}, false
	}
	return confine.DecodeReport(append(hdr[:], msg...))
}

// reportMsg says what a report that is not ReportReady means.
func reportMsg(rep confine.Report, ok bool) string {
	if !ok {
		if rep.Msg != "" {
			return rep.Msg
		}
		return "the init sent no valid report"
	}
	return rep.Msg // it names the errno already
}

// execFailure is what the init reported on ctl after the exec frame: why
// the interpreter could not be executed, or nil when the exec succeeded
// (the socket ended without a report) or nothing can be told.
func execFailure(ctl int) error {
	if ctl < 0 {
		return nil
	}
	rep, ok := readReport(ctl)
	if !ok {
		return nil
	}
	return errors.New(reportMsg(rep, ok))
}
