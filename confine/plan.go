package confine

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// Namespaces is a set of Linux namespaces.
type Namespaces uint8

// The namespaces a cell can have of its own.
const (
	NSMount Namespaces = 1 << iota // its own filesystem view (and so its own /proc, /tmp, /dev/shm)
	NSPID                          // its own PIDs: it sees and signals only its own processes
	NSIPC                          // its own SysV IPC and POSIX message queues
	NSUTS                          // its own host name
	NSNet                          // its own network: only a loopback interface

	// AllNamespaces is every namespace a cell can have.
	AllNamespaces = NSMount | NSPID | NSIPC | NSUTS | NSNet
)

var nsNames = []struct {
	ns   Namespaces
	name string
	flag uintptr
}{
	{NSMount, "mount", unix.CLONE_NEWNS},
	{NSPID, "pid", unix.CLONE_NEWPID},
	{NSIPC, "ipc", unix.CLONE_NEWIPC},
	{NSUTS, "uts", unix.CLONE_NEWUTS},
	{NSNet, "net", unix.CLONE_NEWNET},
}

// CloneFlags are the CLONE_NEW* flags that create the namespaces.
func (n Namespaces) CloneFlags() uintptr {
	var f uintptr
	for _, e := range nsNames {
		if n&e.ns != 0 {
			f |= e.flag
		}
	}
	return f
}

// String lists the namespaces by name ("mount pid"), or "none".
func (n Namespaces) String() string {
	var names []string
	for _, e := range nsNames {
		if n&e.ns != 0 {
			names = append(names, e.name)
		}
	}
	if len(names) == 0 {
		return "none"
	}
	return strings.Join(names, " ")
}

// ParseNamespace returns the namespace of a name of String's.
func ParseNamespace(name string) (Namespaces, bool) {
	for _, e := range nsNames {
		if e.name == name {
			return e.ns, true
		}
	}
	return 0, false
}

// Bind makes a host path visible in the cell.
type Bind struct {
	// Source is the host path; Target where the cell sees it (absolute,
	// clean). A file is bound onto a file, a directory onto a directory.
	Source, Target string
	// Writable binds read-write; otherwise the bind is read-only.
	Writable bool
	// Dev keeps device nodes usable (the entries of /dev); other binds are
	// nodev. All binds are nosuid.
	Dev bool
	// Mask covers a file of the daemon's (Options.Hidden) with the null
	// device: it is bound only where a regular file still is at Target
	// when the cell's view is built, and its mount point is never made (a
	// policy file replaced or removed since the plan fails no cell).
	Mask bool
	// Hides is the host path of the file a Mask covers. It is not sent to
	// the init: the daemon reads it to learn when a view made earlier no
	// longer covers the file (Prepared.Hidden).
	Hides string
}

// Symlink is a symbolic link created in the cell's root: Link (absolute)
// points to Target (as readlink gives it). System directories that are
// symlinks on the host (/bin -> usr/bin) are recreated this way.
type Symlink struct {
	Link, Target string
}

// Tmpfs is a private tmpfs mount of the cell: its pages are charged to the
// cell's memory and it is gone with the cell's mount namespace.
type Tmpfs struct {
	Target string
	Size   int64  // bytes (size=); 0 is the kernel's default (half of RAM)
	Mode   uint32 // mode of its root (1777 for /tmp)
}

