package sandbox

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// Mount templates. A confined cell's init used to build its whole
// filesystem view: a tmpfs root, /dev and its device nodes, each system
// directory, the program's directory and the route's mounts bound and
// remounted read-only, the symlinks, pivot_root and the detach of the
// host's tree. A system-wide profile of serve in the microVM put those
// calls (mount, mkdir, statfs, open, symlink, pivot_root, umount) at
// about 40% of the inits' CPU, the same work for every cell of a route.
//
// So the view is built once per route plan, in a mount namespace of its
// own, by an init in template mode (cellgate-init's argv[1] "template"),
// with the cell's own mounts (the private tmpfs, /proc) left as empty
// mount points and /dev read-only; the Runner keeps that namespace by fd
// (/proc/PID/ns/mnt) and the template's process exits. A cell's init is
// then started with the fd as its fd 4 and argv[1] "from-template",
// without CLONE_NEWNS: it enters the template (setns), takes a private
// copy of it (unshare(CLONE_NEWNS): the template's mounts are private,
// so nothing a cell mounts reaches it or another cell) and mounts only
// its tmpfs and /proc on the copy.
//
// A template is made from the host as it was then: the binds are of
// the directories that the paths named at that moment. Contents change
// through them as always; a path that now names another directory
// (a release directory swapped by rename) is seen by new cells once the
// template is made again. No cell starts from a template older than
// templateMaxAge (counted from the start of its making); from half that
// age on, a request has it made again in the background, so that a route
// used at least that often always finds a fresh one. A route with no
// request for warmIdle lets go of its template. A plan that cannot have
// one (Plan.Templatable), a template that could not be made (logged, the
// old one let go too; tried again after templateRetry) and the Go init,
// which has no template mode, leave each cell building its own view, as
// before.

// Entering a template (setns with CLONE_NEWNS) needs CAP_SYS_ADMIN and
// CAP_SYS_CHROOT, and a seccomp filter that allows setns; a cell's init
// has the daemon's. Where either is missing (a systemd unit's
// CapabilityBoundingSet without CAP_SYS_CHROOT, a container's profile
// that denies setns, as deploy/seccomp/cellgate.json does) every cell
// would fail at the setns, so canEnterTemplates checks both once and the
// Runner then has no templates, with one warning.

// templateMaxAge is how long a template serves before it is made again.
const templateMaxAge = 10 * time.Second

// templateRetry is the pause after a template could not be made.
const templateRetry = time.Minute

// mountTemplate is one template's namespace, held by f. refs counts the
// set (while it is the set's current one) and the starts that use it;
// the last one closes f.
type mountTemplate struct {
	f    *os.File
	refs int
	view viewStamp // made: the start of its making (view.go)
}

// templateSet is a plan's template and its making.
type templateSet struct {
	cur      *mountTemplate
	building bool
	failed   time.Time
	used     time.Time
}

type mountTemplates struct {
	hits, misses atomic.Uint64

	r *Runner
	// makeTemplate is r.makeTemplate (a test's failing one in its place).
	makeTemplate func(plan *confine.Prepared) (*os.File, error)

	mu     sync.Mutex
	sets   map[*confine.Prepared]*templateSet
	closed bool
	wg     sync.WaitGroup
}

func newMountTemplates(r *Runner) *mountTemplates {
	return &mountTemplates{r: r, makeTemplate: r.makeTemplate, sets: map[*confine.Prepared]*templateSet{}}
}

// TemplateStats counts the confined cells of templatable routes that
// started from their route's mount template (hits) and those that built
// their own view, none being fresh (misses).
func (r *Runner) TemplateStats() (hits, misses uint64) {
	if r.templates == nil {
		return 0, 0
	}
	return r.templates.hits.Load(), r.templates.misses.Load()
}

// canEnterTemplates reports why this process's children could not enter
// a mount template, or nil.
func canEnterTemplates() error {
	// setns with a bad fd fails EBADF before any permission check; a
	// filter that refuses setns answers first, with another errno.
	if err := unix.Setns(-1, unix.CLONE_NEWNS); !errors.Is(err, unix.EBADF) {
		return fmt.Errorf("setns refused (%v), e.g. by a container's seccomp profile such as deploy/seccomp/cellgate.json", err)
	}
	for _, c := range []struct {
		bit  uint
		name string
	}{{unix.CAP_SYS_ADMIN, "CAP_SYS_ADMIN"}, {unix.CAP_SYS_CHROOT, "CAP_SYS_CHROOT"}} {
		has, err := confine.Effective(c.bit)
		if err != nil {
			return err
		}
		if !has {
			return fmt.Errorf("no %s (a systemd unit's CapabilityBoundingSet, a container's capabilities)", c.name)
		}
	}
	return nil
}

