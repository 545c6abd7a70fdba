package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/sys/unix"
)

// checkConfinementKernel reports what the kernel offers the confinement,
// without running anything: seccomp filters with an errno action, the
// namespaces, and the user-namespace settings (cells never get to create
// one: the filter refuses it).
func checkConfinementKernel(r *report) {
	acts, err := os.ReadFile("/proc/sys/kernel/seccomp/actions_avail")
	switch {
	case err != nil:
		r.fail("seccomp", "boot a kernel with CONFIG_SECCOMP_FILTER, or set seccomp: off on every route", "no /proc/sys/kernel/seccomp/actions_avail: %v", err)
	case !strings.Contains(string(acts), "errno") || !strings.Contains(string(acts), "kill_process"):
		r.fail("seccomp", "upgrade the kernel (4.14 or later), or set seccomp: off on every route", "actions %q lack errno or kill_process", strings.TrimSpace(string(acts)))
	default:
		r.ok("seccomp", "filters available (%d calls denied by default, EPERM)", len(confine.Denied()))
	}
	var missing []string
	for _, ns := range []string{"mnt", "pid", "ipc", "uts", "net"} {
		if _, err := os.Stat("/proc/self/ns/" + ns); err != nil {
			missing = append(missing, ns)
		}
	}
	if len(missing) > 0 {
		r.fail("namespaces", "boot a kernel with CONFIG_NAMESPACES and these, or relax the routes (filesystem: host, network: host, host_namespaces)", "missing: %s", strings.Join(missing, " "))
	} else {
		r.ok("namespaces", "mount pid ipc uts net")
	}
	userns := "unlimited"
	if b, err := os.ReadFile("/proc/sys/user/max_user_namespaces"); err == nil {
		userns = "max_user_namespaces=" + strings.TrimSpace(string(b))
	}
	if b, err := os.ReadFile("/proc/sys/kernel/unprivileged_userns_clone"); err == nil {
		userns += ", unprivileged_userns_clone=" + strings.TrimSpace(string(b))
	}
	r.ok("user namespaces", "%s; used by fork routes' preloaders (which may create none below theirs) and by programs run as root (their init makes one), never made by cells' programs, which cannot (seccomp)", userns)
	checkResidentIPC(r)
	checkRecursiveBinds(r, mountSetattrErr())
	checkRootRoutes(r, confine.CanEnterUserNS(), confine.CanCutRootCaps())
	modprobe, err := os.ReadFile("/proc/sys/kernel/modprobe")
	checkModuleAutoload(r, string(modprobe), err)
	major, minor := kernelVersion(unameRelease())
	if major > 6 || major == 6 && minor >= 6 {
		r.ok("tmpfs", "a size limit per private tmpfs, charged to the cell's memory (tmpfs quotas of 6.6 are not needed)")
	} else {
		r.ok("tmpfs", "a size limit per private tmpfs, charged to the cell's memory")
	}
}

// checkModuleAutoload reports whether a cell can have the kernel start
// a usermode helper, modprobe (the kernel.modprobe setting, read as
// modprobe, or err), as root on the host and outside every cell's group:
// the kernel asks for a "binfmt-XXXX" module when a process executes a
// file of a format it does not know (fs/exec.c), which no filter can
// tell from an ordinary execve; socket families, the other door, the
// filter closes. An empty setting is the kernel's own way to start none.
func checkModuleAutoload(r *report, modprobe string, err error) {
	const name = "module autoload"
	modprobe = strings.TrimSpace(modprobe)
	switch {
	case os.IsNotExist(err):
		r.ok(name, "the kernel loads no modules (no kernel.modprobe): a cell can have it start no modprobe")
	case err != nil:
		r.warn(name, "", "kernel.modprobe unreadable: %v", err)
	case modprobe == "":
		r.ok(name, "kernel.modprobe is empty: a cell can have the kernel start no modprobe")
	default:
		r.warn(name, "where the host loads no module on demand once booted (load those it needs at boot, /etc/modules-load.d), empty it: sysctl -w kernel.modprobe= (kernel.modules_disabled does not stop the helper)",
			"kernel.modprobe=%s: a cell that executes a file of a format the kernel does not know has it start %s, as root on the host and outside every cell's group (up to 50 at once)", modprobe, modprobe)
	}
}

