package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/sys/unix"
)

const exitDoctorFailed = 1 // some check failed: run or serve would refuse

const doctorUsage = `usage: cellgate doctor [flags]

Checks this machine for what cellgate needs and prints each finding with a
fix. It creates a scratch group (cellgate-doctor-PID under --cgroup-base, or
under the cgroup2 mount) to probe the kernel, spawns /bin/true into a cell
under a per-cell uid, then in a fully confined cell (and, if that fails,
with one namespace at a time to say which the kernel refuses), and
removes the group again. Exits 1 when run or
serve would refuse to start, 2 for bad flags.

flags:
`

// doctorConfig is cellgate doctor's configuration.
type doctorConfig struct {
	Shared
}

func parseDoctorConfig(args, environ []string, usageOut io.Writer) (doctorConfig, error) {
	cfg := doctorConfig{Shared: defaultShared()}
	if err := cfg.Shared.parseEnv(environ); err != nil {
		return cfg, err
	}
	fs := flag.NewFlagSet("cellgate doctor", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	cfg.Shared.addFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(usageOut, doctorUsage)
			fs.SetOutput(usageOut)
			fs.PrintDefaults()
		}
		return cfg, err
	}
	if fs.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	return cfg, cfg.Shared.validate(settingOrigins(fs, env.ToMap(environ)))
}

// finding is one line of the doctor's report.
type finding struct {
	level  string // "ok", "warn", "FAIL"
	name   string
	detail string
	fix    string
}

type report struct{ findings []finding }

func (r *report) ok(name, format string, a ...any) {
	r.findings = append(r.findings, finding{"ok", name, fmt.Sprintf(format, a...), ""})
}

func (r *report) warn(name, fix, format string, a ...any) {
	r.findings = append(r.findings, finding{"warn", name, fmt.Sprintf(format, a...), fix})
}

func (r *report) fail(name, fix, format string, a ...any) {
	r.findings = append(r.findings, finding{"FAIL", name, fmt.Sprintf(format, a...), fix})
}

func (r *report) failed() bool {
	return slices.ContainsFunc(r.findings, func(f finding) bool { return f.level == "FAIL" })
}

func (r *report) print(w io.Writer) {
	width := 0
	for _, f := range r.findings {
		width = max(width, len(f.name))
	}
	for _, f := range r.findings {
		fmt.Fprintf(w, "%-4s  %-*s  %s\n", f.level, width, f.name, f.detail)
		if f.fix != "" {
			fmt.Fprintf(w, "      %-*s  fix: %s\n", width, "", f.fix)
		}
	}
}

func doctorMain(ctx context.Context, args []string, std stdio) int {
	cfg, err := parseDoctorConfig(args, std.environ, std.out)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(std.err, "cellgate doctor: %v\n", err)
		return exitUsage
	}
	var r report
	doctor(ctx, cfg, &r)
	r.print(std.out)
	if r.failed() {
		fmt.Fprintln(std.out, "\ncellgate would refuse to start here: fix the FAIL lines above.")
		return exitDoctorFailed
	}
	return exitOK
}

func doctor(ctx context.Context, cfg doctorConfig, r *report) {
	mount, container := checkDelegation(cfg, r)
	if mount == "" || container {
		return
	}
	checkCells(ctx, cfg, mount, r)
}

// checkDelegation checks root, the kernel, the cgroup2 mount and the group
// serve would own. It returns the mount ("" when there is none) and
// whether the process is at the root of a container's cgroup namespace
// (then the container's cgroup is checked here too).
func checkDelegation(cfg doctorConfig, r *report) (mount string, container bool) {
	if os.Geteuid() != 0 {
		r.fail("root", "run cellgate as root (it creates cgroups and starts workers under their own uids)", "running as uid %d", os.Geteuid())
	} else {
		r.ok("root", "running as root")
	}
	checkKernel(r)
	checkConfinementKernel(r)
	checkUserNamespaces(r)
	mount, err := cgroup2Mount()
	if err != nil {
		r.fail("cgroup2", "mount cgroup2 (mount -t cgroup2 none /sys/fs/cgroup), or boot with systemd.unified_cgroup_hierarchy=1", "%v", err)
		return "", false
	}
	r.ok("cgroup2", "mounted at %s", mount)
	checkOwnGroup(cfg, mount, r)
	checkUIDRange(cfg, r)
	checkIDsMapped(cfg, r)
	if b, err := os.ReadFile("/proc/self/cgroup"); err == nil && cfg.CgroupBase == "" && namespacedRoot(b, mount) {
		checkContainerCgroup(cfg, mount, r)
		return mount, true
	}
	return mount, false
}

