package confine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// staging is where the new root is assembled before pivot_root. It is
// covered only in the cell's own mount namespace, and bind sources are
// opened before it is covered, so a program or mount below the host's
// /tmp is still found.
const staging = "/tmp"

// Apply confines the calling process with p: it must already be in the
// namespaces p.Namespaces names (clone flags, see Namespaces.CloneFlags)
// and run as root in them. It sets its oom_score_adj (OOMScoreAdj),
// builds the filesystem view and pivots into it, sets the host name,
// brings loopback up in a new network namespace, sets the rlimits, leaves
// real-time scheduling (notRealtime), turns transparent huge pages off
// (not for a preloader, and unless HugePages), sets no_new_privs, and
// loads filter, the plan's seccomp program as DecodePlan gives it, last
// (after it the mount family is refused). The credentials are left
// alone: the cell's init starts its program under them (SysProcAttr), a
// long-lived process calls Drop. Every thread of the process is affected.
func Apply(p *Plan, filter []unix.SockFilter) error {
	if p.Preloader {
		// First, while the host's /proc is still writable here.
		if err := capUserNamespaces(); err != nil {
			return err
		}
	}
	// While /proc is still the host's and writable: a preloader's view
	// shows it read-only.
	if err := os.WriteFile("/proc/self/oom_score_adj", []byte(OOMScoreAdj), 0); err != nil {
		return fmt.Errorf("write /proc/self/oom_score_adj=%s: %w", OOMScoreAdj, err)
	}
	if p.Namespaces&NSMount != 0 {
		if err := buildRoot(p); err != nil {
			return err
		}
	}
	if p.Namespaces&NSUTS != 0 && p.Hostname != "" {
		if err := unix.Sethostname([]byte(p.Hostname)); err != nil {
			return fmt.Errorf("sethostname %q: %w", p.Hostname, err)
		}
	}
	if p.Namespaces&NSNet != 0 {
		if err := loopbackUp(); err != nil {
			return err
		}
	}
	if err := setRlimits(p); err != nil {
		return err
	}
	if err := notRealtime(); err != nil {
		return err
	}
	if !p.HugePages && !p.Preloader {
		// The flag is the process's memory's: the program keeps it across
		// its execve (Plan.HugePages). Best effort, as in the C init: a
		// kernel or sandbox that refuses it (gVisor, a profile filtering
		// prctl's options) leaves the system's setting, which costs
		// speed, not safety.
		_ = unix.Prctl(unix.PR_SET_THP_DISABLE, 1, 0, 0, 0)
	}
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	if p.Seccomp {
		if err := load(filter); err != nil {
			return err
		}
	}
	return nil
}

// maxUserNamespaces is the calling process's user namespace's own limit on
// the user namespaces created below it.
const maxUserNamespaces = "/proc/sys/user/max_user_namespaces"

// capUserNamespaces lets the calling process's user namespace create no
// user namespace, and drops CAP_SYS_RESOURCE (needed to raise the limit
// again) from the bounding set, so that what it executes never holds it.
// For a preloader, whose seccomp filter cannot refuse clone3's
// CLONE_NEWUSER.
func capUserNamespaces() error {
	if err := os.WriteFile(maxUserNamespaces, []byte("0\n"), 0); err != nil {
		return fmt.Errorf("cap the preloader's user namespaces at 0: %w (a read-only /proc/sys? run cellgate doctor)", err)
	}
	if err := unix.Prctl(unix.PR_CAPBSET_DROP, unix.CAP_SYS_RESOURCE, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_CAPBSET_DROP, CAP_SYS_RESOURCE): %w", err)
	}
	return nil
}

// Credential is who a confined program runs as.
type Credential struct {
	UID, GID uint32
	Groups   []uint32
}