// hugePagePool counts the pages the host's huge page pools hold or may
// overcommit, of every page size (dir is /sys/kernel/mm/hugepages; no
// such directory is a kernel without huge pages: none).
func hugePagePool(dir string) (int, error) {
	sizes, err := os.ReadDir(dir)
	if os.IsNotExist(err) {
		return 0, nil
	}
	if err != nil {
		return 0, err
	}
	n := 0
	for _, size := range sizes {
		for _, f := range []string{"nr_hugepages", "nr_overcommit_hugepages"} {
			b, err := os.ReadFile(filepath.Join(dir, size.Name(), f))
			if err != nil {
				return 0, err
			}
			v, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				return 0, fmt.Errorf("%s: %w", filepath.Join(dir, size.Name(), f), err)
			}
			n += v
		}
	}
	return n, nil
}

// checkHugePages reports who can take pages of the host's huge page
// pool (pages of them, reserved or overcommitted), which are not charged
// to a cell's memory.max: every confined cell is refused them by the
// seccomp filter; with the hugetlb controller reaching cellgate's tree
// (closed, cgroup.Features.HugeTLBClosed) every cell is.
func checkHugePages(r *report, pages int, err error, closed bool) {
	const name = "huge pages"
	switch {
	case closed:
		r.ok(name, "closed to every cell by the hugetlb controller (every hugetlb limit of cells/ is 0), and to confined cells by the seccomp filter")
	case err != nil:
		r.warn(name, "", "the host's huge page pools unreadable: %v; closed to confined cells by the seccomp filter, not to cells of routes with seccomp: off", err)
	case pages == 0:
		r.ok(name, "the host reserves none; were it to, the seccomp filter closes them to confined cells")
	default:
		r.warn(name, "keep seccomp on for every route (the default), or enable the hugetlb controller down to cellgate's group (systemd does not delegate it), where cellgate closes the pool to every cell",
			"the host's pools hold or may overcommit %d huge pages, not charged to a cell's memory.max: closed to confined cells by the seccomp filter, but a cell of a route with seccomp: off can map them all while it runs", pages)
	}
}

// checkRootRoutes reports whether serve can run a route as root
// (allow_root): by default its program is root of a user namespace of its
// own, which the inits make and the program enters (nsErr, from
// confine.CanEnterUserNS); with host_namespaces: [user] it is the host's
// root, its capabilities cut to confine.RootCaps, which needs
// CAP_SETPCAP (cutErr, from confine.CanCutRootCaps). serve refuses a
// route where what it needs is missing.
func checkRootRoutes(r *report, nsErr, cutErr error) {
	const name = "root routes"
	switch {
	case nsErr != nil && cutErr != nil:
		r.warn(name, "allow setns of a user namespace and user namespaces (deploy/seccomp/cellgate.json, sysctl user.max_user_namespaces), or add CAP_SETPCAP and set host_namespaces: [user], or run no route as root",
			"serve refuses every route run as root: %v; %v", nsErr, cutErr)
	case nsErr != nil:
		r.warn(name, "allow setns of a user namespace and user namespaces (deploy/seccomp/cellgate.json, sysctl user.max_user_namespaces), or set host_namespaces: [user] on routes run as root",
			"serve refuses a route run as root unless it is run as the host's root (host_namespaces: [user]): %v", nsErr)
	case cutErr != nil:
		r.warn(name, "add CAP_SETPCAP to cellgate's capabilities (the unit's CapabilityBoundingSet, the container's), or drop host_namespaces: [user] from routes run as root",
			"a program run as root is root of a user namespace of its own, but serve refuses a route run as the host's root (user: root, allow_root, host_namespaces: [user]): %v", cutErr)
	default:
		r.ok(name, "a program run as root is root of a user namespace of its own (a uid of the range on the host); with host_namespaces: [user] the host's root, keeping only root's capabilities over files, signals and chroot, and it cannot write /proc/sys")
	}
}

