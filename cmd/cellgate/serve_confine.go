package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// routeConfinement builds and encodes a route's confinement plan, once
// per policy load, for serve and for cellgate check alike. The program's
// directory (or the route's dir) is shown read-only at its own path; a
// fork route's app directory and its interpreter's, and the plan is the
// preloader's (confine.Plan.ForPreloader). A rootfs or mount source that
// does not exist is refused here: each cell would otherwise fail to bind
// it, every request a 502. hidden are the daemon's own files
// (daemonFiles), covered where the view shows them. root is the user
// namespace a program of the route run as root is root of (rootMap; nil:
// the host's root).
func routeConfinement(r *policy.Route, hidden []string, root *confine.RootMap) (*confine.Prepared, error) {
	p, err := buildConfinement(r, hidden, root)
	if err != nil {
		return nil, fmt.Errorf("confinement: %w", err)
	}
	return p, nil
}

// buildConfinement is routeConfinement without its prefix (cellgate check
// names the key itself).
func buildConfinement(r *policy.Route, hidden []string, root *confine.RootMap) (*confine.Prepared, error) {
	c := r.Confinement
	if err := confinementSources(c); err != nil {
		return nil, err
	}
	o := confine.Options{
		SystemDirs: c.SystemDirs,
		RootFS:     c.RootFS,
		TmpfsSize:  c.TmpfsSize,
		NoSeccomp:  c.NoSeccomp,
		NoFile:     uint64(c.NoFile),
		HugePages:  c.HugePages,
		Fresh:      c.FreshCells,
		Programs:   r.Dir,
		Hidden:     hidden,
		Root:       r.AllowRoot,
		RootMap:    root,
	}
	if r.Program != "" {
		o.Programs = filepath.Dir(r.Program)
	}
	if r.Fork != nil {
		o.Programs, o.Interpreter = r.Fork.AppDir, r.Fork.Python
	}
	if c.HostNetwork {
		o.Share |= confine.NSNet
	}
	if c.HostFilesystem {
		o.Share |= confine.NSMount
	}
	for _, n := range c.HostNamespaces {
		if n == policy.HostUserNamespace {
			continue // the program's root is the host's: root is nil
		}
		ns, ok := confine.ParseNamespace(n)
		if !ok {
			return nil, fmt.Errorf("host_namespaces: unknown namespace %q", n)
		}
		o.Share |= ns
	}
	for _, m := range c.Mounts {
		o.Mounts = append(o.Mounts, confine.Bind{Source: m.Source, Target: m.Target, Writable: m.Writable})
	}
	plan, err := confine.Build(o, confine.OSFS{})
	if err != nil {
		return nil, err
	}
	if r.Program != "" && !c.HostFilesystem && c.RootFS == "" {
		if err := programShown(plan, r.Program); err != nil {
			return nil, err
		}
	}
	if r.Fork != nil {
		if plan, err = plan.ForPreloader(); err != nil {
			return nil, err
		}
	}
	return confine.Prepare(plan)
}

// programShown checks that the view shows what the kernel opens to run a
// route's program, where it opens it: each file a symlink of the program
// leads to (/usr/local/bin/app -> /opt/app/bin/app: /opt is not in a
// view of /usr, /lib* and /etc), and a script's #! interpreter and where
// its symlinks lead. Otherwise every request fails with a 127, "not
// found", for a program that is there. Each hop is read on the host at
// the path the cell would read (a bind shows the host's file at its own
// path).
func programShown(plan *confine.Plan, program string) error {
	if err := hopsShown(plan, program, "program "+program); err != nil {
		return err
	}
	head, err := sandbox.ReadHead(program, 256)
	if err != nil || !bytes.HasPrefix(head, []byte("#!")) {
		return nil // not a script, or not readable: verifyRoute says what
	}
	interp, _, err := sandbox.Shebang(head)
	if err != nil {
		return nil // verifyRoute says what
	}
	if _, err := os.Lstat(interp); err != nil {
		return nil // not on the host either: verifyRoute says what
	}
	if !plan.Shows(interp) {
		return fmt.Errorf("program %s: its interpreter %s (the #! line) is not in the cell's view "+
			"(fix: add its directory to system_dirs or mount it where it is, or set filesystem: host)", program, interp)
	}
	return hopsShown(plan, interp, "program "+program+": its interpreter "+interp)
}