// Plan is one route's confinement as data: built once per route (Build),
// encoded once (Prepare), applied inside each cell (Apply). A Plan is not
// modified after Build returns it.
type Plan struct {
	// Namespaces are the namespaces the cell gets of its own.
	Namespaces Namespaces
	// RootFS is a directory bound read-only as the cell's root; "" gives the
	// cell an empty read-only tmpfs root holding only what Binds, Symlinks
	// and Tmpfs put there. Used only with NSMount.
	RootFS string
	// Binds, Symlinks and Tmpfs build the filesystem view (with NSMount);
	// a fresh /proc and a minimal /dev are always part of it.
	Binds    []Bind
	Symlinks []Symlink
	Tmpfs    []Tmpfs
	// Hostname is the cell's host name (with NSUTS).
	Hostname string
	// Seccomp loads the default deny list (see Filter).
	Seccomp bool
	// NoFile is RLIMIT_NOFILE (soft and hard) of the program; 0 leaves the
	// daemon's. RLIMIT_CORE is always CoreLimit: a cell never dumps core.
	NoFile uint64
	// HugePages leaves the kernel's transparent huge page setting to the
	// program; without it the init sets PR_SET_THP_DISABLE, which the
	// program inherits across its execve: a process that lives for one
	// request would otherwise have the kernel clear a whole 2 MiB page at
	// its first touch of a region (the Go runtime's heap, a large malloc)
	// where it uses a few KiB, in its time and in its memory.peak. A
	// preloader's plan (Preloader) keeps the system's setting whatever
	// HugePages says: it is long-lived, and its children share its pages.
	HugePages bool
	// Preloader applies the plan to a fork route's preloader rather than to
	// a cell (see ForPreloader): NSPID is then the namespace each of its
	// children gets, not the preloader's own.
	Preloader bool
	// Resident lets the route's cells be resident (Prepared.ResidentFrame):
	// an init, its namespaces and its view kept across requests, each
	// request's program cloned by that init into a group of the request's
	// own, and loading the filter itself; between requests the init ends
	// every other process of its PID namespace, removes every SysV object
	// and POSIX message queue of its IPC namespace (or, where it cannot
	// mount the queues' file system, gives each program an IPC namespace
	// of its own) and empties the private tmpfs (finish). Only with a
	// PID namespace of the cell's own (which that end needs) and never a
	// preloader's. A decoded plan has it only from a resident frame.
	Resident bool
	// Root: the route's program runs as root (allow_root), in a view of its
	// own (NSMount). The kernel lets uid 0 write the sysctls without any
	// capability (kernel.core_pattern and kernel.modprobe start a program
	// as root on the host), so the cell's /proc has them read-only, with
	// the other parts of it through which root changes the host's kernel
	// (ProcReadOnly). Whatever Root says, a program run as the host's root
	// in a view of its own keeps only RootCaps of its capabilities.
	Root bool
	// RootMap, with Root: a program run as root is root of a user
	// namespace of its own, whose uid 0 and gid 0 are these host ids, and
	// not the host's root. Its capabilities hold only in that namespace,
	// which owns no other namespace and no file but its own: it reads
	// what the view shows to others (or to the gid), writes what is its
	// own, and counts against the kernel's per-user limits as that uid
	// (epoll watches, inotify instances), never as uid 0, which is
	// cellgate's and the host's root's. The init makes the namespace
	// (cellgate-init only) as it applies the plan, before its filter, and
	// each program enters it before its execve (setns, which the plan's
	// filter then allows for a user namespace alone: FilterFor). nil: a
	// program run as root is the host's root, cut to RootCaps.
	RootMap *RootMap
}

// RootMap is the host uid and gid that uid 0 and gid 0 of a root
// program's user namespace are (Plan.RootMap).
type RootMap struct{ UID, GID uint32 }

// CutsRootCaps reports whether a program of the plan run under uid has
// its bounding set cut to RootCaps by its init: a program run as the
// host's root in a view of its own (the C init's exec_child says the
// same); one run as root of a user namespace of its own (RootMap) has
// capabilities only there.
func (p *Plan) CutsRootCaps(uid uint32) bool {
	return p.HostRoot(uid) && p.Namespaces&NSMount != 0
}

// HostRoot reports whether a program of the plan run under uid is the
// host's root: uid 0, and not root of a user namespace of its own
// (RootMap), whose capabilities reach nothing of the cell's other
// namespaces (the host's user namespace owns them) and so leave in them
// no more than an unprivileged program's could.
func (p *Plan) HostRoot(uid uint32) bool { return uid == 0 && p.RootMap == nil }

// ProcReadOnly are the parts of a cell's /proc made read-only for a plan
// with Root, whose files uid 0 writes without any capability: the
// sysctls, the magic SysRq key, IRQ affinities, PCI buses, file systems'
// settings (container runtimes' read-only paths), and of the paths they
// mask, those with settings of the host's: ACPI wakeup devices, sound
// cards, the latency tracer, SCSI drivers; and the kernel's dynamic debug
// control, through which a cell could have every pr_debug of the kernel
// logged. Those missing from a kernel are skipped.
var ProcReadOnly = []string{"sys", "sysrq-trigger", "irq", "bus", "fs", "acpi", "asound", "latency_stats", "scsi", "dynamic_debug"}

