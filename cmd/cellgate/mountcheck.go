package main

import (
	"fmt"
	"path/filepath"
	"slices"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"golang.org/x/sys/unix"
)

// viewSource is a host path a route's cells see (confine's view): the key
// of the route that names it, and whether the cells may write it.
type viewSource struct {
	path, key string
	writable  bool
}

// viewSources are the host paths r's cells see, as serve builds their
// view (buildConfinement): its rootfs or system directories, its
// program's directory (a fork route's app directory and interpreter's),
// its mounts. nil for filesystem: host, whose cells see the host.
func viewSources(r *policy.Route) []viewSource {
	c := r.Confinement
	if c.HostFilesystem {
		return nil
	}
	var out []viewSource
	if c.RootFS != "" {
		out = append(out, viewSource{c.RootFS, "rootfs", false})
	} else {
		dirs := c.SystemDirs
		if dirs == nil {
			dirs = confine.DefaultSystemDirs
		}
		for _, d := range dirs {
			out = append(out, viewSource{d, "system_dirs", false})
		}
	}
	switch {
	case r.Fork != nil:
		out = append(out, viewSource{r.Fork.AppDir, "app_dir", false}, viewSource{filepath.Dir(r.Fork.Python), "python", false})
	case r.Program != "":
		out = append(out, viewSource{filepath.Dir(r.Program), "program", false})
	case r.Dir != "":
		out = append(out, viewSource{r.Dir, "dir", false})
	}
	for i, m := range c.Mounts {
		out = append(out, viewSource{m.Source, fmt.Sprintf("mounts[%d]", i), m.Writable})
	}
	return out
}

// verifyWritableMounts refuses a writable mount that another route's
// cells see into, where that lets one route's cells reach another's:
//
//   - of another tenant, anywhere in it or around it (the same directory,
//     one below it, one holding it). Every cell runs under a uid of one
//     range that all tenants' cells share, in turn: a file a cell of one
//     tenant leaves is owned by a uid a later cell of another tenant runs
//     under, whose own it then is, whatever its mode and the tenants'
//     gids.
//   - of the same tenant, below it: a cell of the writing route could
//     replace what the other route shows from there (its program, say),
//     or a directory on the way with a symlink to anywhere on the host,
//     which that route's cells' init then binds into their view.
//
// A route with filesystem: host is left out: its cells see the whole host
// already. views are p's routes' (routeViews).
func verifyWritableMounts(p *policy.Policy, views []routeView) error {
	var probs []policy.Problem
	for _, v := range views {
		for _, w := range v.srcs {
			if !w.writable {
				continue
			}
			for _, o := range views {
				if o.r == v.r {
					continue
				}
				for _, x := range o.srcs {
					if msg, fix := mountConflict(v.r, w, o.r, x); msg != "" {
						probs = append(probs, routeProblem(p.Source, v.r, w.key, w.path, msg, fix))
						break // one problem per route that reaches it
					}
				}
			}
		}
	}
	if len(probs) == 0 {
		return nil
	}
	return &policy.InvalidError{File: p.Source, Problems: probs}
}

// routeView is a route and the host paths its cells see (viewSources),
// as their symlinks resolve.
type routeView struct {
	r    *policy.Route
	srcs []viewSource
}

// routeViews is every route of p with its view's sources, as resolve
// gives them (serve and check: resolvePath), made once per load for
// verifyWritableMounts and exposedDaemonFiles.
func routeViews(p *policy.Policy, resolve func(string) string) []routeView {
	views := make([]routeView, 0, len(p.Routes))
	for _, r := range p.Routes {
		srcs := viewSources(r)
		for i := range srcs {
			srcs[i].path = resolve(srcs[i].path)
		}
		views = append(views, routeView{r, srcs})
	}
	return views
}

