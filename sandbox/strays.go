package sandbox

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"strconv"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Stray zombies. In a container `cellgate serve` is PID 1, and every
// process orphaned in its PID namespace is reparented to it: what a cell
// leaves behind when it shares that namespace (`host_namespaces: [pid]`,
// --isolation none), or what a preloader had started when it is
// restarted. cgroup.kill ends such a process, but it stays a zombie until
// its parent waits for it, and a zombie keeps its pid charged to
// pids.current of its tenant and of the container until forks fail. A
// shim init in front of cellgate is no answer: it would sit in the
// cgroup namespace's root, which cellgate leaves for supervisor/ so that
// the root can delegate controllers.
//
// So serve, as PID 1, reaps strays itself, and never a child it waits
// for: every one of those is held through a pidfd (an os.Process's, the
// reaper's dup of it, an init of the spawner's pidfd_open'ed as soon as
// the spawner answers, a fork child's received from its preloader). A
// stray is a zombie that is cellgate's child, that was already one at the
// previous scan (a child whose pidfd is on its way, or whose waiter is
// about to run, is never taken: it is reaped within milliseconds of its
// exit, not after a scan interval), and that no fd of cellgate's refers
// to. It is reaped through a pidfd of its own (waitid P_PIDFD, so exactly
// the process that was checked); where pidfd_open fails nothing is.
//
// Which fds are pidfds of a candidate: fstat (statx without a sync, so no
// network or FUSE file system is asked) of every fd, compared with a
// pidfd of the candidate; on pidfs (Linux 6.9) one inode per process, so
// only the candidate's own pidfds compare equal; before, every anonymous
// inode does (eventfds, epolls, every pidfd), and those are told apart by
// the "Pid:" line of their fdinfo. With 6,100 fds open that is ~20-25 ms
// on a 2-CPU VM (BenchmarkStrayHeldPidfds), against ~210 ms to read every
// fdinfo, and it is paid only by a scan that found a candidate; a scan
// without one reads each thread's children file and each child's stat.

// DefaultStrayInterval is how often StrayReaper looks for stray zombies:
// one lives up to two intervals, and a child must have been a zombie
// unwaited for a whole interval before it is taken for a stray.
const DefaultStrayInterval = 5 * time.Second

// maxStrayChildren bounds the children (or, without the children files,
// the /proc entries) one scan looks at. With the children files the rest
// wait for later scans; without them each scan reads /proc from its start,
// so a process beyond the first maxStrayChildren entries is not looked at.
const maxStrayChildren = 1 << 14

// StrayConfig configures a StrayReaper. Zero fields take the documented
// defaults.
type StrayConfig struct {
	// Logger receives a debug line per stray reaped; nil discards them.
	Logger *slog.Logger
	// Interval is the time between scans (DefaultStrayInterval).
	Interval time.Duration
}

// StrayReaper reaps the zombies among the daemon's children that nothing
// in the daemon waits for. Run it only where the daemon is the init of
// its PID namespace: elsewhere orphans are not its children.
type StrayReaper struct {
	log      *slog.Logger
	interval time.Duration
	self     int
	// children: /proc/self/task/TID/children exist (CONFIG_PROC_CHILDREN);
	// without them every process in /proc is looked at.
	children bool
	prev     map[procID]struct{} // the zombies of the previous scan
	reaped   atomic.Uint64
}

// procID is a process as /proc shows it: its pid and its start time, so
// that a pid used again is another process.
type procID struct {
	pid   int
	start uint64
}

