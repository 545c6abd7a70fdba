package sandbox

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// forkDriver has the route's warm preloader clone the worker straight
// into the cell (clone3 CLONE_INTO_CGROUP | CLONE_PARENT | CLONE_PIDFD,
// and CLONE_NEWPID under a user namespace): the request's process starts
// with the app already imported. The preloader hands back the child's
// pidfd; cellgate, the child's parent through CLONE_PARENT, checks that it
// is its child in the cell and from there on treats it as any worker.
type forkDriver struct{ p *Preloader }

// check: a fork Spec runs no program; the environment is the request's.
func (forkDriver) check(*Spec) error { return nil }

// identity takes a uid of the preloader's own namespace range (the host
// uid behind it is Result.UID); without a user namespace the child keeps
// the preloader's credentials (AsSelf).
func (d forkDriver) identity(*Spec) (identity, error) {
	p := d.p
	if p.nsUIDs == nil {
		return identity{uid: uint32(os.Getuid()), nsUID: -1}, nil
	}
	ns, err := p.nsUIDs.acquire()
	if err != nil {
		return identity{}, fmt.Errorf("route %s has as many requests in flight as its preloader's user namespace maps uids (%d: the tenant's max_cells, "+
			"else the policy's, else 64; at most 256): raise max_cells for more: %w", p.cfg.Route, len(p.cfg.ChildUIDs), err)
	}
	return identity{uid: p.cfg.ChildUIDs[ns-1], nsUID: int64(ns), release: func() { p.nsUIDs.release(ns) }}, nil
}

// start sends the spawn and takes the child's pidfd from the answer. A
// spawn that never reached the preloader (found dead on its socket, or
// just replaced) is sent once more, to the next instance, on the same
// cell: nothing was cloned into it. Once the spawn was sent, the cell is
// taken for used whatever its cgroup.events say (a child that served the
// request and exited is a zombie, which does not populate its cell): when
// the preloader died before it answered, the cell is killed at once, and
// only if every child in it still had the preloader's credentials (so it
// never ran the app) is the error ErrNoPreloader marked errNeverRan, for
// Run to retry the request on a fresh cell (runFork). Otherwise the
// request may have run (a POST that charged a card): the error is
// ErrPreloaderLost, never retried and never answered as unprocessed. So is
// a spawn answered against the protocol (errProtocol: a message that does
// not parse, a wrong id, a pidfd that fails verifyChild): the preloader
// read it, and a preloader that breaks the protocol is not believed about
// what it cloned, or where (a child outside the cell, a pidfd of another
// process), which a search of the cell cannot settle.
func (d forkDriver) start(ctx context.Context, cell Cell, spec *Spec, files [3]*os.File, id identity) (*worker, error) {
	w, err := d.try(ctx, cell, spec, files, id)
	if errors.Is(err, errNotSent) {
		w, err = d.try(ctx, cell, spec, files, id)
	}
	switch {
	case errors.Is(err, errNoAnswer) && d.p.nsUIDs != nil && d.neverRan(cell):
		err = fmt.Errorf("%w: %w: %w", ErrNoPreloader, errNeverRan, err)
	case errors.Is(err, errNoAnswer), errors.Is(err, errProtocol):
		err = fmt.Errorf("%w: %w", ErrPreloaderLost, err)
	}
	return w, err
}

// errNotSent marks a spawn that never reached the preloader (with
// ErrNoPreloader); errNoAnswer one that did, but whose answer never came
// (the preloader died or broke after it may have cloned the child), which
// start turns into ErrNoPreloader or ErrPreloaderLost.
var (
	errNotSent  = errors.New("spawn not sent")
	errNoAnswer = errors.New("no answer to the spawn")
)

// errNeverRan marks a failed hand-off whose child was ended before it ran
// any of the request's code.
var errNeverRan = errors.New("the request's process was ended before it ran")

// neverRan kills the cell and reports whether every process in it still
// had the preloader's credentials: a child switches to the request's uid
// before it reads its stdin or runs the app, and after cgroup.kill it runs
// no more code. The processes stay cellgate's children, for Run to reap.
func (d forkDriver) neverRan(cell Cell) bool {
	if err := cell.Kill(); err != nil {
		return false
	}
	orphans := cellChildren(cell)
	defer func() {
		for _, o := range orphans {
			o.release()
		}
	}()
	if len(orphans) == 0 {
		return false
	}
	owner := strconv.FormatUint(uint64(d.p.cfg.Owner), 10)
	for _, o := range orphans {
		status, err := os.ReadFile("/proc/" + strconv.Itoa(o.pid) + "/status")
		if err != nil || !sameUIDs(status, owner) {
			return false
		}
	}
	return true
}