// maxDirPrograms bounds the entries of a dir route's directory that
// dirProgramsHidden looks at, once per load: a directory of many files
// (a whole bin/) costs a read and a few stats each.
const maxDirPrograms = 1000

// dirProgramsHidden returns, for a dir route confined to its own view
// (plan), why each program of its directory that the view does not let
// the kernel run cannot run (programShown): a request naming one fails
// with a 127, "not found", though the file is there. Warnings, not
// problems: the directory's programs come and go between loads. It looks
// at maxDirPrograms entries at most and says when there were more; it
// reports them by name (the directory's order is its file system's).
func dirProgramsHidden(plan *confine.Plan, r *policy.Route) []string {
	dir := r.Dir
	if dir == "" || r.Confinement.HostFilesystem || r.Confinement.RootFS != "" {
		return nil // the host's files, or a rootfs of the route's own: as they are
	}
	f, err := os.Open(dir)
	if err != nil {
		return nil // verifyRoute says what
	}
	defer f.Close()
	ents, err := f.ReadDir(maxDirPrograms + 1)
	if err != nil && !errors.Is(err, io.EOF) {
		return nil
	}
	slices.SortFunc(ents, func(a, b fs.DirEntry) int { return strings.Compare(a.Name(), b.Name()) })
	var out []string
	for i, e := range ents {
		if i == maxDirPrograms {
			out = append(out, fmt.Sprintf("route %s (line %d): dir %s has more than %d entries; only the first %d were checked against the cells' view", r.Name, r.Line, dir, maxDirPrograms, maxDirPrograms))
			break
		}
		if e.IsDir() || (e.Type()&fs.ModeSymlink == 0 && !e.Type().IsRegular()) {
			continue
		}
		if err := programShown(plan, filepath.Join(dir, e.Name())); err != nil {
			out = append(out, fmt.Sprintf("route %s (line %d): %v: a request for it fails with 127, not found", r.Name, r.Line, err))
		}
	}
	return out
}

// hopsShown follows path's symlinks (at most 40, as the kernel does)
// and checks that the view shows where each leads.
func hopsShown(plan *confine.Plan, path, what string) error {
	for range 40 {
		fi, err := os.Lstat(path)
		if err != nil || fi.Mode()&os.ModeSymlink == 0 {
			return nil // the file itself (or missing: verifyRoute says so)
		}
		target, err := os.Readlink(path)
		if err != nil {
			return nil
		}
		if !filepath.IsAbs(target) {
			target = filepath.Join(filepath.Dir(path), target)
		}
		target = filepath.Clean(target)
		if !plan.Shows(target) {
			return fmt.Errorf("%s is a symlink to %s, which is not in the cell's view "+
				"(fix: name %s itself, mount %s where it is, or set filesystem: host)", what, target, target, filepath.Dir(target))
		}
		path = target
	}
	return nil
}

// ownRootNS reports whether a route's program, run under user, is root
// of a user namespace of its own (confine.Plan.RootMap): it runs as root,
// in a view of its own, in a cgi route, without host_namespaces: [user].
func ownRootNS(r *policy.Route, user *sandbox.Credential) bool {
	return user != nil && user.UID == 0 && r.Fork == nil && !r.Confinement.HostFilesystem &&
		!slices.Contains(r.Confinement.HostNamespaces, policy.HostUserNamespace)
}