// NewStrayReaper checks that /proc is of the daemon's own PID namespace
// (the pids read there are the ones pidfd_open takes) and whether it
// lists children per thread.
func NewStrayReaper(cfg StrayConfig) (*StrayReaper, error) {
	s := &StrayReaper{log: cfg.Logger, interval: cfg.Interval, self: os.Getpid(), prev: map[procID]struct{}{}}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.interval <= 0 {
		s.interval = DefaultStrayInterval
	}
	link, err := os.Readlink("/proc/self")
	if err != nil {
		return nil, fmt.Errorf("stray reaper: readlink /proc/self: %w", err)
	}
	if link != strconv.Itoa(s.self) {
		return nil, fmt.Errorf("stray reaper: /proc/self is %q, not pid %d: /proc is not of this PID namespace (mount a /proc of its own)", link, s.self)
	}
	_, err = os.Stat(fmt.Sprintf("/proc/self/task/%d/children", s.self))
	s.children = err == nil
	return s, nil
}

// ListsChildren says whether the kernel lists children per thread
// (CONFIG_PROC_CHILDREN); without, each scan reads every process's stat.
func (s *StrayReaper) ListsChildren() bool { return s.children }

// Interval is the time between scans.
func (s *StrayReaper) Interval() time.Duration { return s.interval }

// Reaped is the number of strays reaped so far.
func (s *StrayReaper) Reaped() uint64 { return s.reaped.Load() }

// Run scans every interval until stop is closed.
func (s *StrayReaper) Run(stop <-chan struct{}) {
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		select {
		case <-stop:
			return
		case <-t.C:
			s.Scan()
		}
	}
}

// Scan looks for the daemon's zombie children once and reaps those that
// were zombies at the previous scan too and for which the daemon holds
// no pidfd. It returns how many it reaped. Run calls it; it is not safe
// for concurrent use.
func (s *StrayReaper) Scan() int {
	var both []procID
	both, s.prev = seenTwice(s.prev, s.zombies())
	if len(both) == 0 {
		return 0
	}
	cands := make(map[int]*strayCand, len(both))
	for _, id := range both {
		if c := openCand(id, s.self); c != nil {
			cands[id.pid] = c
		}
	}
	defer func() {
		for _, c := range cands {
			unix.Close(c.fd)
		}
	}()
	for pid := range heldPidfds(cands) {
		delete(cands, pid)
	}
	n := 0
	for pid, c := range cands {
		st, ok, err := waitidNoHang(c.fd)
		if err != nil || !ok {
			continue // reaped meanwhile by whoever else could (nobody should)
		}
		n++
		s.reaped.Add(1)
		s.log.Debug("reaped a stray zombie", "pid", pid, "comm", c.comm, "status", st.String())
	}
	return n
}

// seenTwice returns the zombies of cur that prev has too, and cur as the
// next scan's prev.
func seenTwice(prev map[procID]struct{}, cur []procID) ([]procID, map[procID]struct{}) {
	next := make(map[procID]struct{}, len(cur))
	var both []procID
	for _, id := range cur {
		next[id] = struct{}{}
		if _, ok := prev[id]; ok {
			both = append(both, id)
		}
	}
	return both, next
}

// zombies lists the daemon's children that are zombies, at most
// maxStrayChildren looked at.
func (s *StrayReaper) zombies() []procID {
	var out []procID
	for _, pid := range s.childPids() {
		b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
		if err != nil {
			continue
		}
		st, err := parseStat(b)
		if err == nil && st.state == 'Z' && st.ppid == s.self {
			out = append(out, procID{pid: pid, start: st.start})
		}
	}
	return out
}

// childPids lists the daemon's children from each thread's children file
// (CLONE_PARENT and reparenting make any thread the parent), or, without
// those files, every process in /proc.
func (s *StrayReaper) childPids() []int {
	var out []int
	add := func(field string) bool {
		if pid, err := strconv.Atoi(field); err == nil && pid > 0 {
			out = append(out, pid)
		}
		return len(out) < maxStrayChildren
	}
	if !s.children {
		f, err := os.Open("/proc")
		if err != nil {
			return nil
		}
		defer f.Close()
		names, _ := f.Readdirnames(maxStrayChildren)
		for _, n := range names {
			if !add(n) {
				break
			}
		}
		return out
	}
	selfChildren(add)
	return out
}