// Drop switches every thread of the calling process to cred for good
// (supplementary groups, then gid, then uid): for a long-lived confined
// process that runs code of its own after Apply. Go's syscall.Set* apply
// to all threads.
func Drop(cred Credential) error {
	groups := make([]int, len(cred.Groups))
	for i, g := range cred.Groups {
		groups[i] = int(g)
	}
	if err := syscall.Setgroups(groups); err != nil {
		return fmt.Errorf("setgroups %v: %w", cred.Groups, err)
	}
	if err := syscall.Setresgid(int(cred.GID), int(cred.GID), int(cred.GID)); err != nil {
		return fmt.Errorf("setresgid %d: %w", cred.GID, err)
	}
	if err := syscall.Setresuid(int(cred.UID), int(cred.UID), int(cred.UID)); err != nil {
		return fmt.Errorf("setresuid %d: %w", cred.UID, err)
	}
	return nil
}

// CoreLimit is RLIMIT_CORE, soft and hard, of every confined program
// (and preloader): 1 byte, not 0. The kernel writes no core file under
// a page, and for a core_pattern that pipes cores to a helper
// (systemd-coredump, apport) it ignores the limit, but for 1, which it
// answers with no dump at all ("RLIMIT_CORE is set to 1, aborting
// core", fs/coredump.c): with 0 a crashing program had the helper
// started, as root on the host, outside the cell, reading its whole
// memory. The filter refuses setting the limit again (seccomp.go).
const CoreLimit = 1

// MemLockLimit is RLIMIT_MEMLOCK, soft and hard, of every confined
// program (and preloader): 64 KiB, Linux's default until 5.16 (8 MiB
// since). Locking a file's pages does not charge them to the locker: a
// page some other group read first stays that group's, and becomes
// unevictable under it while locked, so each of a cell's processes (as
// many as its pids.max) could pin 8 MiB of the host's page cache (of any
// file of its view), beyond its memory.max, for as long as it ran.
const MemLockLimit = 64 << 10

// notRealtime switches every thread of the calling process that runs
// under a real-time or deadline policy to SCHED_OTHER, its nice value
// kept: cpu.max bounds only SCHED_OTHER's (CFS) time, so a cell's process
// under SCHED_FIFO, inherited from a daemon run real-time (systemd's
// CPUSchedulingPolicy=), escapes its cell's CPU limit (seen in the
// microVM: a spinner at cpu 0.1 used 2.9 s of CPU in 3 s). With
// RLIMIT_RTPRIO 0 (setRlimits) the program cannot take one back. Threads
// under SCHED_BATCH or SCHED_IDLE, an operator's choice to make cellgate
// yield, keep them. Likewise the real-time I/O class (systemd's
// IOSchedulingClass=realtime), which the I/O schedulers serve before every
// other whatever the groups' io.weight, goes back to the default class
// (taking it needs CAP_SYS_ADMIN, which a program has not); the idle
// class stays.
func notRealtime() error {
	const dir = "/proc/thread-self/.."
	tasks, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("list the threads to leave real-time scheduling: %w", err)
	}
	for _, task := range tasks {
		tid, ok := ownTID(filepath.Join(dir, task.Name(), "status"))
		if !ok {
			continue // a thread that has ended
		}
		policy, _, errno := unix.RawSyscall(unix.SYS_SCHED_GETSCHEDULER, uintptr(tid), 0, 0)
		if errno == unix.ESRCH {
			continue // a thread that has ended
		}
		if errno != 0 {
			return fmt.Errorf("sched_getscheduler(%d): %w", tid, errno)
		}
		switch policy &^ unix.SCHED_RESET_ON_FORK {
		case unix.SCHED_FIFO, unix.SCHED_RR, unix.SCHED_DEADLINE:
			// sched_setscheduler keeps the nice value and clears the
			// real-time priority and deadline parameters.
			var prio int32 // struct sched_param
			if _, _, errno := unix.RawSyscall(unix.SYS_SCHED_SETSCHEDULER, uintptr(tid), unix.SCHED_NORMAL, uintptr(unsafe.Pointer(&prio))); errno != 0 {
				return fmt.Errorf("sched_setscheduler(%d, SCHED_OTHER): %w", tid, errno)
			}
		}
		ioprio, _, errno := unix.RawSyscall(unix.SYS_IOPRIO_GET, ioprioWhoProcess, uintptr(tid), 0)
		if errno == unix.ESRCH {
			continue
		}
		if errno != 0 {
			return fmt.Errorf("ioprio_get(%d): %w", tid, errno)
		}
		if ioprio>>ioprioClassShift == ioprioClassRT {
			// The default class, from the CPU policy's.
			if _, _, errno := unix.RawSyscall(unix.SYS_IOPRIO_SET, ioprioWhoProcess, uintptr(tid), 0); errno != 0 {
				return fmt.Errorf("ioprio_set(%d, IOPRIO_CLASS_NONE): %w", tid, errno)
			}
		}
	}
	return nil
}