// sameUIDs reports whether the real, effective, saved and filesystem uids
// of a /proc/PID/status are all uid.
func sameUIDs(status []byte, uid string) bool {
	for _, line := range strings.Split(string(status), "\n") {
		if v, ok := strings.CutPrefix(line, "Uid:"); ok {
			f := strings.Fields(v)
			return len(f) == 4 && f[0] == uid && f[1] == uid && f[2] == uid && f[3] == uid
		}
	}
	return false
}

// try is one attempt of start.
func (d forkDriver) try(ctx context.Context, cell Cell, spec *Spec, files [3]*os.File, id identity) (*worker, error) {
	p := d.p
	timeout := spec.Timeout
	if timeout <= 0 {
		timeout = p.r.timeout
	}
	inst, err := p.ready(ctx.Done())
	if err != nil {
		return nil, err
	}
	fds := []int{int(files[0].Fd()), int(files[1].Fd()), int(files[2].Fd())}
	if cell.FD() >= 0 {
		fds = append(fds, cell.FD())
	}

	inst.mu.Lock()
	defer inst.mu.Unlock()
	if !inst.broken.Load() && p.cfg.Confine != nil && !inst.view.covers(hiddenNow(p.cfg.Confine)) {
		p.outOfDate(inst)
	}
	if inst.broken.Load() {
		return nil, fmt.Errorf("%w: preloader of route %s was just replaced: %w", ErrNoPreloader, p.cfg.Route, errNotSent)
	}
	inst.nextID++
	msg, err := spawnMessage(inst.nextID, id.nsUID, spec.Env, cell.FD() >= 0, time.Now().Add(timeout))
	if err != nil {
		return nil, err
	}
	w, err := inst.spawn(msg, fds, cell)
	var stray *strayChild
	if errors.As(err, &stray) {
		// cellgate's own child, but not where it belongs: end it.
		stray.w.kill()
		p.r.reaper.wait(stray.w)
		stray.w.release()
	}
	if err != nil {
		if !isSpawnRefusal(err) && !errors.Is(err, ErrRequestTooLarge) {
			// The socket or the protocol failed: the preloader is not
			// trusted further. The supervisor restarts it.
			inst.retire()
			inst.proc.Kill()
			// Once it is gone it clones nothing more into the cell, which
			// the caller then searches for what it did clone.
			select {
			case <-inst.exited:
			case <-time.After(spawnTimeout):
			}
		}
		return nil, fmt.Errorf("preloader of route %s (pid %d): %w", p.cfg.Route, inst.pid, err)
	}
	p.spawned.Add(1)
	inst.children++
	if n := p.cfg.RecycleAfter; n > 0 && inst.children >= n {
		inst.askRecycle()
	}
	return w, nil
}

// spawnRefusal is a spawn the preloader answered with an error: nothing
// was started, the preloader carries on.
type spawnRefusal struct{ msg string }

func (e *spawnRefusal) Error() string { return "spawn refused: " + e.msg }
func (e *spawnRefusal) Unwrap() error { return ErrSpawn }

func isSpawnRefusal(err error) bool {
	var r *spawnRefusal
	return errors.As(err, &r)
}