// RootCaps are the capabilities a program run as root keeps in a cell of
// its own view (the init cuts its bounding set to them before the
// execve): those over files and users within what the view shows,
// signals within its PID namespace and chroot. None reaches
// the host's kernel (CAP_SYS_ADMIN, CAP_SYS_RAWIO, CAP_SYS_PTRACE,
// CAP_NET_ADMIN, CAP_SYS_MODULE, ...), makes a device node (CAP_MKNOD:
// nothing limits what a node opens) or gives a file capabilities that a
// host user would run it with (CAP_SETFCAP), nor takes a low port of
// the host's (CAP_NET_BIND_SERVICE, under network: host).
var RootCaps = []uintptr{
	unix.CAP_CHOWN, unix.CAP_DAC_OVERRIDE, unix.CAP_FOWNER, unix.CAP_FSETID, unix.CAP_KILL,
	unix.CAP_SETGID, unix.CAP_SETUID, unix.CAP_SETPCAP, unix.CAP_SYS_CHROOT,
}

// ForPreloader returns the plan as a fork route's preloader applies it to
// itself (the init's exec mode, InitExec). The preloader stays in the
// host's PID namespace: it is cellgate's direct child, and the kernel
// refuses CLONE_PARENT to the init of a PID namespace. Each child it
// clones gets the rest (ChildNamespaces, Tmpfs, a fresh /proc, the full
// seccomp filter) from the preloader itself. So, with Preloader set:
// CloneFlags leave CLONE_NEWPID out; the host's /proc is bound read-only
// where a cell mounts a fresh one (a proc mount in a user namespace needs
// a proc already fully visible in the mount namespace: the children's);
// the seccomp filter is PreloaderFilter; and the preloader's user
// namespace may create no further user namespace (user.max_user_namespaces
// 0 in it, CAP_SYS_RESOURCE dropped from its bounding set so that it
// cannot raise it again), which the filter can no longer refuse once
// clone3 is allowed.
//
// A bind at or below one of the private tmpfs targets (/tmp, /var/tmp,
// /dev/shm) is refused: a cell's init builds those tmpfs before its
// binds, but each child of a preloader mounts its fresh tmpfs over the
// preloader's whole view of that directory, and the bind would vanish
// under it.
func (p *Plan) ForPreloader() (*Plan, error) {
	if p.Namespaces&NSMount != 0 {
		for _, b := range p.Binds {
			if t, ok := p.inTmpfs(b.Target); ok {
				return nil, fmt.Errorf("%s lies in %s, which each request of a fork route gets as a fresh tmpfs of its own that would hide it: move it out of %s (e.g. below /srv or /opt), or set filesystem: host", b.Target, t, t)
			}
		}
	}
	q := *p
	q.Preloader, q.Resident, q.Root, q.RootMap = true, false, false, nil
	return &q, nil
}

// inTmpfs returns the private tmpfs target that target is or lies in.
func (p *Plan) inTmpfs(target string) (string, bool) {
	for _, t := range p.Tmpfs {
		if Within(target, t.Target) {
			return t.Target, true
		}
	}
	return "", false
}

// Templatable reports whether a cell's view can be a copy of a mount
// template (the init's template and from-template modes; the sandbox's
// templates.go): the view is built once, without the cell's private tmpfs
// and /proc, and each cell adds those to its copy. So nothing of the view
// may lie in one of them (a cell's fresh tmpfs would hide it) nor hold one
// (a bind of /var would have the cell mount its /var/tmp on the host's
// directory through it, where a cell building its view hides it); a
// preloader, which binds the host's /proc, has none; and the plan must
// load the filter, which denies mount: the cells of a route share their
// copies' filesystems (the root tmpfs, /dev), read-only, and a program
// without the filter running as root could remount them writable.
func (p *Plan) Templatable() bool {
	if p.Namespaces&NSMount == 0 || p.Preloader || !p.Seccomp {
		return false
	}
	for _, b := range p.Binds {
		if _, ok := p.inTmpfs(b.Target); ok || Within(b.Target, "/proc") {
			return false
		}
		for _, t := range p.Tmpfs {
			if Within(t.Target, b.Target) {
				return false
			}
		}
	}
	for _, l := range p.Symlinks {
		if _, ok := p.inTmpfs(l.Link); ok {
			return false
		}
	}
	return true
}