// notFavoured undoes, for the calling thread (the one whose fork or
// execve starts the program: both are a thread's own), the rest of what a
// daemon started favoured, or with its defences weakened, would hand the
// program: a nice value below 0 (systemd's Nice=) goes to 0, while a
// positive one, an operator's choice to have cellgate yield, stays
// (RLIMIT_NICE 0, setRlimits, keeps the program from lowering it again);
// and the personality flags the kernel clears for a set-uid program
// (perClearOnSetID: no address space randomisation, as setarch -R gives
// it, readable memory executable, the legacy layout, page zero mapped)
// are cleared. The cell's CPU share is its group's whatever the nice
// value where the cpu controller is enabled; without it (--unenforced)
// the nice value is all that orders a cell against the host.
func notFavoured() error {
	prio, err := unix.Getpriority(unix.PRIO_PROCESS, 0) // the kernel's 20 - nice
	if err != nil {
		return fmt.Errorf("getpriority: %w", err)
	}
	if prio > 20 {
		if err := unix.Setpriority(unix.PRIO_PROCESS, 0, 0); err != nil {
			return fmt.Errorf("setpriority(PRIO_PROCESS, 0): %w", err)
		}
	}
	persona, _, errno := unix.RawSyscall(unix.SYS_PERSONALITY, 0xffffffff, 0, 0)
	if errno == unix.EPERM {
		// A seccomp filter locks the personality, even against a query:
		// systemd's LockPersonality= (the unit's), which allows no value
		// but the one its service started with, a plain one (its
		// Personality= names an architecture, no flag), and so refused
		// any flag to whatever ran after it.
		return nil
	}
	if errno != 0 {
		return fmt.Errorf("personality: %w", errno)
	}
	if persona&perClearOnSetID != 0 {
		if _, _, errno := unix.RawSyscall(unix.SYS_PERSONALITY, persona&^perClearOnSetID, 0, 0); errno != 0 {
			return fmt.Errorf("personality(%#x): %w", persona&^perClearOnSetID, errno)
		}
	}
	return nil
}

// perClearOnSetID is linux/personality.h's PER_CLEAR_ON_SETID:
// READ_IMPLIES_EXEC, ADDR_NO_RANDOMIZE, ADDR_COMPAT_LAYOUT and
// MMAP_PAGE_ZERO.
const perClearOnSetID = 0x0400000 | 0x0040000 | 0x0200000 | 0x0100000

// ownTID reads a thread's id in the caller's PID namespace from its
// status file (the last of NSpid's): /proc may still be the host's, whose
// directory names are ids of another namespace. false: the thread has
// ended.
func ownTID(status string) (int, bool) {
	b, err := os.ReadFile(status)
	if err != nil {
		return 0, false
	}
	for line := range strings.Lines(string(b)) {
		if ids, ok := strings.CutPrefix(line, "NSpid:"); ok {
			f := strings.Fields(ids)
			if len(f) == 0 {
				return 0, false
			}
			tid, err := strconv.Atoi(f[len(f)-1])
			return tid, err == nil
		}
	}
	return 0, false
}

// OOMScoreAdj is the oom_score_adj of every confined program (and
// preloader, and init): when the host, not a cell's group, runs out of
// memory, the kernel kills a cell before any other process, cellgate
// first among them, whichever is largest. A cell would otherwise inherit
// the daemon's (0, or a unit's OOMScoreAdjust=, negative to protect it,
// which would protect the cells too). Set as root with CAP_SYS_RESOURCE
// it is also the least the program may set (oom_score_adj_min).
const OOMScoreAdj = "1000"

