package sandbox

import (
	"context"
	_ "embed"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// pythonWSGI is the preloader program of the python-wsgi runtime. It ships
// inside the cellgate binary and is passed to the interpreter with -c, so
// it needs no installation and cannot drift from the daemon speaking to it.
//
//go:embed preload/python_wsgi.py
var pythonWSGI string

// Defaults of the PreloaderConfig fields left zero.
const (
	DefaultPreloadStart = 60 * time.Second
	DefaultPreloadWait  = 10 * time.Second
	// spawnTimeout bounds one spawn's round trip: a preloader that does
	// not answer in time is taken for broken and restarted.
	spawnTimeout = 10 * time.Second
	// Back-off between restarts of a preloader that died or failed to
	// start: doubling from restartMin up to restartMax, back to restartMin
	// once an instance is ready.
	restartMin = 100 * time.Millisecond
	restartMax = 10 * time.Second
	// maxIDMapLines is the kernel's limit on lines of a uid_map (4.15).
	maxIDMapLines = 340
)

// Group is the preloader's own cgroup, with its limits: each instance of
// the preloader runs in a group of its own below it.
type Group interface {
	// NewInstance makes an instance's group (cgroup.RouteGroup's).
	NewInstance() (InstanceGroup, error)
}

// InstanceGroup is the cgroup one instance of a preloader runs in, and
// all it starts but its requests' children (in their cells): its end ends
// them, a process that left the instance's process group or session
// included.
type InstanceGroup interface {
	// FD is an open directory fd of the group, for CLONE_INTO_CGROUP.
	FD() int
	// Path is the group's directory, for logs.
	Path() string
	// Procs lists the processes in the group.
	Procs() ([]int, error)
	// Remove kills what is left in the group, waits for it to empty
	// (bounded by ctx) and removes it.
	Remove(ctx context.Context) error
}

// instanceRemoveWait bounds how long the end of a preloader's instance
// waits for what it left to die and its group to go; a group left then
// goes with its route group.
const instanceRemoveWait = 10 * time.Second

// PreloaderConfig describes a route's preloader.
type PreloaderConfig struct {
	// Route names the preloader in logs and errors.
	Route string
	// Python, App and AppDir: the interpreter, the "module:callable" and
	// the directory it is imported from (the preloader's working
	// directory). Env is the preloader's whole environment.
	Python string
	App    string
	AppDir string
	Env    []string
	// Group is the preloader's own cgroup, under the route's tenant, with
	// its preload memory limit written, in which each instance gets a
	// group of its own (required unless the Runner is AsSelf).
	Group Group
	// Owner is the host uid the preloader runs as: uid 0 of a user
	// namespace of its own, holding capabilities only there. ChildUIDs are
	// the host uids its children run as, one per request in flight,
	// mapped to uids 1..len(ChildUIDs) of that namespace; GID is the
	// namespace's gid 0. All are ignored with an AsSelf Runner (no user
	// namespace: the preloader and its children keep the daemon's
	// credentials).
	Owner     uint32
	ChildUIDs []uint32
	GID       uint32
	// RecycleAfter replaces the preloader after this many children (0 =
	// never).
	RecycleAfter int64
	// StartTimeout bounds an import (DefaultPreloadStart); WaitReady how
	// long a request waits for a preloader being restarted
	// (DefaultPreloadWait).
	StartTimeout time.Duration
	WaitReady    time.Duration
	// Confine, a confine.Plan.ForPreloader plan with the route's
	// confinement, confines the preloader and each child
	// (preload_confine.go); nil leaves both unconfined. Needs a user
	// namespace (not AsSelf) and the Runner's Launcher.
	Confine *confine.Prepared
}

// PreloaderStats are a preloader's counters.
type PreloaderStats struct {
	Route    string
	Restarts uint64 // instances that died or broke and were replaced
	Recycles uint64 // instances replaced after RecycleAfter children, or when their view no longer covered the daemon's files (view.go)
	Spawned  uint64 // children started
	Retries  uint64 // requests retried after their preloader died in the hand-off
	Ready    bool   // an instance is ready now
}

// PreloadError is a preloader that could not import its app; Output is
// what it reported (the traceback), shown once by whoever starts it.
type PreloadError struct {
	Route  string
	Output string
}

func (e *PreloadError) Error() string {
	return fmt.Sprintf("preloader of route %s failed to import its app:\n%s", e.Route, e.Output)
}

// Preloader is a route's warm runtime: one instance (a process) at a time,
// restarted with back-off when it dies, replaced after RecycleAfter
// children. It is safe for concurrent use.
type Preloader struct {
	r      *Runner
	cfg    PreloaderConfig
	log    *slog.Logger
	nsUIDs *uidPool // uids 1..n of its user namespace; nil without one

	mu      sync.Mutex
	cur     *instance     // nil while (re)starting
	readyCh chan struct{} // closed when cur is set
	closed  bool
	done    chan struct{} // closed when the supervisor has ended
	// stopping ends with Close (stop): the supervisor ends, and a
	// restart's or a recycle's import under way is abandoned at once,
	// not left to its bound.
	stopping context.Context
	stop     context.CancelFunc

	restarts, recycles, spawned atomic.Uint64
	retries                     atomic.Uint64 // requests run again after a failed hand-off (runFork)
}

// instance is one preloader process and its socket.
type instance struct {
	proc *os.Process
	conn *net.UnixConn
	pid  int
	out  *preloadOutput // its fds 1 and 2, logged

	mu       sync.Mutex // one spawn at a time: the preloader answers in order
	nextID   uint64
	children int64
	broken   atomic.Bool // a spawn failed on the socket, or it was retired
	// maxSpawn is the largest spawn the socket takes in one datagram:
	// maxMessage, or less when its send buffer could not be raised.
	maxSpawn int
	// view is the stamp of its view (a confined route's: view.go), which
	// every child shares: it spawns only while the view covers the
	// daemon's files the host holds (fork.go, try); its age is its own
	// (RecycleAfter), the app's code being loaded from it anyway.
	view viewStamp
	// stale: the view no longer covers them; the replacement is asked
	// for and the instance is out of service.
	stale atomic.Bool

	// recycle asks the supervisor for a replacement (RecycleAfter
	// reached); buffered, sent once.
	recycle     chan struct{}
	recycleOnce sync.Once
	// exited is closed once the process has been reaped (state set).
	exited chan struct{}
	state  *os.ProcessState
}

// askRecycle asks the supervisor, once, to replace the instance.
func (inst *instance) askRecycle() {
	inst.recycleOnce.Do(func() { inst.recycle <- struct{}{} })
}

// StartPreloader starts the route's preloader through the Runner's spawn
// path (no_new_privs, the group's fd for CLONE_INTO_CGROUP, the daemon's
// death signal) and returns once it has imported its app. An app that
// fails to import gives a *PreloadError with its traceback. The end of
// ctx abandons the start at once, the import killed (serve stopping while
// its start or a reload imports, which may take up to StartTimeout): the
// error wraps ctx's cause.
func (r *Runner) StartPreloader(ctx context.Context, cfg PreloaderConfig) (*Preloader, error) {
	if cfg.Python == "" || cfg.App == "" || cfg.AppDir == "" {
		return nil, fmt.Errorf("%w: preloader of route %s: Python, App and AppDir are required", ErrSpec, cfg.Route)
	}
	if cfg.StartTimeout <= 0 {
		cfg.StartTimeout = DefaultPreloadStart
	}
	if cfg.WaitReady <= 0 {
		cfg.WaitReady = DefaultPreloadWait
	}
	p := &Preloader{r: r, cfg: cfg, log: r.log.With("route", cfg.Route), readyCh: make(chan struct{}),
		done: make(chan struct{})}
	if cfg.Confine != nil && (r.asSelf || !cfg.Confine.Plan().Preloader) {
		return nil, fmt.Errorf("%w: preloader of route %s: a confined preloader needs a user namespace and a ForPreloader plan", ErrSpec, cfg.Route)
	}
	if !r.asSelf {
		if cfg.Group == nil {
			return nil, fmt.Errorf("%w: preloader of route %s: no cgroup", ErrSpec, cfg.Route)
		}
		n := len(cfg.ChildUIDs)
		if n == 0 || n >= maxIDMapLines {
			return nil, fmt.Errorf("%w: preloader of route %s: %d child uids, want 1..%d", ErrSpec, cfg.Route, n, maxIDMapLines-1)
		}
		p.nsUIDs = newUIDPool(UIDRange{First: 1, Count: uint32(n)})
	}
	p.stopping, p.stop = context.WithCancel(context.Background())
	inst, err := p.startInstance(ctx)
	if err != nil {
		p.stop()
		return nil, err
	}
	p.setCurrent(inst)
	go p.supervise(inst)
	return p, nil
}

// Stats returns the preloader's counters.
func (p *Preloader) Stats() PreloaderStats {
	p.mu.Lock()
	ready := p.cur != nil
	p.mu.Unlock()
	return PreloaderStats{Route: p.cfg.Route, Restarts: p.restarts.Load(), Recycles: p.recycles.Load(), Spawned: p.spawned.Load(), Retries: p.retries.Load(), Ready: ready}
}

// Close stops the preloader: its socket is closed, so it exits; after
// timeout it is killed. An instance being started (a restart, a recycle's
// replacement) is abandoned at once, its import killed. Runs using it
// must have returned. Children already started are not its: they end with
// their cells.
func (p *Preloader) Close(timeout time.Duration) {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		<-p.done
		return
	}
	p.closed = true
	p.stop()
	inst := p.cur
	p.mu.Unlock()
	if inst != nil {
		inst.retire()
	}
	select {
	case <-p.done:
	case <-time.After(timeout):
		p.mu.Lock()
		inst := p.cur
		p.mu.Unlock()
		if inst != nil {
			p.log.Warn("preloader did not exit on close: killed", "pid", inst.pid)
			inst.proc.Kill()
		}
		<-p.done
	}
}

