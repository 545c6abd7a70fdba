package policy

import (
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"
)

// confinementKeys are a route's confinement keys (see Confinement); each
// relaxes one confinement, which is on by default.
var confinementKeys = []string{"network", "filesystem", "host_namespaces", "system_dirs", "mounts", "rootfs", "tmpfs_size", "seccomp", "nofile", "huge_pages", "cells", "groups"}

var mountKeys = []string{"source", "target", "writable"}

// sharableNamespaces are the namespaces host_namespaces may name; network
// and the filesystem have keys of their own.
var sharableNamespaces = []string{"pid", "ipc", "uts", HostUserNamespace}

// HostUserNamespace in host_namespaces runs a route's program, run as
// root, as the host's root (its capabilities cut) instead of root of a
// user namespace of its own whose uid 0 is a uid of the range; only a
// route run as root (allow_root) may list it.
const HostUserNamespace = "user"

// Confinement is what a route's cells may see and reach beyond their
// cgroup. The zero value is the default: every confinement on.
type Confinement struct {
	// HostNetwork (network: host) gives cells the host's network; the
	// default (network: none) is a network namespace of the cell's own
	// with only loopback, so that no cell reaches cellgate's admin port,
	// the host's loopback services or the outside.
	HostNetwork bool
	// HostFilesystem (filesystem: host) gives cells the host's whole
	// filesystem, /tmp and /dev/shm included, as their uid sees it; the
	// default (filesystem: confined) is a read-only view of SystemDirs,
	// the program and Mounts, private tmpfs on /tmp, /var/tmp and
	// /dev/shm, and a /proc of the cell's own.
	HostFilesystem bool
	// HostNamespaces are namespaces of pid, ipc and uts the cells share
	// with the host (host_namespaces: [pid]); by default they have their
	// own. user (HostUserNamespace) concerns a program run as root.
	HostNamespaces []string
	// SystemDirs are the host directories the view shows read-only (nil:
	// /usr /bin /sbin /lib* /etc, those that exist).
	SystemDirs []string
	// Mounts are binds of host paths into the view.
	Mounts []Mount
	// RootFS is a directory to use as the cells' root instead of
	// SystemDirs (read-only; it must hold /proc, /dev, /tmp, /var/tmp).
	RootFS string
	// TmpfsSize is the size of each private tmpfs (0: 64Mi); their pages
	// are charged to the cell's memory.
	TmpfsSize int64
	// NoSeccomp (seccomp: off) turns the default system call filter off.
	NoSeccomp bool
	// NoFile is the cells' RLIMIT_NOFILE (0: 1024).
	NoFile int64
	// HugePages (huge_pages: system) leaves transparent huge pages to the
	// system's setting; by default (huge_pages: off) a cgi route's
	// programs get none, as a process that lives for one request pays for
	// clearing a 2 MiB page where it touches a few KiB. A fork route's
	// preloader, long-lived, and its children keep the system's setting.
	HugePages bool
	// FreshCells (cells: fresh) gives every request a cell set up for it
	// alone: its own init and namespaces. By default (cells: resident)
	// a route's cells may be resident where serve keeps them
	// (--resident-cells): an init and its namespaces serve request after
	// request, each request's program in a group of its own, under a
	// uid of its own, everything it left (processes, private tmpfs
	// files, the SysV IPC objects and POSIX message queues of the
	// cell's IPC namespace, which its programs share) ended before the
	// next request. Where the init is refused the new mount API (a
	// seccomp profile), each program gets an IPC namespace of its own.
	FreshCells bool
	// ReusedGroups (groups: reused) lets a resident cell's requests reuse
	// the groups of the requests before them, once emptied, rather than
	// each have a group made for it and removed after it (the kernel's
	// price of which is most of what a resident request costs beyond a
	// plain exec). Each request still has its limits, its OOM kill and
	// its counters (CPU, memory events, I/O, forks refused) its own, but
	// not its pids.peak, nor its memory.peak before Linux 6.12: those
	// are left out of its accounting. By default (groups: fresh) every
	// request has a group of its own.
	ReusedGroups bool
}

// Mount is a bind of a host path into a cell's view.
type Mount struct {
	// Source is the host path (absolute, or relative to the policy file).
	Source string
	// Target is where the cell sees it (absolute; default Source).
	Target string
	// Writable binds read-write; the default is read-only.
	Writable bool
}