// noKeptCaps clears the calling thread's securebits, ambient and inheritable
// capabilities, inherited from cellgate, so that the program's change of
// uid, and its execve, leave it no capability; the thread that forks or
// executes the program calls it (they are a thread's, not the
// process's). With a unit's SecureBits=no-setuid-fixup and
// AmbientCapabilities= (seen in the microVM with setpriv), a confined
// program under its own uid held CAP_SYS_ADMIN and CAP_NET_ADMIN of the
// host's user namespace. Locked bits cannot be cleared: the cell then
// fails to start, with the reason.
func noKeptCaps() error {
	bits, err := unix.PrctlRetInt(unix.PR_GET_SECUREBITS, 0, 0, 0, 0)
	if err != nil {
		return fmt.Errorf("prctl(PR_GET_SECUREBITS): %w", err)
	}
	if bits != 0 {
		if err := unix.Prctl(unix.PR_SET_SECUREBITS, 0, 0, 0, 0); err != nil {
			return fmt.Errorf("clear the securebits %#x cellgate runs with (a unit's SecureBits=; locked ones cannot be): prctl(PR_SET_SECUREBITS, 0): %w", bits, err)
		}
	}
	if err := unix.Prctl(unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0); err != nil {
		return fmt.Errorf("prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL): %w", err)
	}
	// The inheritable set too: a program run as the host's root gets it
	// at its execve beside its bounding set.
	h := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var d [2]unix.CapUserData
	if err := unix.Capget(&h, &d[0]); err != nil {
		return fmt.Errorf("capget: %w", err)
	}
	if d[0].Inheritable != 0 || d[1].Inheritable != 0 {
		d[0].Inheritable, d[1].Inheritable = 0, 0
		if err := unix.Capset(&h, &d[0]); err != nil {
			return fmt.Errorf("clear the inheritable capabilities cellgate runs with: capset: %w", err)
		}
	}
	return nil
}

// ioprio_get and ioprio_set's constants (linux/ioprio.h).
const (
	ioprioWhoProcess = 1
	ioprioClassShift = 13
	ioprioClassRT    = 1
)

func setRlimits(p *Plan) error {
	if err := syscall.Setrlimit(unix.RLIMIT_CORE, &syscall.Rlimit{Cur: CoreLimit, Max: CoreLimit}); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_CORE, %d): %w", CoreLimit, err)
	}
	if err := syscall.Setrlimit(unix.RLIMIT_MEMLOCK, &syscall.Rlimit{Cur: MemLockLimit, Max: MemLockLimit}); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_MEMLOCK, %d): %w", MemLockLimit, err)
	}
	// No real-time policy for a program (notRealtime), nor a nice value
	// below the one it starts with (notFavoured).
	if err := syscall.Setrlimit(unix.RLIMIT_RTPRIO, &syscall.Rlimit{}); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_RTPRIO, 0): %w", err)
	}
	if err := syscall.Setrlimit(unix.RLIMIT_NICE, &syscall.Rlimit{}); err != nil {
		return fmt.Errorf("setrlimit(RLIMIT_NICE, 0): %w", err)
	}
	if p.NoFile > 0 {
		// syscall.Setrlimit, not unix's: it also tells os.StartProcess not
		// to restore the limit the runtime found at start-up.
		if err := syscall.Setrlimit(unix.RLIMIT_NOFILE, &syscall.Rlimit{Cur: p.NoFile, Max: p.NoFile}); err != nil {
			return fmt.Errorf("setrlimit(RLIMIT_NOFILE, %d): %w", p.NoFile, err)
		}
	}
	return nil
}

// buildRoot executes p.steps(): sources are opened (O_PATH) on the host's
// view, the new root is assembled on staging, then pivot_root makes it the
// root and the host's tree is detached.
func buildRoot(p *Plan) error {
	// Nothing done here may propagate back to the host's mounts.
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		return fmt.Errorf("make / private in the cell's mount namespace: %w", err)
	}
	steps := p.steps()
	srcs := make([]int, len(steps))
	defer func() {
		for _, fd := range srcs {
			if fd > 0 {
				unix.Close(fd)
			}
		}
	}()
	for i, s := range steps {
		if s.source == "" {
			continue
		}
		fd, err := unix.Open(s.source, unix.O_PATH|unix.O_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open %s to bind it at %s: %w", s.source, s.target, err)
		}
		srcs[i] = fd
	}
	for i, s := range steps {
		if err := runStep(s, srcs[i], p.RootFS != "" && !inCellTmpfs(s.target)); err != nil {
			return err
		}
	}
	return pivot()
}