// mountSetattrErr is what mount_setattr answers a call that changes
// nothing (no attribute: the kernel returns before it looks at the
// path): nil where the inits may use it, ENOSYS or EPERM where the
// kernel or a seccomp profile refuses the call.
func mountSetattrErr() error {
	return unix.MountSetattr(-1, "", 0, &unix.MountAttr{})
}

// checkRecursiveBinds reports whether the inits can give the host's
// mounts below a bind the bind's attributes (mount_setattr, confine's
// bindTree): where they cannot, binds are made without their trees, so a
// file system the host mounts below a bound directory is not in the view.
func checkRecursiveBinds(r *report, err error) {
	const name = "recursive binds"
	if errors.Is(err, unix.ENOSYS) || errors.Is(err, unix.EPERM) {
		r.warn(name, "nothing to do for safety; to show them, run on Linux 5.12 or later under a seccomp profile that allows mount_setattr (deploy/seccomp/cellgate.json does)",
			"mount_setattr: %v: binds are made without the host's mounts below them (not shown in cells)", err)
		return
	}
	r.ok(name, "a file system mounted below a bound directory is shown read-only (below a read-only bind or a rootfs), nosuid and nodev")
}

// checkResidentIPC reports whether a resident cell's init can mount its
// IPC namespace's message queue file system (fsopen, as cellgate-init's
// mqueue_mount does before its filter), which it needs to empty the
// namespace between requests; where it cannot, each request gets an IPC
// namespace of its own, which is safe and slower. Nothing is mounted:
// the file system context is closed unused.
func checkResidentIPC(r *report) {
	fd, err := unix.Fsopen("mqueue", unix.FSOPEN_CLOEXEC)
	if err != nil {
		r.warn("resident IPC", "nothing to do for safety; to have the speed, run cellgate as root under a seccomp profile that allows fsopen, fsconfig and fsmount (deploy/seccomp/cellgate.json does)",
			"fsopen(\"mqueue\"): %v: a resident cell gives each request an IPC namespace of its own rather than empty its own between requests (about 0.2 ms more per request in the microVM)", err)
		return
	}
	unix.Close(fd)
	r.ok("resident IPC", "resident cells empty their IPC namespace between requests (every SysV object and POSIX message queue removed)")
}

// checkConfinedCell runs /bin/true in a fully confined cell, and when that
// fails, once per namespace to say which one the kernel refuses.
func checkConfinedCell(ctx context.Context, cfg doctorConfig, runner *sandbox.Runner, r *report) {
	run := func(o confine.Options) error {
		plan, err := confine.Build(o, confine.OSFS{})
		if err != nil {
			return err
		}
		prep, err := confine.Prepare(plan)
		if err != nil {
			return err
		}
		res, err := runner.Run(ctx, sandbox.Spec{Path: "/bin/true", Confine: prep})
		if err == nil && res.Cause != sandbox.CauseOK {
			err = errCause(res.Cause)
		}
		return err
	}
	err := run(confine.Options{Programs: "/bin"})
	if err == nil {
		r.ok("confined cell", "/bin/true ran with every confinement (namespaces %s, read-only view, private /tmp /var/tmp /dev/shm, seccomp)", confine.AllNamespaces)
		return
	}
	r.fail("confined cell", "relax what the kernel refuses per route (see the lines below), or fix the error", "/bin/true with every confinement: %v", err)
	for _, ns := range []confine.Namespaces{confine.NSMount, confine.NSPID, confine.NSIPC, confine.NSUTS, confine.NSNet} {
		o := confine.Options{Share: confine.AllNamespaces &^ ns, NoSeccomp: true}
		if ns == confine.NSMount {
			o.Programs = "/bin"
		}
		if err := run(o); err != nil {
			r.warn("namespace "+ns.String(), "relax it on the routes", "a cell with only this namespace failed: %v", err)
		} else {
			r.ok("namespace "+ns.String(), "allowed")
		}
	}
	if err := run(confine.Options{Share: confine.AllNamespaces}); err != nil {
		r.warn("seccomp filter", "set seccomp: off on the routes", "a cell with only the filter failed: %v", err)
	}
}

type errCause sandbox.Cause

func (e errCause) Error() string { return "cause " + string(e) }