// ChildNamespaces are the namespaces each child of a preloader applying p
// gets of its own with its clone: PID, mount (for its private tmpfs and
// /proc) and IPC. Network and UTS are the preloader's, shared by its
// children.
func (p *Plan) ChildNamespaces() Namespaces {
	return p.Namespaces & (NSPID | NSMount | NSIPC)
}

// ownNamespaces are the namespaces the process applying p is created in.
func (p *Plan) ownNamespaces() Namespaces {
	if p.Preloader {
		return p.Namespaces &^ NSPID
	}
	return p.Namespaces
}

// Defaults of Options.
const (
	DefaultTmpfsSize = 64 << 20
	DefaultNoFile    = 1024
	DefaultHostname  = "cell"
)

// DefaultSystemDirs are the host directories a cell sees read-only unless
// its route names others: what a program needs to run (its interpreter,
// libraries, /etc's name service and TLS files).
var DefaultSystemDirs = []string{"/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc"}

// Options are one route's confinement settings, in policy terms.
type Options struct {
	// Share are the namespaces the cell shares with the host (the policy's
	// relaxations): NSMount is filesystem: host, NSNet is network: host.
	Share Namespaces
	// SystemDirs are the host directories bound read-only at the same path
	// (nil: DefaultSystemDirs); directories missing on the host are left out
	// and symlinks are recreated as symlinks. Ignored with RootFS.
	SystemDirs []string
	// Programs is the route's program file or directory of programs, bound
	// read-only at the same path unless a system directory already shows it.
	Programs string
	// Interpreter is a fork route's interpreter (its preloader's program):
	// its directory is shown read-only like Programs, unless a system
	// directory already shows it.
	Interpreter string
	// Mounts are the route's own binds.
	Mounts []Bind
	// Hidden are files of the daemon's (its policy, its TLS key) that no
	// cell may read whatever their mode: where the view shows one, through
	// a system directory, a mount or the rootfs, the null device is bound
	// over it, nodev, so that opening it fails (EACCES). A path that does
	// not exist or is a symlink is skipped (the caller passes the link's
	// target too), and one in a writable mount is refused: the cells could
	// change it.
	Hidden []string
	// RootFS is a directory to use as the cell's root instead of the system
	// directories.
	RootFS string
	// TmpfsSize is the size of each of /tmp, /var/tmp and /dev/shm
	// (0: DefaultTmpfsSize).
	TmpfsSize int64
	// NoSeccomp turns the default seccomp filter off.
	NoSeccomp bool
	// NoFile is RLIMIT_NOFILE (0: DefaultNoFile).
	NoFile uint64
	// HugePages leaves transparent huge pages as the system sets them
	// (Plan.HugePages).
	HugePages bool
	// Fresh gives every request a cell set up for it alone (cells:
	// fresh); otherwise the plan may be resident (Plan.Resident).
	Fresh bool
	// Root: the route's program may run as root (Plan.Root).
	Root bool
	// RootMap, with Root, makes a program run as root root of a user
	// namespace of its own (Plan.RootMap); nil: the host's root. Used
	// only with the cell's own view.
	RootMap *RootMap
}

// FS is what Build reads of the host: whether a path exists, is a
// directory or a symlink, and a symlink's target. os.Lstat and os.Readlink
// in the daemon (OSFS), a map in tests.
type FS interface {
	Lstat(path string) (fs.FileInfo, error)
	Readlink(path string) (string, error)
	// EvalSymlinks is path with every symlink on it followed
	// (filepath.EvalSymlinks).
	EvalSymlinks(path string) (string, error)
	// SameFile reports whether a and b, symlinks followed, are one file
	// or directory: the same one through another path or another mount
	// of it too.
	SameFile(a, b string) bool
}

// OSFS is the host's filesystem.
type OSFS struct{}

func (OSFS) Lstat(p string) (fs.FileInfo, error) { return os.Lstat(p) }
func (OSFS) Readlink(p string) (string, error)   { return os.Readlink(p) }

func (OSFS) EvalSymlinks(p string) (string, error) { return filepath.EvalSymlinks(p) }

func (OSFS) SameFile(a, b string) bool {
	fa, err := os.Stat(a)
	if err != nil {
		return false
	}
	fb, err := os.Stat(b)
	return err == nil && os.SameFile(fa, fb)
}

// reserved are the cell paths the Plan itself mounts; a route's mount may
// not replace them.
var reserved = []string{"/", "/proc", "/dev", "/tmp", "/var/tmp", "/dev/shm"}