// inCellTmpfs reports whether target lies below one of the tmpfs the init
// mounts in every view (/dev, /tmp, /var/tmp: /dev/shm is below /dev),
// where it makes mount points and symlinks even in a rootfs, whose own
// tree it never changes. Before, a rootfs's cells failed at the first of
// /dev's nodes, whose mount point no rootfs can hold (/dev is the cell's
// own tmpfs).
func inCellTmpfs(target string) bool {
	for _, d := range []string{"/dev/", "/tmp/", "/var/tmp/"} {
		if strings.HasPrefix(target, d) {
			return true
		}
	}
	return false
}

func runStep(s step, src int, rootfs bool) error {
	at := filepath.Join(staging, s.target)
	fdPath := "/proc/self/fd/" + strconv.Itoa(src)
	switch s.kind {
	case stepRootTmpfs:
		if err := unix.Mount("cellroot", staging, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, "mode=0755,size=1m,nr_inodes=4096"); err != nil {
			return fmt.Errorf("mount the cell's root tmpfs on %s: %w", staging, err)
		}
	case stepRootBind:
		if _, err := bindTree(fdPath, staging, rootfsAttrs); err != nil {
			return fmt.Errorf("bind rootfs %s: %w", s.source, err)
		}
	case stepTmpfs:
		if err := mountpoint(at, true, rootfs); err != nil {
			return err
		}
		data := fmt.Sprintf("mode=%o", s.tmpfs.Mode)
		if s.tmpfs.Size > 0 {
			data += fmt.Sprintf(",size=%d", s.tmpfs.Size)
		}
		if err := unix.Mount("tmpfs", at, "tmpfs", unix.MS_NOSUID|unix.MS_NODEV, data); err != nil {
			return fmt.Errorf("mount tmpfs on %s (%s): %w", s.target, data, err)
		}
	case stepBind, stepHostProc:
		var st unix.Stat_t
		if s.bind.Mask && (unix.Lstat(at, &st) != nil || st.Mode&unix.S_IFMT != unix.S_IFREG) {
			return nil // a mask covers a file only where it still is
		}
		if err := unix.Fstat(src, &st); err != nil {
			return fmt.Errorf("stat %s: %w", s.source, err)
		}
		if err := mountpoint(at, st.Mode&unix.S_IFMT == unix.S_IFDIR, rootfs); err != nil {
			return err
		}
		flat, err := bindTree(fdPath, at, bindAttrs(s.bind))
		if err != nil {
			return fmt.Errorf("bind %s on %s: %w", s.source, s.target, err)
		}
		if flat {
			if err := remountBind(at, s.bind); err != nil {
				return fmt.Errorf("bind %s on %s: %w", s.source, s.target, err)
			}
		}
	case stepSymlink:
		if err := os.MkdirAll(filepath.Dir(at), 0o755); err != nil && !rootfs {
			return fmt.Errorf("symlink %s: %w", s.link.Link, err)
		}
		if err := unix.Symlink(s.link.Target, at); err != nil && !(rootfs && errors.Is(err, unix.EEXIST)) {
			return fmt.Errorf("symlink %s -> %s: %w", s.link.Link, s.link.Target, err)
		}
	case stepProc:
		if err := mountpoint(at, true, rootfs); err != nil {
			return err
		}
		if err := unix.Mount("proc", at, "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("mount proc on /proc: %w", err)
		}
	case stepProcReadOnly:
		return procReadOnly(at)
	case stepRootReadOnly:
		if err := unix.Mount("", staging, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, ""); err != nil {
			return fmt.Errorf("make the cell's root read-only: %w", err)
		}
	}
	return nil
}