// setCurrent makes inst the instance requests go to.
func (p *Preloader) setCurrent(inst *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cur = inst
	close(p.readyCh)
}

// clearCurrent takes inst out of service; requests wait for the next.
func (p *Preloader) clearCurrent() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur != nil {
		p.cur = nil
		p.readyCh = make(chan struct{})
	}
}

// replaceCurrent puts next in service in place of the instance serving
// now (requests never wait: the old one served until next was ready), or
// of none (a stale one, taken out of service at once: requests waited).
func (p *Preloader) replaceCurrent(next *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == nil {
		close(p.readyCh)
	}
	p.cur = next
}

// takeOut takes inst out of service if it is the current instance:
// requests wait for the next one.
func (p *Preloader) takeOut(inst *instance) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.cur == inst {
		p.cur = nil
		p.readyCh = make(chan struct{})
	}
}

// outOfDate takes inst out of service because its view no longer covers
// a file of the daemon's (view.go) and asks the supervisor for its
// replacement; requests wait for that one. Called with inst.mu held.
func (p *Preloader) outOfDate(inst *instance) {
	if inst.stale.Swap(true) {
		return
	}
	p.log.Warn("preloader replaced: a file of the daemon's that its view covered (the policy, the TLS key) was replaced on the host", "pid", inst.pid)
	p.takeOut(inst)
	inst.broken.Store(true)
	inst.askRecycle()
}