// unameRelease is the running kernel's release ("" when uname fails).
func unameRelease() string {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// checkUserNamespaces starts /bin/true in a user namespace of its own, as
// a fork route's preloader is started: fork routes need it, and routes
// run as root (their programs are root of one), so a refusal is a
// warning.
func checkUserNamespaces(r *report) {
	// cellgate itself, which every host has (a container's image may have
	// no /bin at all), run to do nothing.
	self, err := os.Executable()
	if err != nil {
		r.warn("user namespaces", "", "cannot tell: the cellgate executable: %v", err)
		return
	}
	cmd := exec.Command(self, "version")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}
	if err := cmd.Run(); err != nil {
		r.warn("user namespaces", "do not chroot cellgate (pivot_root or switch_root instead); allow user namespaces (sysctl user.max_user_namespaces)",
			"refused (%v): fork routes cannot start their preloaders, nor routes run as root their programs (unless host_namespaces: [user])", err)
		return
	}
	r.ok("user namespaces", "available (fork routes run their preloaders in one, routes run as root their programs)")
}

// checkKernel compares the running kernel with the versions the features
// need: cgroup.kill 5.14 (Linux commit 661ee6280931, "cgroup: introduce
// cgroup.kill"), CLONE_INTO_CGROUP 5.7 (man 2 clone), memory.peak 5.19
// (commit 8e20d4b33266, "mm/memcontrol: export memcg->watermark via sysfs
// for v2 memcg") and pids.peak 6.1 (commit 5251c6c436ed, "cgroup: add
// pids.peak interface for pids controller").
func checkKernel(r *report) {
	var u unix.Utsname
	if err := unix.Uname(&u); err != nil {
		r.fail("kernel", "", "uname: %v", err)
		return
	}
	rel := unix.ByteSliceToString(u.Release[:])
	major, minor := kernelVersion(rel)

	at := func(a, b int) bool { return major > a || major == a && minor >= b }
	switch {
	case !at(5, 14):
		r.fail("kernel", "upgrade to Linux 5.14 or later (6.1 or later for pids.peak)", "%s: cellgate needs 5.14 (cgroup.kill; clone3 CLONE_INTO_CGROUP is 5.7)", rel)
	case !at(5, 19):
		r.warn("kernel", "upgrade to Linux 6.1 for per-request memory and pids peaks", "%s: no memory.peak (5.19) or pids.peak (6.1): peaks are not measured", rel)
	case !at(6, 1):
		r.warn("kernel", "upgrade to Linux 6.1 for per-request pids peaks", "%s: no pids.peak (6.1)", rel)
	default:
		r.ok("kernel", "%s (cgroup.kill 5.14, memory.peak 5.19, pids.peak 6.1)", rel)
	}
}

func kernelVersion(rel string) (major, minor int) {
	parts := strings.SplitN(rel, ".", 3)
	if len(parts) < 2 {
		return 0, 0
	}
	major, _ = strconv.Atoi(parts[0])
	digits := parts[1]
	if i := strings.IndexFunc(parts[1], func(r rune) bool { return r < '0' || r > '9' }); i >= 0 {
		digits = parts[1][:i]
	}
	minor, _ = strconv.Atoi(digits)
	return major, minor
}