// procReadOnly binds each of ProcReadOnly onto itself, read-only, in the
// /proc mounted at at.
func procReadOnly(at string) error {
	for _, name := range ProcReadOnly {
		p := filepath.Join(at, name)
		if _, err := os.Lstat(p); errors.Is(err, fs.ErrNotExist) {
			continue // not in this kernel
		}
		if err := unix.Mount(p, p, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("make /proc/%s read-only for a program run as root: %w", name, err)
		}
		if err := unix.Mount("", p, "", unix.MS_REMOUNT|unix.MS_BIND|unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
			return fmt.Errorf("make /proc/%s read-only for a program run as root: %w", name, err)
		}
	}
	return nil
}

// rootBounding cuts the calling thread's bounding set to RootCaps: the
// execve of a program run as root gives it the bounding set and no more.
// The thread that forks the program calls it (a bounding set is a
// thread's).
func rootBounding() error {
	extra, err := beyondRootCaps()
	if err != nil {
		return err
	}
	for _, c := range extra {
		if err := unix.Prctl(unix.PR_CAPBSET_DROP, c, 0, 0, 0); err != nil {
			return fmt.Errorf("prctl(PR_CAPBSET_DROP, %d) for a program run as root: %w", c, err)
		}
	}
	return nil
}

// beyondRootCaps are the capabilities of the calling thread's bounding
// set that RootCaps does not hold.
func beyondRootCaps() ([]uintptr, error) {
	var extra []uintptr
	for c := uintptr(0); c < 64; c++ {
		if slices.Contains(RootCaps, c) {
			continue
		}
		in, err := unix.PrctlRetInt(unix.PR_CAPBSET_READ, c, 0, 0, 0)
		if errors.Is(err, unix.EINVAL) {
			break // past the kernel's last capability
		}
		if err != nil {
			return nil, fmt.Errorf("prctl(PR_CAPBSET_READ, %d): %w", c, err)
		}
		if in == 1 {
			extra = append(extra, c)
		}
	}
	return extra, nil
}

// ErrNoSetpcap is CanCutRootCaps' answer where this process lacks
// CAP_SETPCAP.
var ErrNoSetpcap = errors.New("cutting the capabilities of a program run as root to those root keeps in a cell needs CAP_SETPCAP, which cellgate lacks (a systemd unit's CapabilityBoundingSet, a container's capabilities)")

// CanCutRootCaps reports why the inits this process starts could not cut
// a program run as root in a view of its own to RootCaps, or nil. A
// bounding set's capability is dropped with CAP_SETPCAP, which is needed
// unless the bounding set holds nothing beyond RootCaps already (the
// inits inherit both from the daemon). serve refuses a route run as root
// without it, rather than have each of its requests fail.
func CanCutRootCaps() error {
	extra, err := beyondRootCaps()
	if err != nil || len(extra) == 0 {
		return err
	}
	switch has, err := Effective(unix.CAP_SETPCAP); {
	case err != nil:
		return err
	case !has:
		return ErrNoSetpcap
	}
	return nil
}

// ErrNoUserNS is CanEnterUserNS's answer where a program cannot be run as
// root of a user namespace of its own.
var ErrNoUserNS = errors.New("a program run as root runs as root of a user namespace of its own, which this process cannot give it")

// ErrUserNSNeedsCInit is why a program run as root of a user namespace of
// its own (Plan.RootMap) cannot start where the cells' init is the Go one.
var ErrUserNSNeedsCInit = fmt.Errorf("a program run as root runs as root of a user namespace of its own, which needs %s: install it beside cellgate (make build), or set host_namespaces: [user] to run it as the host's root", InitArg0)

// CanEnterUserNS reports why the inits this process starts could not run
// a program as root of a user namespace of its own (Plan.RootMap), or
// nil: the program enters it with setns, which a container's seccomp
// profile may refuse (setns with a bad fd fails EBADF before any
// permission check; a filter answers first), and the init makes it,
// which user.max_user_namespaces 0 refuses.
func CanEnterUserNS() error {
	if err := unix.Setns(-1, unix.CLONE_NEWUSER); !errors.Is(err, unix.EBADF) {
		return fmt.Errorf("%w: setns of a user namespace is refused (%v), e.g. by a container's seccomp profile that denies setns whatever its type", ErrNoUserNS, err)
	}
	if b, err := os.ReadFile(maxUserNamespaces); err == nil && strings.TrimSpace(string(b)) == "0" {
		return fmt.Errorf("%w: user namespaces are off (user.max_user_namespaces = 0)", ErrNoUserNS)
	}
	return nil
}