// recycleLater asks the supervisor again, after d, to replace inst: a
// replacement failed to start. (askRecycle's request is spent, and
// outOfDate's would be lost with it.)
func (inst *instance) recycleLater(d time.Duration) {
	time.AfterFunc(d, func() {
		select {
		case inst.recycle <- struct{}{}:
		default: // one is pending
		}
	})
}

// supervise keeps an instance in service until Close: after RecycleAfter
// children it starts a replacement while the old one serves, and swaps
// them once the new one is ready (a replacement that fails is tried again
// with back-off, the old one serving meanwhile); after a death or a failed
// start it starts the next with back-off, requests waiting meanwhile.
func (p *Preloader) supervise(inst *instance) {
	defer close(p.done)
	backoff := restartMin
	for {
		select {
		case <-p.stopping.Done():
			inst.retire() // Close retired the one it saw; this may be newer
			<-inst.exited
			<-inst.out.done // its last lines logged (outputGrace at most)
			p.clearCurrent()
			return
		case <-inst.recycle:
			next, err := p.startInstance(p.stopping)
			if err != nil && p.stopping.Err() != nil {
				continue // closed: abandoned
			}
			if err != nil && inst.stale.Load() {
				// It may not serve on: ended, and restarted as after a
				// death.
				p.log.Error("preloader replacement failed to start; restarting", "pid", inst.pid, "err", err)
				inst.mu.Lock()
				inst.retire()
				inst.mu.Unlock()
				inst.proc.Kill()
				continue
			}
			if err != nil {
				p.log.Error("preloader recycle: the replacement failed to start; the old one serves on, tried again later",
					"pid", inst.pid, "err", err, "after", backoff)
				inst.recycleLater(backoff)
				backoff = min(2*backoff, restartMax)
				continue
			}
			backoff = restartMin
			p.replaceCurrent(next)
			// It exits at the end of its stream; its waiter reaps it. A
			// spawn in flight on it is answered first: closing the
			// socket under it would lose a child already cloned.
			inst.mu.Lock()
			inst.retire()
			inst.mu.Unlock()
			p.recycles.Add(1)
			if inst.stale.Load() {
				p.log.Info("preloader replaced: its view is made again", "old_pid", inst.pid, "new_pid", next.pid)
			} else {
				p.log.Info("preloader recycled", "old_pid", inst.pid, "new_pid", next.pid, "children", p.cfg.RecycleAfter)
			}
			inst = next
			continue
		case <-inst.exited:
		}
		p.clearCurrent()
		select {
		case <-p.stopping.Done():
			return
		default:
		}
		p.restarts.Add(1)
		p.log.Error("preloader exited: restarting", "pid", inst.pid, "status", fmt.Sprint(inst.state), "after", backoff)
		if !p.sleep(backoff) {
			return
		}
		backoff = min(2*backoff, restartMax)
		for {
			next, err := p.startInstance(p.stopping)
			if err == nil {
				inst = next
				p.setCurrent(inst)
				backoff = restartMin
				break
			}
			if p.stopping.Err() != nil {
				return // closed: abandoned
			}
			p.restarts.Add(1)
			p.log.Error("preloader restart failed: retrying", "err", err, "after", backoff)
			if !p.sleep(backoff) {
				return
			}
			backoff = min(2*backoff, restartMax)
		}
	}
}