func (d *decoder) confinement(fs map[string]field, p string) Confinement {
	var c Confinement
	if f, ok := fs["network"]; ok {
		c.HostNetwork = d.choice(f, join(p, "network"), "none", "host") == "host"
	}
	if f, ok := fs["filesystem"]; ok {
		c.HostFilesystem = d.choice(f, join(p, "filesystem"), "confined", "host") == "host"
	}
	if f, ok := fs["seccomp"]; ok {
		c.NoSeccomp = d.choice(f, join(p, "seccomp"), "default", "off") == "off"
	}
	if f, ok := fs["host_namespaces"]; ok {
		kp := join(p, "host_namespaces")
		names, _ := d.strList(f, kp)
		for _, n := range names {
			switch {
			case !slices.Contains(sharableNamespaces, n):
				d.problem(f.line(), kp, n, "not a namespace cells may share", "use pid, ipc, uts or user (network: host and filesystem: host are keys of their own)")
			case slices.Contains(c.HostNamespaces, n):
				d.problem(f.line(), kp, n, "listed twice", "list each namespace once")
			default:
				c.HostNamespaces = append(c.HostNamespaces, n)
			}
		}
	}
	if f, ok := fs["system_dirs"]; ok {
		kp := join(p, "system_dirs")
		dirs, _ := d.strList(f, kp)
		for _, dir := range dirs {
			if d.absPath(f.line(), kp, dir) {
				c.SystemDirs = append(c.SystemDirs, dir)
			}
		}
	}
	if f, ok := fs["rootfs"]; ok {
		c.RootFS = d.programPath(f, join(p, "rootfs"))
	}
	if f, ok := fs["mounts"]; ok {
		c.Mounts = d.mounts(f, join(p, "mounts"))
	}
	if f, ok := fs["tmpfs_size"]; ok {
		c.TmpfsSize, _ = d.size(f, join(p, "tmpfs_size"), 4096)
	}
	if f, ok := fs["nofile"]; ok {
		c.NoFile, _ = d.integer(f, join(p, "nofile"), 16, math.MaxInt32)
	}
	if f, ok := fs["huge_pages"]; ok {
		c.HugePages = d.choice(f, join(p, "huge_pages"), "off", "system") == "system"
	}
	if f, ok := fs["cells"]; ok {
		c.FreshCells = d.choice(f, join(p, "cells"), "resident", "fresh") == "fresh"
	}
	if f, ok := fs["groups"]; ok {
		c.ReusedGroups = d.choice(f, join(p, "groups"), "fresh", "reused") == "reused"
		switch {
		case c.ReusedGroups && c.FreshCells:
			d.problem(f.line(), join(p, "groups"), "reused", "has no effect with cells: fresh (only a resident cell's requests reuse groups)", "remove groups, or drop cells: fresh")
		case c.ReusedGroups && slices.Contains(c.HostNamespaces, "pid"):
			d.problem(f.line(), join(p, "groups"), "reused", "has no effect with host_namespaces: [pid] (cells sharing the host's PIDs are fresh, and only a resident cell's requests reuse groups)", "remove groups, or drop pid from host_namespaces")
		}
	}
	if c.HostFilesystem {
		for _, k := range []string{"system_dirs", "mounts", "rootfs", "tmpfs_size"} {
			if f, ok := fs[k]; ok {
				d.problem(f.line(), join(p, k), "", "has no effect with filesystem: host", "remove it, or drop filesystem: host")
			}
		}
	}
	if f, ok := fs["system_dirs"]; ok && c.RootFS != "" {
		d.problem(f.line(), join(p, "system_dirs"), "", "has no effect with rootfs", "remove one of them")
	}
	return c
}

// choice reads one of the allowed words. Another type's value (a YAML
// boolean: seccomp: false) is told the words, not to quote it, which
// would make it a word that is not one of them.
func (d *decoder) choice(f field, p string, allowed ...string) string {
	v, ok := d.scalarFix(f, p, "one of "+strings.Join(allowed, ", "), "use "+strings.Join(allowed, " or "), "!!str")
	if !ok {
		return ""
	}
	if !slices.Contains(allowed, v) {
		d.problem(f.line(), p, v, "not one of "+strings.Join(allowed, ", "), "use "+strings.Join(allowed, " or "))
		return ""
	}
	return v
}

// absPath reports whether v is an absolute clean path, else records why not.
func (d *decoder) absPath(line int, p, v string) bool {
	if !filepath.IsAbs(v) || filepath.Clean(v) != v || strings.ContainsRune(v, 0) {
		d.problem(line, p, v, "not an absolute clean path", "write it as an absolute path, such as /srv/data")
		return false
	}
	return true
}

func (d *decoder) mounts(f field, p string) []Mount {
	var out []Mount
	nodes, paths := d.items(f, p)
	for i, item := range nodes {
		fs := d.fields(item, paths[i], mountKeys...)
		if fs == nil {
			continue
		}
		var m Mount
		src, ok := fs["source"]
		if !ok {
			d.problem(resolve(item).Line, paths[i], "", "no source", "add source: /host/path")
			continue
		}
		m.Source = d.programPath(src, join(paths[i], "source"))
		m.Target = m.Source
		if t, ok := fs["target"]; ok {
			if v, ok := d.str(t, join(paths[i], "target")); ok && d.absPath(t.line(), join(paths[i], "target"), v) {
				m.Target = v
			}
		}
		if w, ok := fs["writable"]; ok {
			m.Writable, _ = d.boolean(w, join(paths[i], "writable"))
		}
		if m.Source != "" {
			out = append(out, m)
		}
	}
	return out
}

// String describes the confinement for cellgate check: what is relaxed.
func (c Confinement) String() string {
	var parts []string
	if c.HostFilesystem {
		parts = append(parts, "filesystem: host")
	} else if c.RootFS != "" {
		parts = append(parts, "rootfs "+c.RootFS)
	}
	if c.HostNetwork {
		parts = append(parts, "network: host")
	}
	if len(c.HostNamespaces) > 0 {
		parts = append(parts, "host namespaces: "+strings.Join(c.HostNamespaces, " "))
	}
	if c.NoSeccomp {
		parts = append(parts, "seccomp: off")
	}
	if c.HugePages {
		parts = append(parts, "huge_pages: system")
	}
	if c.FreshCells {
		parts = append(parts, "cells: fresh")
	}
	if c.ReusedGroups {
		parts = append(parts, "groups: reused")
	}
	for _, m := range c.Mounts {
		mode := "ro"
		if m.Writable {
			mode = "rw"
		}
		parts = append(parts, fmt.Sprintf("mount %s:%s:%s", m.Source, m.Target, mode))
	}
	if len(parts) == 0 {
		return "full"
	}
	return strings.Join(parts, ", ")
}