// CheckRunAs reports why a program of this plan could not run under uid,
// or nil: one run as the host's root needs its capabilities cut
// (CutsRootCaps), which this process must be able to do
// (CanCutRootCaps); one run as root of a user namespace of its own
// (RootMap) needs it made and entered (CanEnterUserNS). serve and run
// call it when they load a route or a command, never per request.
func (p *Prepared) CheckRunAs(uid uint32) error {
	switch {
	case uid == 0 && p.plan.RootMap != nil:
		return CanEnterUserNS()
	case p.plan.CutsRootCaps(uid):
		return CanCutRootCaps()
	}
	return nil
}

// Effective reports whether the calling thread holds capability c in its
// effective set.
func Effective(c uint) (bool, error) {
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return false, fmt.Errorf("capget: %w", err)
	}
	return data[c/32].Effective&(1<<(c%32)) != 0, nil
}

// remountBind applies the bind's flags: read-only unless writable, nosuid,
// nodev unless it carries device nodes, and whatever the source's mount
// had (noexec stays noexec).
func remountBind(at string, b Bind) error {
	var sfs unix.Statfs_t
	if err := unix.Statfs(at, &sfs); err != nil {
		return fmt.Errorf("statfs: %w", err)
	}
	flags := uintptr(unix.MS_REMOUNT | unix.MS_BIND | unix.MS_NOSUID)
	for _, f := range []struct{ st, ms int64 }{
		{unix.ST_NOEXEC, unix.MS_NOEXEC}, {unix.ST_NOATIME, unix.MS_NOATIME},
		{unix.ST_NODIRATIME, unix.MS_NODIRATIME}, {unix.ST_RELATIME, unix.MS_RELATIME},
		{unix.ST_RDONLY, unix.MS_RDONLY}, {unix.ST_NODEV, unix.MS_NODEV},
	} {
		if sfs.Flags&f.st != 0 {
			flags |= uintptr(f.ms)
		}
	}
	if !b.Writable {
		flags |= unix.MS_RDONLY
	}
	if !b.Dev {
		flags |= unix.MS_NODEV
	}
	if err := unix.Mount("", at, "", flags, ""); err != nil {
		return fmt.Errorf("remount (flags %#x): %w", flags, err)
	}
	return nil
}

// A bind is recursive: the host's mounts below its source come with it,
// each with its own flags, which a remount of the bind does not change.
// So the attributes that make a bind safe (read-only unless writable,
// nosuid, nodev unless Dev) are set on every mount of the tree with
// mount_setattr(AT_RECURSIVE): without it a host file system mounted
// below a read-only bind stayed writable in the cell, and one without
// nosuid or nodev (a /dev bound into a rootfs) kept them. Where
// mount_setattr is refused (ENOSYS before Linux 5.12, EPERM under a
// seccomp profile) the bind is made again without MS_REC, so that no
// mount of the host's below it is in the view at all, and every later
// bind of the process is made so (bindsFlat).
var bindsFlat atomic.Bool

// rootfsAttrs is what a rootfs's mounts get, its root's included:
// read-only, nosuid, nodev, as the root gets at the end of the view's
// making (stepRootReadOnly).
var rootfsAttrs = unix.MountAttr{Attr_set: unix.MOUNT_ATTR_RDONLY | unix.MOUNT_ATTR_NOSUID | unix.MOUNT_ATTR_NODEV}

// bindAttrs is what every mount of a bind's tree gets, its root's
// included (remountBind's flags, which the bind's copy of the host's
// mount keeps besides).
func bindAttrs(b Bind) unix.MountAttr {
	a := unix.MountAttr{Attr_set: unix.MOUNT_ATTR_NOSUID}
	if !b.Writable {
		a.Attr_set |= unix.MOUNT_ATTR_RDONLY
	}
	if !b.Dev {
		a.Attr_set |= unix.MOUNT_ATTR_NODEV
	}
	return a
}