// spawn is one round trip on the socket. Called with inst.mu held.
func (inst *instance) spawn(msg []byte, fds []int, cell Cell) (*worker, error) {
	if len(msg) > inst.maxSpawn {
		return nil, fmt.Errorf("spawn of %d bytes exceeds the %d the preloader's socket takes (a request with huge headers): %w", len(msg), inst.maxSpawn, ErrRequestTooLarge)
	}
	sent := time.Now()
	inst.conn.SetDeadline(sent.Add(spawnTimeout))
	if _, _, err := inst.conn.WriteMsgUnix(msg, unix.UnixRights(fds...), nil); errors.Is(err, unix.EMSGSIZE) {
		// Refused by the socket as larger than its send buffer: nothing
		// was sent, the preloader is not at fault.
		return nil, fmt.Errorf("send spawn of %d bytes: %w: %w", len(msg), ErrRequestTooLarge, err)
	} else if err != nil {
		return nil, fmt.Errorf("%w: send spawn: %w: %w", ErrNoPreloader, errNotSent, err)
	}
	var buf [16 << 10]byte
	oob := make([]byte, unix.CmsgSpace(4*4))
	n, oobn, _, _, err := inst.conn.ReadMsgUnix(buf[:], oob)
	if errors.Is(err, unix.ECONNRESET) {
		// The kernel resets the peer of a socket closed with data unread
		// in it: the preloader died with the spawn still queued (one at a
		// time), so it cloned nothing.
		return nil, fmt.Errorf("%w: %w: the preloader closed its socket before it read the spawn", ErrNoPreloader, errNotSent)
	}
	got, ferr := receivedFDs(oob[:oobn])
	if err != nil || n == 0 {
		closeAll(got) // fds with no answer: never left open in the daemon
		return nil, fmt.Errorf("%w: read answer: %v", errNoAnswer, err)
	}
	if ferr != nil {
		return nil, ferr
	}
	m, err := parseMessage(buf[:n], len(got), msgSpawned, msgError)
	if err == nil && m.ID != inst.nextID {
		err = fmt.Errorf("%w: answer to spawn %d, want %d", errProtocol, m.ID, inst.nextID)
	}
	if err != nil {
		closeAll(got)
		return nil, err
	}
	if m.Type == msgError {
		return nil, &spawnRefusal{lastOf(m.Error, maxRefusal)}
	}
	w := &worker{pid: m.Pid, pidfd: got[0], clone: time.Duration(m.CloneUS) * time.Microsecond}
	if ours, err := verifyChild(w, cell); err != nil {
		if ours {
			return nil, &strayChild{w: w, err: err}
		}
		// Not cellgate's child: never signalled (the pidfd could name any
		// process the preloader can see), only closed.
		w.release()
		return nil, err
	}
	w.handOff = time.Since(sent)
	return w, nil
}

// strayChild is a child of cellgate that a preloader started outside the
// cell; the caller kills and reaps it.
type strayChild struct {
	w   *worker
	err error
}

func (e *strayChild) Error() string { return e.err.Error() }
func (e *strayChild) Unwrap() error { return e.err }

// verifyChild checks what a preloader (which runs the tenant's import-time
// code) claims: the pidfd is of pid, cellgate is its parent (so that the
// reaper can wait for it), and it runs in the cell. pid cannot be reused
// meanwhile: it is cellgate's child and not reaped. ours reports whether
// the pidfd is of a child of cellgate the preloader may have cloned (in
// its route group: the cell's parent), which may then be killed; any other
// child of cellgate (another route's cell or preloader, a resident init)
// is one the preloader named by a pidfd of a process it can see, and is
// never signalled.
func verifyChild(w *worker, cell Cell) (ours bool, err error) {
	fdinfo, err := os.ReadFile("/proc/self/fdinfo/" + strconv.Itoa(w.pidfd))
	if err != nil {
		return false, fmt.Errorf("%w: read pidfd's fdinfo: %w", errProtocol, err)
	}
	if pid := fdinfoPid(fdinfo); pid != w.pid {
		return false, fmt.Errorf("%w: pidfd of pid %d, answer says %d", errProtocol, pid, w.pid)
	}
	stat, err := os.ReadFile("/proc/" + strconv.Itoa(w.pid) + "/stat")
	if err != nil {
		return false, fmt.Errorf("%w: child %d: %w", errProtocol, w.pid, err)
	}
	if ppid, self := statPPid(stat), os.Getpid(); ppid != self {
		return false, fmt.Errorf("%w: child %d has parent %d, not cellgate (%d)", errProtocol, w.pid, ppid, self)
	}
	if cell.FD() < 0 {
		return true, nil
	}
	cg, err := os.ReadFile("/proc/" + strconv.Itoa(w.pid) + "/cgroup")
	if err != nil {
		return true, fmt.Errorf("%w: child %d: %w", errProtocol, w.pid, err)
	}
	path := unifiedPath(cg)
	if len(path) >= 2 && strings.HasSuffix(cell.Path(), path) {
		return true, nil
	}
	return inGroup(filepath.Dir(cell.Path()), path), fmt.Errorf("%w: child %d runs in cgroup %q, not in cell %s", errProtocol, w.pid, path, cell.Path())
}

// inGroup reports whether the cgroup path (as /proc/PID/cgroup names it,
// from the cgroup namespace's root) is the group at dir (a cgroupfs
// directory) or below it: dir ends with path or one of its ancestors.
func inGroup(dir, path string) bool {
	for q := path; len(q) > 1; q = filepath.Dir(q) {
		if strings.HasSuffix(dir, q) {
			return true
		}
	}
	return false
}