// checkOwnGroup looks at the group serve takes as its base when
// --cgroup-base is not set: it must not be shared with other processes.
func checkOwnGroup(cfg doctorConfig, mount string, r *report) {
	if cfg.CgroupBase != "" {
		base, _ := cfg.base(mount, "")
		if !strings.HasPrefix(base, mount+"/") {
			// As cgroup.Open refuses it.
			r.fail("base", "name a directory under "+mount+", or a path relative to it", "--cgroup-base %s is not under the cgroup2 mount %s", base, mount)
			return
		}
		if st, err := os.Stat(base); err != nil || !st.IsDir() {
			r.warn("base", "serve creates it; make sure its parent delegates memory, cpu and pids", "--cgroup-base %s does not exist yet", base)
		} else {
			r.ok("base", "%s", base)
		}
		return
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		r.fail("own group", "", "read /proc/self/cgroup: %v", err)
		return
	}
	own := ""
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = rest
		}
	}
	if own == "" {
		r.fail("own group", "run on a kernel with cgroup v2 mounted", "no cgroup v2 line in /proc/self/cgroup")
		return
	}
	dir := filepath.Join(mount, own)
	if own == "/" && !namespacedRoot(b, mount) {
		r.ok("own group", "the root group: serve uses %s as its base", dir)
		return
	}
	procs, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		r.fail("own group", "", "read %s: %v", filepath.Join(dir, "cgroup.procs"), err)
		return
	}
	var others int
	for _, f := range strings.Fields(string(procs)) {
		if f != strconv.Itoa(os.Getpid()) {
			others++
		}
	}
	if others > 0 {
		r.fail("own group", "start serve in a group of its own: systemd Delegate=yes and DelegateSubgroup=supervisor, "+
			"or systemd-run -p Delegate=yes, or pass --cgroup-base (CELLGATE_CGROUP_BASE)",
			"%s is shared with %d other processes: serve would refuse it as its base (cellgate run makes a private one)", dir, others)
		return
	}
	r.ok("own group", "%s is cellgate's alone: serve moves itself into %s/supervisor", dir, dir)
}

// checkUIDRange warns when an account of /etc/passwd falls in the per-cell
// uid range: its processes could be signalled by a cell.
func checkUIDRange(cfg doctorConfig, r *report) {
	rg := sandbox.UIDRange(cfg.UIDs)
	clash, err := namesWithID("/etc/passwd", func(uid uint32) bool {
		return uid >= rg.First && uint64(uid) < uint64(rg.First)+uint64(rg.Count)
	})
	if err != nil {
		r.ok("uid range", "%s, gid %d (no /etc/passwd to compare)", rg, cfg.GID)
		return
	}
	if len(clash) > 0 {
		r.warn("uid range", "choose a range no account uses (--uid-range, CELLGATE_UID_RANGE)", "%s includes the accounts %s", rg, strings.Join(clash, ", "))
		return
	}
	r.ok("uid range", "%s, gid %d: no account of /etc/passwd in it", rg, cfg.GID)
}