// bindTree binds src (a /proc/self/fd path) on at with its tree, every
// mount of which gets attr, its root's included: a bind copies the flags
// of the host's mount, and attr adds to them, so no remount follows (a
// rootfs's root is read-only from the start, as stepRootReadOnly leaves
// it: nothing is made in it). Where mount_setattr is refused, the bind is
// made without its tree and flat is true: the caller gives its root the
// flags with a remount (remountBind).
func bindTree(src, at string, attr unix.MountAttr) (flat bool, err error) {
	if bindsFlat.Load() {
		return true, unix.Mount(src, at, "", unix.MS_BIND, "")
	}
	if err := unix.Mount(src, at, "", unix.MS_BIND|unix.MS_REC, ""); err != nil {
		return false, err
	}
	err = unix.MountSetattr(unix.AT_FDCWD, at, unix.AT_RECURSIVE, &attr)
	if err == nil {
		return false, nil
	}
	if !errors.Is(err, unix.ENOSYS) && !errors.Is(err, unix.EPERM) {
		return false, fmt.Errorf("mount_setattr(AT_RECURSIVE) %s: %w", at, err)
	}
	bindsFlat.Store(true)
	if err := unix.Unmount(at, unix.MNT_DETACH); err != nil {
		return false, fmt.Errorf("unmount the recursive bind on %s: %w", at, err)
	}
	return true, unix.Mount(src, at, "", unix.MS_BIND, "")
}

// mountpoint makes sure at exists as a directory (dir) or a file to mount
// on. Under a rootfs nothing is created: the operator's tree must have it.
func mountpoint(at string, dir, rootfs bool) error {
	if _, err := os.Lstat(at); err == nil {
		return nil
	} else if rootfs {
		return fmt.Errorf("mount point %s: %w (create it in the rootfs)", at[len(staging):], err)
	}
	if err := os.MkdirAll(filepath.Dir(at), 0o755); err != nil {
		return fmt.Errorf("mount point %s: %w", at[len(staging):], err)
	}
	if dir {
		if err := unix.Mkdir(at, 0o755); err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("mount point %s: %w", at[len(staging):], err)
		}
		return nil
	}
	fd, err := unix.Open(at, unix.O_CREAT|unix.O_WRONLY|unix.O_CLOEXEC, 0o644)
	if err != nil {
		return fmt.Errorf("mount point %s: %w", at[len(staging):], err)
	}
	return unix.Close(fd)
}

// pivot makes staging the root and detaches the host's tree
// (pivot_root(".", ".") then a lazy unmount of the old root stacked
// below, as runc does).
func pivot() error {
	if err := unix.Chdir(staging); err != nil {
		return fmt.Errorf("chdir %s: %w", staging, err)
	}
	if err := unix.PivotRoot(".", "."); err != nil {
		return fmt.Errorf("pivot_root into the cell's root: %w", err)
	}
	if err := unix.Unmount(".", unix.MNT_DETACH); err != nil {
		return fmt.Errorf("detach the host's root: %w", err)
	}
	if err := unix.Chdir("/"); err != nil {
		return fmt.Errorf("chdir /: %w", err)
	}
	return nil
}

// loopbackUp sets IFF_UP on lo, the only interface of a new network
// namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket for lo: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("bring lo up: %w", err)
	}
	return nil
}

// lockForFork pins the goroutine to its thread, on which no_new_privs is
// set, no capability is kept (noKeptCaps) and nothing favoured is left
// (notFavoured), each a thread's own, for a fork that must inherit them;
// call the returned func after.
func lockForFork() (func(), error) {
	runtime.LockOSThread()
	if err := unix.Prctl(unix.PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0); err != nil {
		runtime.UnlockOSThread()
		return nil, fmt.Errorf("prctl(PR_SET_NO_NEW_PRIVS): %w", err)
	}
	if err := noKeptCaps(); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	if err := notFavoured(); err != nil {
		runtime.UnlockOSThread()
		return nil, err
	}
	return runtime.UnlockOSThread, nil
}
