package sandbox

import (
	"context"
	"fmt"
	"os"
	"strings"
	"syscall"
)

// cgiDriver executes the Spec's program in the cell: one exec per request.
type cgiDriver struct{ r *Runner }

// check validates spec and fills Args and Dir defaults.
func (cgiDriver) check(spec *Spec) error {
	if spec.Path == "" {
		return fmt.Errorf("%w: empty Path", ErrSpec)
	}
	if len(spec.Args) == 0 {
		spec.Args = []string{spec.Path}
	}
	for _, a := range spec.Args {
		if strings.IndexByte(a, 0) >= 0 {
			return fmt.Errorf("%w: argument %q contains a NUL byte", ErrSpec, a)
		}
	}
	if spec.Dir == "" {
		spec.Dir = "/"
	}
	return nil
}

// identity returns spec's own credentials, or a per-cell uid from the
// range, or none (the daemon's) with AsSelf.
func (d cgiDriver) identity(spec *Spec) (identity, error) {
	r := d.r
	if u := spec.User; u != nil {
		return identity{uid: u.UID, cred: &syscall.Credential{Uid: u.UID, Gid: u.GID, Groups: u.Groups}}, nil
	}
	if r.asSelf {
		return identity{uid: uint32(os.Getuid())}, nil
	}
	uid, err := r.uids.acquire()
	if err != nil {
		return identity{}, err
	}
	gid := spec.GID // the tenant's own, when it has one
	if gid == 0 {
		gid = r.gid
	}
	// Groups is empty on purpose: setgroups(0) drops the daemon's
	// supplementary groups.
	return identity{uid: uid, cred: &syscall.Credential{Uid: uid, Gid: gid}, release: func() { r.uids.release(uid) }}, nil
}

// start execs the program straight into the cell (clone3
// CLONE_INTO_CGROUP).
func (d cgiDriver) start(_ context.Context, cell Cell, spec *Spec, files [3]*os.File, id identity) (*worker, error) {
	attr := &os.ProcAttr{
		Dir:   spec.Dir,
		Env:   spec.Env,
		Files: files[:],
		Sys: &syscall.SysProcAttr{
			Credential: id.cred,
			// A process group of its own, so signals to its group reach its
			// cell only; a session of its own too when the daemon has a
			// controlling terminal (cellgate run), so that the worker cannot
			// use it as its own (TIOCSTI, job control) and reads from it
			// without SIGTTIN. Without a terminal (the daemon) a new session
			// buys nothing and costs a scheduler autogroup per worker
			// (setsid with CONFIG_SCHED_AUTOGROUP): about 8% of a no-op
			// spawn, measured.
			Setsid:  d.r.hasTTY,
			Setpgid: !d.r.hasTTY,
			// Backstop only: the kernel sends it when the thread that forked
			// the worker dies (go.dev/issue/27505), e.g. when the daemon
			// crashes. cgroup.kill is what ends a cell.
			Pdeathsig: syscall.SIGKILL,
		},
	}
	if fd := cell.FD(); fd >= 0 {
		attr.Sys.UseCgroupFD = true
		attr.Sys.CgroupFD = fd
	}
	var proc *os.Process
	var err error
	d.r.spawns.do(func() { proc, err = startNoNewPrivs(spec.Path, spec.Args, attr) })
	if err != nil {
		return nil, err
	}
	w, err := newProcWorker(proc)
	if err != nil {
		proc.Kill()
		waitBlocking(proc)
		proc.Release()
		return nil, err
	}
	return w, nil
}