// namesWithID returns the names of the entries of a passwd or group file
// (name:x:id:...) whose id matches.
func namesWithID(path string, match func(uint32) bool) ([]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	var names []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) < 3 {
			continue
		}
		id, err := strconv.ParseUint(fields[2], 10, 32)
		if err == nil && match(uint32(id)) {
			names = append(names, fields[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return names, nil
}

// checkCells opens a scratch tree (which probes cgroup.kill, the peaks and
// a spawn with clone3 CLONE_INTO_CGROUP), then runs /bin/true in a cell as
// the daemon would.
func checkCells(ctx context.Context, cfg doctorConfig, mount string, r *report) {
	parent := mount
	if cfg.CgroupBase != "" {
		parent, _ = cfg.base(mount, "")
		if _, err := os.Stat(parent); err != nil {
			parent = filepath.Dir(parent)
		}
	}
	scratch := filepath.Join(parent, fmt.Sprintf("cellgate-doctor-%d", os.Getpid()))
	sc, err := os.ReadFile(filepath.Join(parent, "cgroup.subtree_control"))
	if err != nil {
		r.fail("controllers", "", "read %s: %v", filepath.Join(parent, "cgroup.subtree_control"), err)
		return
	}
	have := strings.Fields(string(sc))
	ctrls, _ := os.ReadFile(filepath.Join(parent, "cgroup.controllers"))
	procCgroups, _ := os.ReadFile("/proc/cgroups")
	available, v1 := strings.Fields(string(ctrls)), v1Controllers(procCgroups)
	for _, c := range []string{"memory", "cpu", "pids"} {
		switch {
		case slices.Contains(have, c):
		case slices.Contains(cfg.Unenforced, c):
			r.warn("controller "+c, "enable it for cellgate's subtree (systemd: Delegate=yes), then drop it from --unenforced",
				"not enabled in %s/cgroup.subtree_control: allowed by --unenforced, its limits are not enforced", parent)
		default:
			r.fail("controller "+c, controllerFix(c, parent, available, v1), "not enabled in %s/cgroup.subtree_control", parent)
		}
	}
	if slices.Contains(have, "memory") && slices.Contains(have, "cpu") && slices.Contains(have, "pids") {
		r.ok("controllers", "memory cpu pids enabled for children of %s", parent)
	}

	log := slog.New(slog.DiscardHandler)
	tree, err := cgroup.Open(ctx, cgroup.Options{Mount: mount, Base: scratch, Unenforced: []string{"memory", "cpu", "pids"}, Logger: log, SweepTimeout: 5 * time.Second})
	if err != nil {
		fix := "see the error; give cellgate a delegated cgroup (systemd Delegate=yes) and a kernel of 5.14 or later"
		r.fail("cgroup tree", fix, "scratch group %s: %v", scratch, err)
		return
	}
	defer func() {
		if err := tree.Close(); err != nil {
			r.fail("cleanup", "remove it by hand: rmdir the groups under "+scratch, "%v", err)
		}
	}()
	feat := tree.Features()
	r.ok("cgroup.kill", "present (kills a whole cell at once)")
	r.ok("clone3", "a spawn straight into a cell (CLONE_INTO_CGROUP) worked")
	peak := func(name string, have bool, ctrl, version string) {
		switch {
		case have:
			r.ok(name, "present")
		case !slices.Contains(feat.Enabled, ctrl):
			r.warn(name, "enable the "+ctrl+" controller", "not measured: the %s controller is not enabled", ctrl)
		default:
			r.warn(name, "upgrade to Linux "+version, "absent on this kernel (needs %s): not measured", version)
		}
	}
	peak("memory.peak", feat.MemoryPeak, "memory", "5.19")
	peak("pids.peak", feat.PidsPeak, "pids", "6.1")
	peak("memory.oom.group", feat.MemoryOOMGroup, "memory", "4.19")
	switch {
	case !feat.MemoryPeak:
	case feat.MemoryPeakReset:
		r.ok("memory.peak reset", "present (a reused group's memory.peak is reset for each request: groups: reused keeps it)")
	default:
		r.warn("memory.peak reset", "upgrade to Linux 6.12 for it, or leave routes at groups: fresh (the default)",
			"absent on this kernel (needs 6.12): a route with groups: reused reports no memory.peak for a request in a reused group")
	}
	pages, err := hugePagePool("/sys/kernel/mm/hugepages")
	checkHugePages(r, pages, err, feat.HugeTLBClosed)

	if os.Geteuid() != 0 {
		return // switching to a per-cell uid needs root; already reported
	}
	prof, err := cgroup.NewProfile("", policy.DefaultLimits().Resources())
	if err != nil {
		r.fail("cell", "", "profile: %v", err)
		return
	}
	launcher, self, err := openLauncher(cfg.Init)
	if err != nil {
		r.fail("cell init", "build and install cellgate-init beside cellgate (make build), or pass --init", "%v", err)
		return
	}
	defer launcher.Close()
	if self {
		r.warn("cell init", "install cellgate-init beside cellgate (make build)", "no cellgate-init beside cellgate: confined cells would start cellgate itself, at several times the cost")
	} else {
		r.ok("cell init", "%s", launcher.Name())
	}
	runner, err := sandbox.New(sandbox.Config{Cells: sandbox.TreeCells{Tree: tree}, Profile: prof, UIDs: sandbox.UIDRange(cfg.UIDs), GID: cfg.GID,
		Timeout: 10 * time.Second, Launcher: launcher})
	if err != nil {
		r.fail("cell", "", "%v", err)
		return
	}
	defer runner.Close()
	defer checkConfinedCell(ctx, cfg, runner, r)
	res, err := runner.Run(ctx, sandbox.Spec{Path: "/bin/true"})
	switch {
	case err != nil:
		r.fail("cell", "see the error", "run /bin/true in a cell: %v", err)
	case res.Cause != sandbox.CauseOK:
		r.fail("cell", "see the cause", "run /bin/true in a cell as uid %d: cause %s, exit %d, signal %v", res.UID, res.Cause, res.ExitCode, res.Signal)
	case len(res.Unenforced) > 0:
		r.ok("cell", "/bin/true ran in a cell as uid %d (limits not enforced: %s)", res.UID, strings.Join(res.Unenforced, " "))
	default:
		r.ok("cell", "/bin/true ran in a cell as uid %d with memory, cpu and pids limits written", res.UID)
	}
}