// sleep waits d unless Close comes first (false).
func (p *Preloader) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-p.stopping.Done():
		return false
	}
}

// ready returns the instance in service, waiting up to WaitReady for one.
func (p *Preloader) ready(cancel <-chan struct{}) (*instance, error) {
	timer := time.NewTimer(p.cfg.WaitReady)
	defer timer.Stop()
	for {
		p.mu.Lock()
		inst, ch, closed := p.cur, p.readyCh, p.closed
		p.mu.Unlock()
		if closed {
			return nil, fmt.Errorf("%w: preloader of route %s is stopped: %w", ErrNoPreloader, p.cfg.Route, errNotReady)
		}
		if inst != nil && !inst.broken.Load() {
			return inst, nil
		}
		if inst != nil {
			// Broken (a failed spawn killed it) while the supervisor may
			// be busy starting a replacement: out of service, so that the
			// wait below is for the next one, not a spin on a closed
			// channel.
			p.takeOut(inst)
			continue
		}
		select {
		case <-ch:
		case <-cancel:
			return nil, fmt.Errorf("%w: preloader of route %s: request ended while waiting for it: %w", ErrNoPreloader, p.cfg.Route, errNotReady)
		case <-timer.C:
			return nil, fmt.Errorf("%w: preloader of route %s not ready after %s (restarting; see the log): %w", ErrNoPreloader, p.cfg.Route, p.cfg.WaitReady, errNotReady)
		}
	}
}