// Build turns a route's options into a Plan, reading the host only through
// fsys (to leave out missing system directories and keep symlinks). It
// runs when a policy is loaded, never per request. Errors name the path
// and the fix.
func Build(o Options, fsys FS) (*Plan, error) {
	p := &Plan{
		Namespaces: AllNamespaces &^ o.Share,
		Seccomp:    !o.NoSeccomp,
		NoFile:     o.NoFile,
		HugePages:  o.HugePages,
	}
	p.Resident = !o.Fresh && p.Namespaces&NSPID != 0
	if p.NoFile == 0 {
		p.NoFile = DefaultNoFile
	}
	if p.Namespaces&NSUTS != 0 {
		p.Hostname = DefaultHostname
	}
	if p.Namespaces&NSMount == 0 {
		if o.RootFS != "" || len(o.Mounts) > 0 {
			return nil, errors.New("rootfs and mounts need the cell's own filesystem view: drop filesystem: host, or drop them")
		}
		return p, nil
	}
	p.Root = o.Root
	if o.Root && o.RootMap != nil {
		m := *o.RootMap
		p.RootMap = &m
	}
	size := o.TmpfsSize
	if size <= 0 {
		size = DefaultTmpfsSize
	}
	for _, t := range []string{"/tmp", "/var/tmp", "/dev/shm"} {
		p.Tmpfs = append(p.Tmpfs, Tmpfs{Target: t, Size: size, Mode: 0o1777})
	}
	var errs []error
	if o.RootFS != "" {
		if err := checkDir(fsys, o.RootFS, "rootfs"); err != nil {
			errs = append(errs, err)
		}
		p.RootFS = o.RootFS
	} else {
		dirs := o.SystemDirs
		if dirs == nil {
			dirs = DefaultSystemDirs
		}
		for _, d := range dirs {
			if !clean(d) {
				errs = append(errs, fmt.Errorf("system directory %q: not an absolute clean path", d))
				continue
			}
			if err := checkTarget(d); err != nil {
				errs = append(errs, fmt.Errorf("system directory %s: %w", d, err))
				continue
			}
			fi, err := fsys.Lstat(d)
			switch {
			case errors.Is(err, fs.ErrNotExist):
				continue // /lib32 on a host without it
			case err != nil:
				errs = append(errs, fmt.Errorf("system directory %s: %w", d, err))
			case fi.Mode()&fs.ModeSymlink != 0:
				target, err := fsys.Readlink(d)
				if err != nil {
					errs = append(errs, fmt.Errorf("system directory %s: %w", d, err))
					continue
				}
				p.Symlinks = append(p.Symlinks, Symlink{Link: d, Target: target})
			case fi.IsDir():
				p.Binds = append(p.Binds, Bind{Source: d, Target: d})
			default:
				errs = append(errs, fmt.Errorf("system directory %s: not a directory", d))
			}
		}
	}
	shown := []string{o.Programs}
	if o.Interpreter != "" {
		shown = append(shown, filepath.Dir(o.Interpreter))
	}
	for _, prog := range shown {
		if prog == "" || p.shows(prog) {
			continue
		}
		switch {
		case !clean(prog):
			errs = append(errs, fmt.Errorf("program %q: not an absolute clean path", prog))
		case checkTarget(prog) != nil:
			errs = append(errs, fmt.Errorf("program directory %s: %w, or move the program (a directory of its own, such as /srv/cgi)", prog, checkTarget(prog)))
		default:
			p.Binds = append(p.Binds, Bind{Source: prog, Target: prog})
		}
	}
	for _, m := range o.Mounts {
		if err := checkMount(m); err != nil {
			errs = append(errs, err)
			continue
		}
		p.Binds = append(p.Binds, m)
	}
	if p.RootFS != "" {
		errs = append(errs, rootfsMountPoints(fsys, p)...)
	}
	masks, herrs := p.masks(fsys, o.Hidden)
	errs = append(errs, herrs...)
	errs = append(errs, nestedInWritable(fsys, p)...)
	p.Binds = append(p.Binds, masks...)
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	slices.SortStableFunc(p.Binds, func(a, b Bind) int { return compareMountOrder(a.Target, b.Target) })
	return p, nil
}

// Shows reports whether the view shows the host's path at the same
// path, as shows says; meaningful for a plan with a view of its own and
// no rootfs (whose files are not the host's).
func (p *Plan) Shows(path string) bool { return p.shows(path) }