// procStat is what a stray scan reads of /proc/PID/stat.
type procStat struct {
	comm  string
	state byte
	ppid  int
	start uint64 // starttime, clock ticks after boot
}

// parseStat reads the command, state, parent and start time of a
// /proc/PID/stat line (statFields).
func parseStat(b []byte) (procStat, error) {
	comm, f, ok := statFields(b)
	if !ok {
		return procStat{}, fmt.Errorf("stat %q: no (comm)", b)
	}
	// state is field 3, ppid 4, starttime 22: f[0], f[1], f[19].
	if len(f) < 20 || len(f[0]) != 1 {
		return procStat{}, fmt.Errorf("stat %q: too few fields", b)
	}
	ppid, err := strconv.Atoi(f[1])
	if err != nil {
		return procStat{}, fmt.Errorf("stat ppid %q: %w", f[1], err)
	}
	start, err := strconv.ParseUint(f[19], 10, 64)
	if err != nil {
		return procStat{}, fmt.Errorf("stat starttime %q: %w", f[19], err)
	}
	return procStat{comm: comm, state: f[0][0], ppid: ppid, start: start}, nil
}

// strayCand is a zombie about to be reaped, held by a pidfd of its own.
type strayCand struct {
	fd   int
	comm string
	// file is the pidfd's: every pidfd of the process is that file
	// (pidfs), or every anonymous inode is (before Linux 6.9).
	file fileID
}

// fileID is a file by its device and inode.
type fileID struct{ dev, ino uint64 }

// fdFile is the file fd refers to.
func fdFile(fd int) (fileID, error) {
	var sx unix.Statx_t
	if err := unix.Statx(fd, "", unix.AT_EMPTY_PATH|unix.AT_STATX_DONT_SYNC, unix.STATX_INO, &sx); err != nil {
		return fileID{}, err
	}
	return fileID{unix.Mkdev(sx.Dev_major, sx.Dev_minor), sx.Ino}, nil
}

// openCand opens a pidfd of the zombie id and checks that it is still
// that zombie of parent's; nil if not, or if it is gone.
func openCand(id procID, parent int) *strayCand {
	fd, err := unix.PidfdOpen(id.pid, 0)
	if err != nil {
		return nil
	}
	b, err := os.ReadFile("/proc/" + strconv.Itoa(id.pid) + "/stat")
	st, perr := parseStat(b)
	if err != nil || perr != nil || st.state != 'Z' || st.ppid != parent || st.start != id.start {
		unix.Close(fd)
		return nil
	}
	file, err := fdFile(fd)
	if err != nil {
		unix.Close(fd)
		return nil
	}
	return &strayCand{fd: fd, comm: st.comm, file: file}
}

// heldPidfds returns the pids of cands that some fd of this process other
// than the candidates' own is a pidfd of.
func heldPidfds(cands map[int]*strayCand) map[int]bool {
	held := map[int]bool{}
	if len(cands) == 0 {
		return held
	}
	files := map[fileID]bool{}
	own := map[int]bool{}
	for _, c := range cands {
		files[c.file] = true
		own[c.fd] = true
	}
	all := func() map[int]bool { // cannot tell: all are held
		for pid := range cands {
			held[pid] = true
		}
		return held
	}
	d, err := os.Open("/proc/self/fd")
	if err != nil {
		return all()
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return all()
	}
	for _, n := range names {
		fd, err := strconv.Atoi(n)
		if err != nil || own[fd] {
			continue
		}
		if f, err := fdFile(fd); err != nil || !files[f] {
			continue // closed since the listing, or another file
		}
		b, err := os.ReadFile("/proc/self/fdinfo/" + n)
		if errors.Is(err, os.ErrNotExist) {
			continue // closed since
		}
		if err != nil {
			return all()
		}
		if pid := fdinfoPid(b); pid > 0 && cands[pid] != nil {
			held[pid] = true
		}
	}
	return held
}