// mountConflict says why route o's source x conflicts with route r's
// writable mount w (verifyWritableMounts), and how to fix it; "" when it
// does not.
func mountConflict(r *policy.Route, w viewSource, o *policy.Route, x viewSource) (msg, fix string) {
	var how string
	switch {
	case o.Tenant != r.Tenant && x.path == w.path:
		how = "of tenant " + o.Tenant + ", this writable mount"
	case o.Tenant != r.Tenant && confine.Within(x.path, w.path):
		how = "of tenant " + o.Tenant + ", from inside this writable mount"
	case o.Tenant != r.Tenant && confine.Within(w.path, x.path):
		how = "of tenant " + o.Tenant + ", which holds this writable mount"
	case o.Tenant == r.Tenant && x.path != w.path && confine.Within(x.path, w.path):
		return fmt.Sprintf("route %s (line %d) shows %s (its %s) from inside this writable mount: this route's cells could replace it, or a directory on its way with a symlink to anywhere on the host, for that route's cells", o.Name, o.Line, x.path, x.key),
			fmt.Sprintf("move %s out of %s, or make this mount read-only", x.path, w.path)
	default:
		return "", ""
	}
	return fmt.Sprintf("route %s (line %d) shows %s (its %s) %s: every tenant's cells run under uids the others' cells reuse, so a file a cell of one tenant leaves here is, to the kernel, a later cell of the other's own, whatever its mode", o.Name, o.Line, x.path, x.key, how),
		"give each tenant a directory of its own, out of what other tenants' routes show, or make no route's mount of it writable"
}

// resolvePath is a path as its symlinks resolve, or the path cleaned when
// it cannot be resolved (it does not exist: serve refuses the route for
// that elsewhere).
func resolvePath(path string) string {
	if real, err := filepath.EvalSymlinks(path); err == nil {
		return real
	}
	return filepath.Clean(path)
}

// exposedDaemonFiles says, for each of the daemon's own files (the
// policy, the TLS key: daemonFiles) that a route's cells see in their
// view and may read by its mode (others', or its group's where the group
// is a gid the cells run with: shared or a tenant's), why that is unsafe
// and what to do. The view covers each such file (the null device bound
// over it), but a rename over it (an editor's save, a ConfigMap's update)
// detaches the cover in every view made before: a request running then
// reads the new file. views are p's routes' (routeViews).
func exposedDaemonFiles(p *policy.Policy, views []routeView, files []string, shared uint32) []string {
	cellGIDs := map[uint32]bool{shared: true}
	for _, t := range p.Tenants {
		if t.GID != 0 {
			cellGIDs[t.GID] = true
		}
	}
	var out []string
	seen := map[string]bool{}
	for _, f := range files {
		real := resolvePath(f)
		var st unix.Stat_t
		if seen[real] || unix.Stat(real, &st) != nil {
			continue
		}
		seen[real] = true
		mode := st.Mode & 0o777
		if mode&0o004 == 0 && (mode&0o040 == 0 || !cellGIDs[st.Gid]) {
			continue
		}
		for _, v := range views {
			r, why := v.r, ""
			switch src, ok := v.showing(real); {
			case r.Confinement.HostFilesystem:
				why = "which see the host's files (filesystem: host)"
			case ok:
				why = fmt.Sprintf("whose view shows %s: a cover hides it, but a rename over it detaches the cover, and a request running then reads the new file", src)
			default:
				continue
			}
			out = append(out, fmt.Sprintf("%s (mode %04o, gid %d) is readable by the cells of route %s, %s (fix: chmod 600 %s, or keep it out of the routes' views)", f, mode, st.Gid, r.Name, why, real))
			break
		}
	}
	return out
}