// HasDir reports whether path is a directory of the view that holds the
// host's files there (Shows), or one the view is made of: its root, a
// tmpfs (the cell's own, empty), or a directory above a bind or tmpfs
// (/var, holding /var/tmp). Meaningful as Shows is.
func (p *Plan) HasDir(path string) bool {
	if p.shows(path) {
		return true
	}
	for _, t := range p.Tmpfs {
		if Within(t.Target, path) {
			return true
		}
	}
	for _, b := range p.Binds {
		if Within(b.Target, path) {
			return true
		}
	}
	return false
}

// shows reports whether a bind of the plan already shows path at the same
// place (a system directory, the programs', a mount bound where it is),
// directly or through a recreated symlink (/bin/x with /bin -> usr/bin).
func (p *Plan) shows(path string) bool {
	for _, b := range p.Binds {
		if b.Source == b.Target && Within(path, b.Target) {
			return true
		}
	}
	for _, l := range p.Symlinks {
		if Within(path, l.Link) {
			return true
		}
	}
	return false
}

// masks returns the binds that cover the hidden files the view shows
// (Options.Hidden), or an error for one in a writable mount.
func (p *Plan) masks(fsys FS, hidden []string) ([]Bind, []error) {
	var masks []Bind
	var errs []error
	for _, h := range hidden {
		if !clean(h) {
			errs = append(errs, fmt.Errorf("hidden file %q: not an absolute clean path", h))
			continue
		}
		if fi, err := fsys.Lstat(h); err != nil || fi.Mode()&fs.ModeSymlink != 0 {
			continue
		}
		var at []string
		if rel, ok := inside(fsys, h, p.RootFS); ok {
			at = append(at, filepath.Join("/", rel))
		}
		for _, b := range p.Binds {
			rel, ok := inside(fsys, h, b.Source)
			if !ok {
				continue
			}
			if b.Writable {
				errs = append(errs, fmt.Errorf("%s lies in the writable mount of %s (at %s): every cell of the route could read and change it; move it out of %s", h, b.Source, b.Target, b.Source))
				continue
			}
			at = append(at, filepath.Join(b.Target, rel))
		}
		for _, t := range at {
			if !slices.ContainsFunc(masks, func(m Bind) bool { return m.Target == t }) {
				masks = append(masks, Bind{Source: os.DevNull, Target: t, Mask: true, Hides: h})
			}
		}
	}
	return masks, errs
}

// inside reports whether the host file h is dir or lies below it, and
// where below it: by their paths, or, as the init's bind of dir follows
// symlinks and a mount shows the same directory as any other mount of it,
// by the identity of h or a directory above it with dir's.
func inside(fsys FS, h, dir string) (rel string, ok bool) {
	if dir == "" {
		return "", false
	}
	if Within(h, dir) {
		return strings.TrimPrefix(h, dir), true
	}
	for a := h; ; a = filepath.Dir(a) {
		if fsys.SameFile(a, dir) {
			return strings.TrimPrefix(h, a), true
		}
		if a == filepath.Dir(a) { // "/", or "." of a path that is not absolute
			return "", false
		}
	}
}

// resolved is p with every symlink on it followed, or p itself where
// that fails (a part of it missing, a loop).
func resolved(fsys FS, p string) string {
	if r, err := fsys.EvalSymlinks(p); err == nil {
		return r
	}
	return p
}