// cellChildren returns, with a pidfd each, cellgate's own children that
// run in cell: after a failed spawn, a child the preloader cloned but did
// not hand over. Children are listed per thread in
// /proc/self/task/TID/children (CLONE_PARENT makes the preloader's parent
// thread the child's parent); each one's cgroup is read from /proc.
func cellChildren(cell Cell) []*worker {
	if cell.FD() < 0 {
		return nil
	}
	var out []*worker
	selfChildren(func(f string) bool {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return true
		}
		cg, err := os.ReadFile("/proc/" + f + "/cgroup")
		if path := unifiedPath(cg); err != nil || len(path) < 2 || !strings.HasSuffix(cell.Path(), path) {
			return true
		}
		if fd, err := unix.PidfdOpen(pid, 0); err == nil {
			out = append(out, &worker{pid: pid, pidfd: fd})
		}
		return true
	})
	return out
}

// selfChildren calls each with the pid (as written) of every child of
// the daemon listed in its threads' children files
// (/proc/self/task/TID/children: CLONE_PARENT and reparenting make any
// thread the parent), until each returns false. false: the files could
// not be listed.
func selfChildren(each func(pid string) bool) bool {
	tasks, err := os.ReadDir("/proc/self/task")
	if err != nil {
		return false
	}
	for _, t := range tasks {
		b, err := os.ReadFile("/proc/self/task/" + t.Name() + "/children")
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if !each(f) {
				return true
			}
		}
	}
	return true
}

// endOrphans ends and reaps the processes in cell that are the daemon's
// children but were never handed to it: cloned with CLONE_PARENT by a
// preloader or the init spawner that failed before it answered. Each is
// killed by its pidfd, not the cell by cgroup.kill: a group cgroup.kill
// was written to kills what is cloned into it next (cgroup.Cell's
// killed), and the caller may start another process in it (the init the
// daemon starts after the spawner died). Only what they started
// meanwhile is ended with the cell's cgroup.kill; killed then says the
// cell takes no further process. An error: the cell could not be emptied
// (a process may still run under its uid).
func (r *Runner) endOrphans(cell Cell) (killed bool, err error) {
	for _, o := range cellChildren(cell) {
		unix.PidfdSendSignal(o.pidfd, unix.SIGKILL, nil, 0)
		r.reaper.wait(o)
		o.release()
	}
	if populated, err := cell.Populated(); err == nil && !populated {
		return false, nil
	}
	return true, r.empty(cell)
}

// fdinfoPid is the "Pid:" of a pidfd's fdinfo, or 0.
func fdinfoPid(b []byte) int {
	for _, line := range bytes.Split(b, []byte("\n")) {
		if v, ok := bytes.CutPrefix(line, []byte("Pid:")); ok {
			n, _ := strconv.Atoi(string(bytes.TrimSpace(v)))
			return n
		}
	}
	return 0
}

// statPPid is the parent pid in /proc/PID/stat, or 0.
func statPPid(b []byte) int { return statInt(b, 4) }

// statInt is numeric field n (proc(5)'s numbering, from 1: 4 the parent)
// of a /proc/PID/stat line, or 0.
func statInt(b []byte, n int) int {
	_, f, ok := statFields(b)
	if !ok || len(f) < n-2 {
		return 0
	}
	v, _ := strconv.Atoi(f[n-3])
	return v
}

// statFields splits a /proc/PID/stat line into the command and the
// fields after it, from the state on (f[0] is field 3). The command may
// hold spaces and parentheses: the fields follow the last ")". ok is
// false without a "(command)".
func statFields(b []byte) (comm string, f []string, ok bool) {
	open, end := bytes.IndexByte(b, '('), bytes.LastIndexByte(b, ')')
	if open < 0 || end < open {
		return "", nil, false
	}
	return string(b[open+1 : end]), strings.Fields(string(b[end+1:])), true
}

// unifiedPath is the cgroup v2 path in /proc/PID/cgroup ("0::/path"), or
// "".
func unifiedPath(b []byte) string {
	for _, line := range strings.Split(string(b), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok && strings.HasPrefix(p, "/") {
			return p
		}
	}
	return ""
}

// receivedFDs parses the SCM_RIGHTS of a message.
func receivedFDs(oob []byte) ([]int, error) {
	if len(oob) == 0 {
		return nil, nil
	}
	msgs, err := unix.ParseSocketControlMessage(oob)
	if err != nil {
		return nil, fmt.Errorf("%w: control message: %w", errProtocol, err)
	}
	var fds []int
	for _, m := range msgs {
		got, err := unix.ParseUnixRights(&m)
		if err != nil {
			closeAll(fds)
			return nil, fmt.Errorf("%w: control message: %w", errProtocol, err)
		}
		fds = append(fds, got...)
	}
	return fds, nil
}

func closeAll(fds []int) {
	for _, fd := range fds {
		unix.Close(fd)
	}
}