// startInstance starts one preloader process and waits for its first
// message: ready, or the import's error; the end of ctx abandons it.
func (p *Preloader) startInstance(ctx context.Context) (*instance, error) {
	cfg := p.cfg
	var view viewStamp
	if cfg.Confine != nil {
		view = stampView(cfg.Confine)
	}
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("preloader of route %s: socketpair: %w", cfg.Route, err)
	}
	maxSpawn := raiseSendBuffer(fds[0])
	ours, theirs := os.NewFile(uintptr(fds[0]), "preloader-socket"), os.NewFile(uintptr(fds[1]), "preloader-socket")
	defer theirs.Close()
	c, err := net.FileConn(ours)
	ours.Close()
	if err != nil {
		return nil, fmt.Errorf("preloader of route %s: socket: %w", cfg.Route, err)
	}
	conn := c.(*net.UnixConn)
	// Its fds 1 and 2: a pipe of its own, which cellgate logs line by
	// line (preload_output.go), never the daemon's stdio. Both ends are
	// close-on-exec here: no other spawn of the daemon gets them.
	outR, outW, err := os.Pipe()
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("preloader of route %s: output pipe: %w", cfg.Route, err)
	}
	defer outW.Close()
	attr := &os.ProcAttr{
		Dir:   cfg.AppDir,
		Env:   cfg.Env,
		Files: []*os.File{p.r.devNull, outW, outW, theirs},
		Sys: &syscall.SysProcAttr{
			Setpgid:   true,
			Pdeathsig: syscall.SIGKILL,
		},
	}
	var group InstanceGroup // nil: AsSelf
	if !p.r.asSelf {
		if group, err = cfg.Group.NewInstance(); err != nil {
			conn.Close()
			outR.Close()
			return nil, fmt.Errorf("%w: preloader of route %s: its instance's group: %w", ErrSpawn, cfg.Route, err)
		}
		attr.Sys.UseCgroupFD, attr.Sys.CgroupFD = true, group.FD()
		attr.Sys.Cloneflags = syscall.CLONE_NEWUSER
		attr.Sys.UidMappings = idMap(cfg.Owner, cfg.ChildUIDs)
		attr.Sys.GidMappings = []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(cfg.GID), Size: 1}}
		// setgroups(0) in the child drops the daemon's supplementary
		// groups; it needs setgroups allowed in the namespace.
		attr.Sys.GidMappingsEnableSetgroups = true
		attr.Sys.Credential = &syscall.Credential{Uid: 0, Gid: 0}
	}
	setup, err := newChildSetup(cfg.Confine, !p.r.asSelf)
	if err != nil {
		conn.Close()
		outR.Close()
		p.endInstance(0, group)
		return nil, fmt.Errorf("%w: preloader of route %s: %w", ErrSpec, cfg.Route, err)
	}
	argv := []string{cfg.Python, "-I", "-c", pythonWSGI, cfg.App, cfg.AppDir, setup}
	var proc *os.Process
	ctl := -1
	if cfg.Confine != nil {
		proc, ctl, err = p.startConfined(ctx, argv, attr, theirs)
	} else {
		proc, err = startNoNewPrivs(cfg.Python, argv, attr)
	}
	// The preloader holds its own copies: with ours closed, its death ends
	// the stream at once, and its output's once its children let go of
	// it too (a child puts the request's stderr on its fds 1 and 2 first).
	theirs.Close()
	outW.Close()
	if ctl >= 0 {
		defer unix.Close(ctl)
	}
	if err != nil {
		conn.Close()
		outR.Close()
		p.endInstance(0, group)
		hint := ""
		if attr.Sys.Cloneflags&syscall.CLONE_NEWUSER != 0 && errors.Is(err, syscall.EPERM) {
			hint = " (the kernel refused a user namespace: is cellgate chrooted (use pivot_root or switch_root instead), " +
				"or are user namespaces disabled (sysctl user.max_user_namespaces, kernel.unprivileged_userns_clone)?)"
		}
		return nil, fmt.Errorf("%w: preloader of route %s: %w%s", ErrSpawn, cfg.Route, err, hint)
	}
	out := readOutput(outR, p.log.With("pid", proc.Pid))
	inst := &instance{proc: proc, conn: conn, pid: proc.Pid, maxSpawn: maxSpawn, out: out, view: view}
	// reap waits for the preloader's end, ends what it left behind with
	// its group, and then waits for its output's end.
	reap := func() *os.ProcessState {
		var info unix.Siginfo
		err := unix.Waitid(unix.P_PID, proc.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		for err == unix.EINTR {
			err = unix.Waitid(unix.P_PID, proc.Pid, &info, unix.WEXITED|unix.WNOWAIT, nil)
		}
		p.endInstance(proc.Pid, group)
		state, _ := proc.Wait()
		out.exited()
		return state
	}
	fail := func(err error) (*instance, error) {
		conn.Close()
		proc.Kill()
		reap()
		return nil, err
	}
	conn.SetReadDeadline(time.Now().Add(cfg.StartTimeout))
	// The end of ctx ends the wait for the first message at once.
	unwatch := context.AfterFunc(ctx, func() { conn.SetReadDeadline(time.Now()) })
	buf := make([]byte, maxMessage)
	oob := make([]byte, unix.CmsgSpace(4))
	n, oobn, _, _, err := conn.ReadMsgUnix(buf, oob)
	// A ready or error message comes with no fd: any the app's code sent
	// with it is closed, not left open in the daemon (one per restart).
	got, ferr := receivedFDs(oob[:oobn])
	closeAll(got)
	if !unwatch() && ctx.Err() != nil {
		// Abandoned, whatever came (or may yet set the deadline).
		return fail(fmt.Errorf("preloader of route %s: start abandoned, its import killed: %w", cfg.Route, context.Cause(ctx)))
	}
	if err == nil && ferr != nil {
		return fail(fmt.Errorf("preloader of route %s: %w", cfg.Route, ferr))
	}
	if err != nil || n == 0 {
		// It may live on: an import still running at StartTimeout, or an
		// app that closed its socket. It is ended before it is reaped.
		conn.Close()
		proc.Kill()
		if why := execFailure(ctl); why != nil {
			reap()
			return nil, fmt.Errorf("%w: preloader of route %s: %w", ErrSpawn, cfg.Route, why)
		}
		state := reap()
		if errors.Is(err, os.ErrDeadlineExceeded) {
			return nil, fmt.Errorf("%w: preloader of route %s not ready after %s: killed (its import waits for something that never comes, "+
				"or takes longer than that: see what the app does at import)", ErrSpawn, cfg.Route, cfg.StartTimeout)
		}
		return nil, fmt.Errorf("%w: preloader of route %s ended before it was ready (%v, read: %v)", ErrSpawn, cfg.Route, state, err)
	}
	m, err := parseMessage(buf[:n], len(got), msgReady, msgError)
	if err != nil {
		return fail(fmt.Errorf("preloader of route %s: %w", cfg.Route, err))
	}
	if m.Type == msgError {
		return fail(&PreloadError{Route: cfg.Route, Output: lastOf(m.Error, maxImportError)})
	}
	conn.SetReadDeadline(time.Time{})
	inst.recycle, inst.exited = make(chan struct{}, 1), make(chan struct{})
	go func() {
		inst.state = reap()
		conn.Close()
		close(inst.exited)
	}()
	p.log.Info("preloader ready", "pid", proc.Pid, "app", cfg.App, "group", groupPath(group), "max_spawn", maxSpawn)
	return inst, nil
}