// daemonFiles are the files of serve's that no cell may read whatever
// their mode, the policy (its env values, its other tenants) and the TLS
// key, each as given and as its symlinks resolve, absolute: where a
// route's view shows one (a policy in /etc, the default view's), the
// plan covers it (confine.Options.Hidden).
func daemonFiles(files ...string) []string {
	var out []string
	for _, f := range files {
		if f == "" {
			continue
		}
		abs, err := filepath.Abs(f)
		if err != nil {
			continue
		}
		out = append(out, abs)
		if real, err := filepath.EvalSymlinks(abs); err == nil && real != abs {
			out = append(out, real)
		}
	}
	return out
}

// confinementSources checks that the host paths a route's view is built
// from exist, its rootfs and every mount's source, and that the host
// lets its init set the route's nofile; every one wrong is in the error
// (joined: check reports each).
func confinementSources(c policy.Confinement) error {
	var errs []error
	if n := nrOpen(); n > 0 && c.NoFile > n {
		errs = append(errs, fmt.Errorf("nofile %d: above this host's fs.nr_open (%d), the most files a process may have open: every cell of the route would fail to start (fix: nofile: %d or less, or raise fs.nr_open)", c.NoFile, n, n))
	}
	if c.RootFS != "" {
		if _, err := os.Stat(c.RootFS); err != nil {
			errs = append(errs, fmt.Errorf("rootfs %s: %w (fix: create it, or correct the path)", c.RootFS, pathCause(err)))
		}
	}
	for _, m := range c.Mounts {
		if _, err := os.Stat(m.Source); err != nil {
			errs = append(errs, fmt.Errorf("mounts: source %s (bound at %s): %w (fix: create it, or correct or remove the mount)",
				m.Source, m.Target, pathCause(err)))
		}
	}
	return errors.Join(errs...)
}

// pathCause is a *PathError's cause alone, for a message that names the
// path already.
func pathCause(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// withInitPids returns res with policy.InitPids, what a confined cell's
// init may add to the cell's pids, added to its pids limit (a copy: the
// route's Resources are shared). A route's pids limit is the program's;
// the policy keeps it within policy.MaxPids - policy.InitPids, so that
// the sum is one pids.max takes.
func withInitPids(res *specs.LinuxResources) *specs.LinuxResources {
	if res == nil || res.Pids == nil || res.Pids.Limit == nil || *res.Pids.Limit <= 0 {
		return res
	}
	out := *res
	limit := *res.Pids.Limit + policy.InitPids
	out.Pids = &specs.LinuxPids{Limit: &limit}
	return &out
}

// tenantGID is the gid of the route's tenant, 0 when it has none of its
// own.
func tenantGID(pol *policy.Policy, r *policy.Route) uint32 {
	i := slices.IndexFunc(pol.Tenants, func(t *policy.Tenant) bool { return t.Name == r.Tenant })
	if i < 0 {
		return 0
	}
	return pol.Tenants[i].GID
}

// openLauncher opens the cell init: --init, else cellgate-init (C, built
// by make build) beside the running executable, else this binary itself
// (it runs the same init in Go, confine.Init, when started as
// cellgate-init), at the cost of a Go runtime's start and cellgate's
// package initialisation per request; the last is logged by the caller.
func openLauncher(flagPath string) (*confine.Launcher, bool, error) {
	if flagPath != "" {
		l, err := confine.OpenLauncher(flagPath)
		if err != nil {
			return nil, false, fmt.Errorf("--init: %w", err)
		}
		return l, false, nil
	}
	if exe, err := os.Executable(); err == nil {
		beside := filepath.Join(filepath.Dir(exe), confine.InitArg0)
		l, err := confine.OpenLauncher(beside)
		if err == nil {
			return l, false, nil
		}
		if !errors.Is(err, fs.ErrNotExist) {
			return nil, false, err
		}
	}
	l, err := confine.OpenLauncher("")
	return l, true, err
}

// nrOpen is the host's fs.nr_open, above which no RLIMIT_NOFILE may be
// set; 0 when it cannot be read.
func nrOpen() int64 {
	b, err := os.ReadFile("/proc/sys/fs/nr_open")
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}