// take returns plan's current template with a reference, which the
// caller gives back with release, or nil when it has none (yet). It
// starts the template's making when there is none or it is due: from
// half its age on, or at once when the daemon's files the host holds
// (hidden, hiddenNow's answer) are not those it covers (view.go).
func (t *mountTemplates) take(plan *confine.Prepared, hidden []fileID) *mountTemplate {
	if !plan.Templatable() {
		return nil
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil
	}
	now := time.Now()
	s := t.sets[plan]
	if s == nil {
		s = &templateSet{}
		t.sets[plan] = s
	}
	s.used = now
	// Made again from half its age on, so that a route used at least
	// that often never finds it too old.
	current := s.cur != nil && s.cur.view.covers(hidden)
	if !s.building && (!current || now.Sub(s.cur.view.made) >= templateMaxAge/2) && (s.failed.IsZero() || now.Sub(s.failed) >= templateRetry) {
		s.building = true
		t.wg.Go(func() { t.make(plan, s) })
	}
	if !current || now.Sub(s.cur.view.made) >= templateMaxAge {
		t.misses.Add(1)
		return nil
	}
	t.hits.Add(1)
	s.cur.refs++
	return s.cur
}

// release gives back a reference of take's.
func (t *mountTemplates) release(mt *mountTemplate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.drop(mt)
}

// drop removes a reference; the last closes the namespace's fd. With
// t.mu held.
func (t *mountTemplates) drop(mt *mountTemplate) {
	if mt.refs--; mt.refs == 0 {
		mt.f.Close()
	}
}

// sweep lets go of the templates of plans that had no request for
// warmIdle (a replaced policy's routes). With t.mu held.
func (t *mountTemplates) sweep(now time.Time) {
	for plan, s := range t.sets {
		if now.Sub(s.used) >= warmIdle && !s.building {
			if s.cur != nil {
				t.drop(s.cur)
				s.cur = nil // expire's timer finds it gone
			}
			delete(t.sets, plan)
		}
	}
}

// make makes plan's template and makes it s's current one.
func (t *mountTemplates) make(plan *confine.Prepared, s *templateSet) {
	view := stampView(plan) // the host as the template sees it
	f, err := t.makeTemplate(plan)
	t.mu.Lock()
	defer t.mu.Unlock()
	s.building = false
	// Here, at most every templateMaxAge/2 (or templateRetry) per route,
	// not per request; after a failure too, or the sets of a replaced
	// policy's routes whose templates all fail would stay for ever.
	t.sweep(time.Now())
	if err != nil {
		// The old template is let go too: what made this one fail (a
		// source gone, e.g. to revoke it) holds for the host now.
		s.failed = time.Now()
		if s.cur != nil {
			t.drop(s.cur)
			s.cur = nil
		}
		t.r.log.Warn("mount template of a confined route: its cells build their own view", "err", err, "retry", templateRetry)
		return
	}
	if t.closed || t.sets[plan] != s {
		f.Close()
		return
	}
	if s.cur != nil {
		t.drop(s.cur)
	}
	mt := &mountTemplate{f: f, refs: 1, view: view}
	s.cur = mt
	// Once too old to serve, it is let go, whether or not a request
	// comes to have it made again: its namespace holds the binds of the
	// route's mounts, and a volume an operator unmounts on the host
	// stays busy while any mount namespace shows it.
	time.AfterFunc(templateMaxAge, func() { t.expire(s, mt) })
}

// expire lets go of s's template mt once too old to serve, unless a newer
// one replaced it (or the templates were closed), and of the sets idle
// since warmIdle.
func (t *mountTemplates) expire(s *templateSet, mt *mountTemplate) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return
	}
	if s.cur == mt {
		t.drop(mt)
		s.cur = nil
	}
	t.sweep(time.Now())
}

// close waits for the makings under way and lets go of every template;
// no cell may be starting.
func (t *mountTemplates) close() {
	t.mu.Lock()
	t.closed = true
	t.mu.Unlock()
	t.wg.Wait()
	t.mu.Lock()
	defer t.mu.Unlock()
	for plan, s := range t.sets {
		if s.cur != nil {
			t.drop(s.cur)
		}
		delete(t.sets, plan)
	}
}

// makeTemplate starts an init in template mode in a mount namespace of
// its own (in the daemon's cgroup: the template is the route's, not a
// cell's), sends it plan, waits for its ready report and returns its
// mount namespace by fd. The end of the control socket ends the process.
func (r *Runner) makeTemplate(plan *confine.Prepared) (*os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	child := os.NewFile(uintptr(fds[1]), "template-control")
	path, attr := r.launcher.Attach(r.initAttr(child, unix.CLONE_NEWNS))
	var proc *os.Process
	r.spawns.do(func() {
		proc, err = startNoNewPrivs(path, []string{confine.InitArg0, confine.TemplateArg}, attr)
	})
	err = r.launchError(err)
	child.Close()
	if err != nil {
		unix.Close(fds[0])
		return nil, fmt.Errorf("start %s in template mode: %w", r.launcher.Name(), err)
	}
	ip := &initProc{proc: proc, ctl: fds[0], netns: -1}
	defer func() {
		ip.closeCtl() // the template's process ends with its control socket
		proc.Kill()   // and surely with this
		waitBlocking(proc)
	}()
	_ = ip.send(plan.Frame(), nil)
	rep, err := ip.firstReport()
	if err == nil && rep.Kind != confine.ReportReady {
		err = &reportError{msg: rep.Msg, errno: syscall.Errno(rep.Errno)}
	}
	if err != nil {
		return nil, fmt.Errorf("%s in template mode: %w", r.launcher.Name(), err)
	}
	ns, err := os.Open("/proc/" + strconv.Itoa(proc.Pid) + "/ns/mnt")
	if err != nil {
		return nil, fmt.Errorf("open the template's mount namespace: %w", err)
	}
	return ns, nil
}