// endInstance ends what an instance of the preloader left in its group
// (a subprocess or a worker pool its app started, one that left its
// process group or session too) and removes the group; leader, the
// instance (0: never started), has ended, and is not counted. A group
// that does not empty in instanceRemoveWait is logged, and goes with the
// route group.
func (p *Preloader) endInstance(leader int, group InstanceGroup) {
	if group == nil {
		return
	}
	left := 0
	if pids, err := group.Procs(); err == nil {
		for _, pid := range pids {
			if pid != leader {
				left++
			}
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), instanceRemoveWait)
	defer cancel()
	if err := group.Remove(ctx); err != nil {
		p.log.Warn("preloader ended: its group could not be removed; it goes with the route's", "pid", leader, "group", group.Path(), "err", err)
	}
	if left > 0 {
		p.log.Warn("preloader ended: the processes its app started, left behind, are killed", "pid", leader, "killed", left)
	}
}

// retire takes the instance out of service and closes its socket: the
// preloader reads the end of the stream and exits. A spawn in flight on
// it fails, so it is called with inst.mu held, or when no Run uses the
// instance any more (Close), or to end a preloader being killed.
func (inst *instance) retire() {
	inst.broken.Store(true)
	inst.conn.Close()
}

// raiseSendBuffer raises the send buffer of cellgate's end of a
// preloader's socket so that a spawn of maxMessage bytes fits in one
// datagram (the default, net.core.wmem_default, is about 208 KiB; a
// request with a long query fills that), beyond net.core.wmem_max where
// cellgate may (SO_SNDBUFFORCE, CAP_NET_ADMIN). It returns the largest
// spawn the socket then takes. The preloader reads up to maxMessage.
func raiseSendBuffer(fd int) int {
	want := maxMessage + dgramOverhead // the kernel doubles it
	if unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUFFORCE, want) != nil {
		unix.SetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF, want)
	}
	n, err := unix.GetsockoptInt(fd, unix.SOL_SOCKET, unix.SO_SNDBUF)
	if err != nil {
		return 0
	}
	return min(maxMessage, n-dgramOverhead)
}

// errNotReady marks a wait for a ready preloader that gave up (it is not
// retried).
var errNotReady = errors.New("gave up waiting")

// idMap maps uid 0 of the namespace to owner and 1..n to children,
// merging runs of consecutive host uids into one line.
func idMap(owner uint32, children []uint32) []syscall.SysProcIDMap {
	m := []syscall.SysProcIDMap{{ContainerID: 0, HostID: int(owner), Size: 1}}
	for i, u := range children {
		last := &m[len(m)-1]
		if len(m) > 1 && last.HostID+last.Size == int(u) && last.ContainerID+last.Size == i+1 {
			last.Size++
			continue
		}
		m = append(m, syscall.SysProcIDMap{ContainerID: i + 1, HostID: int(u), Size: 1})
	}
	return m
}

func groupPath(g InstanceGroup) string {
	if g == nil {
		return ""
	}
	return g.Path()
}