// nestedInWritable refuses a bind below a writable one. The init makes
// the mount point and mounts by path, as root, before the cell's root is
// pivoted, so the path below a writable bind runs through a host
// directory the cells write: one cell could replace a directory on that
// path with a symlink and have the next cells' init create directories
// where the link points (anywhere on the host) and mount the bind there,
// over a system directory of their view for instance. Likewise by source:
// the init opens each bind's source (and a rootfs) by its host path,
// following links, so a source below a writable bind's source (by path
// once the links on both are followed, or by identity as inside finds
// it: another mount of the same directory) is one a cell could replace
// with a symlink to / and have the next cells of the route bind the
// whole host.
func nestedInWritable(fsys FS, p *Plan) []error {
	var errs []error
	for i, w := range p.Binds {
		if !w.Writable {
			continue
		}
		for j, b := range p.Binds {
			if i == j {
				continue
			}
			if b.Target != w.Target && Within(b.Target, w.Target) {
				errs = append(errs, fmt.Errorf("mount target %s lies in the writable mount %s: a cell could replace a directory on its way with a symlink and move it for the cells after it; mount it outside %s, or make %s read-only", b.Target, w.Target, w.Target, w.Target))
			}
			if rel, ok := inside(fsys, resolved(fsys, b.Source), resolved(fsys, w.Source)); ok && rel != "" {
				errs = append(errs, fmt.Errorf("%s %s lies in %s, the source of the writable mount %s: a cell could replace it (or a directory on its way) with a symlink, and the cells after it would show what the link names at %s; keep it out of %s, or make that mount read-only", sourceKind(b), b.Source, w.Source, w.Target, b.Target, w.Source))
			}
		}
		if !clean(p.RootFS) {
			continue // none, or refused already
		}
		if rel, ok := inside(fsys, resolved(fsys, p.RootFS), resolved(fsys, w.Source)); ok && rel != "" {
			errs = append(errs, fmt.Errorf("rootfs %s lies in %s, the source of the writable mount %s: a cell could replace it (or a directory on its way) with a symlink; keep it out of %s, or make that mount read-only", p.RootFS, w.Source, w.Target, w.Source))
		}
	}
	return errs
}

// sourceKind names what a bind of the plan is, for nestedInWritable.
func sourceKind(b Bind) string {
	if b.Writable {
		return "the writable mount's source"
	}
	return "mount source"
}

func checkMount(m Bind) error {
	switch {
	case !clean(m.Source):
		return fmt.Errorf("mount source %q: not an absolute clean path", m.Source)
	case !clean(m.Target):
		return fmt.Errorf("mount target %q: not an absolute clean path", m.Target)
	}
	if err := checkTarget(m.Target); err != nil {
		return fmt.Errorf("mount target %s: %w", m.Target, err)
	}
	return nil
}

// checkTarget refuses a bind's place in the view (a mount's target, a
// system directory) where it would cover what the Plan itself mounts: the
// cell's own /proc, /dev, /tmp, /var/tmp and /dev/shm, or the whole view.
func checkTarget(target string) error {
	for _, r := range reserved {
		if target == r || r != "/" && Within(r, target) {
			return fmt.Errorf("the cell's own %s is there; choose another", r)
		}
	}
	if Within(target, "/proc") || Within(target, "/dev") {
		return errors.New("under the cell's own /proc or /dev; choose another")
	}
	return nil
}

// rootfsMountPoints checks that p's rootfs holds the mount point of each
// mount the init makes in it (in the cell's own /dev, /tmp and /var/tmp
// it makes them itself: inCellTmpfs), since it never changes the
// rootfs's tree: without them every cell of the route would fail.
func rootfsMountPoints(fsys FS, p *Plan) []error {
	targets := []string{"/dev", "/proc"}
	for _, t := range p.Tmpfs {
		targets = append(targets, t.Target)
	}
	for _, b := range p.Binds {
		targets = append(targets, b.Target)
	}
	var errs []error
	for _, t := range targets {
		if inCellTmpfs(t) {
			continue
		}
		if _, err := fsys.Lstat(filepath.Join(p.RootFS, t)); err != nil {
			errs = append(errs, fmt.Errorf("rootfs %s has no %s, where the cell's %s is mounted: %w (create it in the rootfs)", p.RootFS, t, t, err))
		}
	}
	return errs
}

func checkDir(fsys FS, dir, what string) error {
	if !clean(dir) {
		return fmt.Errorf("%s %q: not an absolute clean path", what, dir)
	}
	fi, err := fsys.Lstat(dir)
	if err != nil {
		return fmt.Errorf("%s %s: %w", what, dir, err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("%s %s: not a directory", what, dir)
	}
	return nil
}

// clean reports whether p is absolute and clean.
func clean(p string) bool {
	return filepath.IsAbs(p) && filepath.Clean(p) == p && !strings.ContainsRune(p, 0)
}

// Within reports whether the clean absolute path p is dir or below it.
func Within(p, dir string) bool {
	return p == dir || dir == "/" || strings.HasPrefix(p, dir+"/")
}

// compareMountOrder orders mount targets so that a parent is mounted
// before anything below it: by depth, then by name.
func compareMountOrder(a, b string) int {
	da, db := strings.Count(a, "/"), strings.Count(b, "/")
	if da != db {
		return da - db
	}
	return strings.Compare(a, b)
}