// rootSetuidMounts says, for each writable mount of a route run as the
// host's root (allow_root with host_namespaces: [user]) without the
// seccomp filter (seccomp: off) whose host file system nosuid does not
// report mounted nosuid, that a set-uid file the route's program leaves
// there runs as root for whoever executes it on the host: the cell's own
// bind is nosuid, the host's mount of the directory need not be, and no
// capability of the program's is needed to make a file it owns set-uid.
// The filter refuses every call that would set the bit
// (confine/seccomp.go). A program run as root of a user namespace of its
// own (the default) owns its files as a uid of the range, as any cell's
// program does. A route with filesystem: host has no view, and is the
// host's root anyway.
func rootSetuidMounts(views []routeView, nosuid func(path string) bool) []string {
	var out []string
	for _, v := range views {
		c := v.r.Confinement
		if !v.r.AllowRoot || !c.NoSeccomp || !slices.Contains(c.HostNamespaces, policy.HostUserNamespace) {
			continue
		}
		for _, s := range v.srcs {
			if s.writable && !nosuid(s.path) {
				out = append(out, fmt.Sprintf("route %s runs as the host's root with seccomp: off and %s (%s) writable: a set-uid file its program leaves there runs as root for whoever executes it on the host (fix: mount %s nosuid on the host, keep the seccomp filter, which refuses set-uid modes, drop host_namespaces: [user], or run the route under another user)", v.r.Name, s.key, s.path, s.path))
			}
		}
	}
	return out
}

// hugetlbfsMounts says, for each source of a route's view that is on a
// hugetlbfs or holds one below it (the view's binds are recursive), as
// hugetlbfsAt finds them, that its cells map huge pages of the host's
// pool from its files: a file mapped from a hugetlbfs takes huge pages
// without any flag the seccomp filter sees, and those pages are not
// charged to the cell's memory.max. serve says it unless the hugetlb
// controller closes the pool to every cell
// (cgroup.Features.HugeTLBClosed); check, which cannot tell, always (its
// fix names the controller). A route with filesystem: host has no view.
func hugetlbfsMounts(views []routeView, hugetlbfsAt func(path string) (string, bool)) []string {
	var out []string
	for _, v := range views {
		for _, s := range v.srcs {
			if at, ok := hugetlbfsAt(s.path); ok {
				out = append(out, fmt.Sprintf("route %s binds %s (%s), which shows the hugetlbfs at %s: its cells map huge pages of the host's pool (vm.nr_hugepages) from its files, with no flag the seccomp filter sees and not charged to their memory.max, so one cell can take the whole pool while it runs (fix: keep the hugetlbfs out of the route's view, or run cellgate where the hugetlb controller reaches its group, which closes the pool to every cell: cellgate doctor's huge pages line)", v.r.Name, s.key, s.path, at))
			}
		}
	}
	return out
}

// hugetlbfsIn returns a hugetlbfsMounts finder over the host's mount table:
// a path on a hugetlbfs (statfs), or one below which a hugetlbfs is
// mounted (/proc/self/mountinfo), and where. Without a mount table it
// finds only the first kind.
func hugetlbfsIn() func(path string) (string, bool) {
	points, _ := cgroup.MountPoints("", "hugetlbfs")
	return hugetlbfsAmong(points)
}

// hugetlbfsAmong is hugetlbfsIn with the mount points given.
func hugetlbfsAmong(points []string) func(path string) (string, bool) {
	return func(path string) (string, bool) {
		if onHugetlbfs(path) {
			return path, true
		}
		for _, p := range points {
			if confine.Within(p, path) {
				return p, true
			}
		}
		return "", false
	}
}

// onHugetlbfs reports whether path is on a hugetlbfs (false when it
// cannot tell).
func onHugetlbfs(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && uint32(st.Type) == unix.HUGETLBFS_MAGIC
}

// mountedNosuid reports whether path's file system is mounted nosuid on
// the host (false when it cannot tell).
func mountedNosuid(path string) bool {
	var st unix.Statfs_t
	return unix.Statfs(path, &st) == nil && st.Flags&unix.ST_NOSUID != 0
}

// showing reports which of v's sources shows the resolved path file, if
// one does (none for filesystem: host, which has no view).
func (v routeView) showing(file string) (string, bool) {
	for _, s := range v.srcs {
		if confine.Within(file, s.path) {
			return s.path, true
		}
	}
	return "", false
}
