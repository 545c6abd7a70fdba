package cgroup

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

func TestOpenPrivateBase(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids", "io")
	fs := &fakeFS{}
	var spawnedIn string
	tr := mustOpenFake(t, fs, root, func(o *Options) {
		o.MaxCells = 10
		o.ProbeSpawn = func(fd int) error {
			var st unix.Stat_t
			if err := unix.Fstat(fd, &st); err != nil {
				return err
			}
			if st.Mode&unix.S_IFMT != unix.S_IFDIR {
				return fmt.Errorf("fd %d is not a directory", fd)
			}
			spawnedIn = "probe"
			return nil
		}
	})
	base := filepath.Join(root, "cellgate")
	f := tr.Features()
	if f.Base != base || f.Mount != root || f.Supervisor != "" {
		t.Errorf("Features paths = %+v", f)
	}
	if want := []string{"memory", "cpu", "pids", "io"}; !slices.Equal(f.Enabled, want) {
		t.Errorf("Enabled = %v, want %v", f.Enabled, want)
	}
	if !f.Kill || !f.MemoryPeak || !f.PidsPeak || !f.MemoryOOMGroup || !f.CloneIntoCgroup || len(f.Unenforced) != 0 {
		t.Errorf("Features = %+v", f)
	}
	if spawnedIn == "" {
		t.Error("the spawn probe was not called")
	}
	for _, dir := range []string{base, filepath.Join(base, "cells")} {
		if got := fakeControllers(read(t, filepath.Join(dir, "cgroup.subtree_control"))); !slices.Equal(got, f.Enabled) {
			t.Errorf("%s/cgroup.subtree_control = %v", dir, got)
		}
	}
	if got := read(t, filepath.Join(base, "cells", "cgroup.max.descendants")); got != "10" {
		t.Errorf("cgroup.max.descendants = %q", got)
	}
	if exists(filepath.Join(base, "cells", probeDir)) {
		t.Error("probe group left behind")
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if exists(base) {
		t.Errorf("Close left the private base %s", base)
	}
}

// TestOpenClosesHugeTLB: where the hugetlb controller reaches the base,
// it is enabled for cells/ alone, whose every hugetlb limit is 0, so that
// no tenant or cell below (charged to cells/, having no hugetlb state of
// its own) takes a huge page; where it does not, nothing is written.
func TestOpenClosesHugeTLB(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids", "hugetlb")
	tr := mustOpenFake(t, &fakeFS{}, root, nil)
	defer tr.Close()
	base := filepath.Join(root, "cellgate")
	cells := filepath.Join(base, "cells")
	if !tr.Features().HugeTLBClosed {
		t.Error("Features.HugeTLBClosed = false")
	}
	if got := fakeControllers(read(t, filepath.Join(base, "cgroup.subtree_control"))); !slices.Contains(got, "hugetlb") {
		t.Errorf("%s/cgroup.subtree_control = %v, want hugetlb in it", base, got)
	}
	if got := fakeControllers(read(t, filepath.Join(cells, "cgroup.subtree_control"))); slices.Contains(got, "hugetlb") {
		t.Errorf("%s/cgroup.subtree_control = %v: hugetlb enabled below cells/", cells, got)
	}
	for _, f := range []string{"hugetlb.2MB.max", "hugetlb.2MB.rsvd.max", "hugetlb.1GB.max", "hugetlb.1GB.rsvd.max"} {
		if got := read(t, filepath.Join(cells, f)); got != "0" {
			t.Errorf("%s = %q, want 0", f, got)
		}
	}
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	if exists(filepath.Join(c.Path(), "hugetlb.2MB.max")) {
		t.Error("a cell has hugetlb files: the controller is enabled below cells/")
	}

	plain := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	defer plain.Close()
	if plain.Features().HugeTLBClosed {
		t.Error("without the hugetlb controller: Features.HugeTLBClosed = true")
	}
}

func TestOpenControllerMissing(t *testing.T) {
	root := fakeRoot(t, "cpu")
	_, err := openFake(t, &fakeFS{}, root, nil)
	var cm *ControllerMissingError
	if !errors.As(err, &cm) || !errors.Is(err, ErrControllerMissing) {
		t.Fatalf("err = %v, want a *ControllerMissingError", err)
	}
	if cm.Controller != "memory" || !slices.Equal(cm.Others, []string{"pids"}) {
		t.Errorf("Controller = %q, Others = %q, want memory and then pids: every missing one at once", cm.Controller, cm.Others)
	}
	if !strings.Contains(err.Error(), `controllers memory, pids are not available`) || !strings.Contains(err.Error(), "--unenforced memory,pids") {
		t.Errorf("error does not name every missing controller: %v", err)
	}
	if !strings.Contains(err.Error(), "Delegate=") {
		t.Errorf("error has no remedy: %v", err)
	}
	if exists(filepath.Join(root, "cellgate")) {
		t.Error("failed Open left its private base behind")
	}
}

func TestOpenUnenforced(t *testing.T) {
	root := fakeRoot(t, "cpu")
	tr := mustOpenFake(t, &fakeFS{}, root, func(o *Options) { o.Unenforced = []string{"memory", "pids"} })
	if got := tr.Features().Unenforced; !slices.Equal(got, []string{"memory", "pids"}) {
		t.Fatalf("Features.Unenforced = %v", got)
	}
	prof, err := NewProfile("", &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: i64(1 << 20)},
		CPU:    &specs.LinuxCPU{Quota: i64(10000)},
		Pids:   &specs.LinuxPids{Limit: i64(4)},
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.NewCell(prof)
	if err != nil {
		t.Fatalf("NewCell: %v", err)
	}
	defer c.Remove(t.Context())
	if got := c.Unenforced(); !slices.Equal(got, []string{"memory", "pids"}) {
		t.Errorf("Cell.Unenforced = %v", got)
	}
	if got := read(t, filepath.Join(c.Path(), "cpu.max")); got != "10000 100000" {
		t.Errorf("cpu.max = %q", got)
	}
	for _, f := range []string{"memory.max", "memory.oom.group", "pids.max"} {
		if exists(filepath.Join(c.Path(), f)) {
			t.Errorf("%s written although memory and pids are unenforced", f)
		}
	}
}

func TestOpenRejectsUnknownUnenforced(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	if _, err := openFake(t, &fakeFS{}, root, func(o *Options) { o.Unenforced = []string{"io"} }); err == nil {
		t.Fatal("Open accepted io as an unenforced controller")
	}
}

func TestOpenProbeSpawnFails(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	_, err := openFake(t, &fakeFS{}, root, func(o *Options) {
		o.ProbeSpawn = func(int) error { return unix.ENOSYS }
	})
	if !errors.Is(err, ErrUnsupported) || !errors.Is(err, unix.ENOSYS) {
		t.Fatalf("err = %v, want ErrUnsupported wrapping the spawn's ENOSYS", err)
	}
	if exists(filepath.Join(root, "cellgate")) {
		t.Error("failed Open left its private base behind")
	}
}

func TestOpenBaseOutsideMount(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	_, err := openFake(t, &fakeFS{}, root, func(o *Options) { o.Base = t.TempDir() })
	if err == nil {
		t.Fatal("Open accepted a base outside the mount")
	}
}

// fakeProc writes a proc root whose mountinfo shows root as the cgroup2
// mount and whose self/cgroup puts the process in group.
func fakeProc(t *testing.T, root, group string) string {
	t.Helper()
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(proc, "self", "mountinfo"), "22 1 0:21 / /sys rw - sysfs sysfs rw\n41 30 0:38 / "+root+" rw - cgroup2 cgroup2 rw\n")
	write(t, filepath.Join(proc, "self", "cgroup"), "1:cpu:/\n0::"+group+"\n")
	return proc
}

// fakeOwnGroup makes <root>/<name> holding pids, as a service manager
// would have.
func fakeOwnGroup(t *testing.T, fs *fakeFS, root, name string, pids ...int) string {
	t.Helper()
	dir := filepath.Join(root, name)
	if err := fs.mkdir(dir); err != nil {
		t.Fatal(err)
	}
	var s []string
	for _, p := range pids {
		s = append(s, strconv.Itoa(p))
	}
	write(t, filepath.Join(dir, "cgroup.procs"), strings.Join(s, "\n"))
	return dir
}

func TestOpenOwnGroupMovesSelf(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	own := fakeOwnGroup(t, fs, root, "svc", os.Getpid())
	tr, err := Open(t.Context(), Options{ProcRoot: fakeProc(t, root, "/svc"), ProbeSpawn: func(int) error { return nil }, ops: fs})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	sup := filepath.Join(own, "supervisor")
	if f := tr.Features(); f.Base != own || f.Supervisor != sup {
		t.Errorf("Base %q Supervisor %q, want %q %q", f.Base, f.Supervisor, own, sup)
	}
	if got := read(t, filepath.Join(sup, "cgroup.procs")); got != strconv.Itoa(os.Getpid()) {
		t.Errorf("supervisor cgroup.procs = %q, want our pid", got)
	}
	if err := tr.Close(); err != nil {
		t.Fatal(err)
	}
	if exists(filepath.Join(own, "cells")) || !exists(sup) || !exists(own) {
		t.Errorf("after Close: cells gone %v, supervisor kept %v, base kept %v",
			!exists(filepath.Join(own, "cells")), exists(sup), exists(own))
	}
}

func TestOpenOwnGroupShared(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	fakeOwnGroup(t, fs, root, "svc", 1, os.Getpid())
	_, err := Open(t.Context(), Options{ProcRoot: fakeProc(t, root, "/svc"), ProbeSpawn: func(int) error { return nil }, ops: fs})
	if !errors.Is(err, ErrNotDelegated) {
		t.Fatalf("err = %v, want ErrNotDelegated", err)
	}
	if !strings.Contains(err.Error(), "DelegateSubgroup=supervisor") || !strings.Contains(err.Error(), "cellgate doctor") {
		t.Errorf("error has no remedy: %v", err)
	}
	if exists(filepath.Join(root, "svc", "supervisor")) {
		t.Error("created supervisor/ in a shared group")
	}
}

func TestOpenDelegateSubgroup(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	unit := fakeOwnGroup(t, fs, root, "unit")
	write(t, filepath.Join(unit, "cgroup.subtree_control"), "memory cpu pids")
	sup := fakeOwnGroup(t, fs, root, "unit/supervisor", os.Getpid())
	tr, err := Open(t.Context(), Options{ProcRoot: fakeProc(t, root, "/unit/supervisor"), ProbeSpawn: func(int) error { return nil }, ops: fs})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer tr.Close()
	if f := tr.Features(); f.Base != unit || f.Supervisor != sup {
		t.Errorf("Base %q Supervisor %q, want %q %q", f.Base, f.Supervisor, unit, sup)
	}
	if !exists(filepath.Join(unit, "cells")) {
		t.Error("no cells/ beside supervisor/")
	}
}

func TestOpenSweepsLeftovers(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	base := filepath.Join(root, "cellgate")
	for _, d := range []string{base, base + "/cells", base + "/cells/acme", base + "/cells/acme/cold1", base + "/cells/acme/cold2", base + "/cells/default"} {
		if err := fs.mkdir(d); err != nil {
			t.Fatal(err)
		}
	}
	write(t, base+"/cells/cgroup.subtree_control", "memory cpu pids")
	write(t, base+"/cells/acme/cold1/cgroup.events", "populated 1\nfrozen 0\n")
	killer(t, base+"/cells/acme/cold1")
	tr := mustOpenFake(t, fs, root, nil)
	ents, err := os.ReadDir(tr.CellsPath())
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		if e.IsDir() {
			t.Errorf("leftover %s not swept", e.Name())
		}
	}
	if got := read(t, base+"/cells/cgroup.subtree_control"); got == "" {
		t.Error("cells/ lost its controllers")
	}
}

// TestOpenLeavesStuckLeftover: a leftover that does not empty after its
// kill (a process in uninterruptible sleep on a hung mount) is left in
// place with its tenant group, its siblings and the other leftovers are
// swept, and Open succeeds. Before, Open failed ("sweep leftover cells:
// wait for .../stuck to empty"): one stuck request of a previous run kept
// every restart of the daemon from serving.
func TestOpenLeavesStuckLeftover(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	base := filepath.Join(root, "cellgate")
	for _, d := range []string{base, base + "/cells", base + "/cells/acme", base + "/cells/acme/stuck", base + "/cells/acme/cold",
		base + "/cells/default", base + "/cells/default/busy"} {
		if err := fs.mkdir(d); err != nil {
			t.Fatal(err)
		}
	}
	write(t, base+"/cells/cgroup.subtree_control", "memory cpu pids")
	write(t, base+"/cells/acme/stuck/cgroup.events", "populated 1\nfrozen 0\n")
	write(t, base+"/cells/default/busy/cgroup.events", "populated 1\nfrozen 0\n")
	killer(t, base+"/cells/default/busy")
	logs := &bytes.Buffer{}
	tr, err := openFake(t, fs, root, func(o *Options) {
		o.SweepTimeout = 300 * time.Millisecond
		o.Logger = slog.New(slog.NewTextHandler(logs, nil))
	})
	if err != nil {
		t.Fatalf("Open with one leftover that does not empty: %v, want it left and the daemon started", err)
	}
	for _, d := range []string{"acme/cold", "default/busy", "default"} {
		if exists(filepath.Join(tr.CellsPath(), d)) {
			t.Errorf("leftover %s not swept beside the stuck one", d)
		}
	}
	if !exists(filepath.Join(tr.CellsPath(), "acme/stuck")) {
		t.Error("the stuck leftover is gone: the fake kernel would have refused its rmdir")
	}
	if !strings.Contains(logs.String(), "acme/stuck") {
		t.Errorf("the stuck leftover is not logged:\n%s", logs)
	}
	// Its tenant group is the previous run's, with that run's limits: a
	// budget that sets no memory limit resets its memory.max.
	write(t, filepath.Join(tr.CellsPath(), "acme", "memory.max"), "1073741824")
	write(t, filepath.Join(tr.CellsPath(), "acme", "pids.max"), "max")
	if _, err := tr.Tenant("acme", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(100)}}); err != nil {
		t.Fatalf("tenant acme beside the leftover: %v", err)
	}
	if got := read(t, filepath.Join(tr.CellsPath(), "acme", "memory.max")); got != "max" {
		t.Errorf("the previous run's tenant group keeps memory.max %s under a budget without one, want max", got)
	}
	if err := tr.Close(); err == nil || !strings.Contains(err.Error(), "acme/stuck") {
		t.Errorf("Close with the stuck leftover still there: %v, want an error naming it", err)
	}
}

func testProfile(t testing.TB, tenant string) *Profile {
	t.Helper()
	p, err := NewProfile(tenant, &specs.LinuxResources{
		Memory: &specs.LinuxMemory{Limit: i64(32 << 20)},
		CPU:    &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)},
		Pids:   &specs.LinuxPids{Limit: i64(16)},
	})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func TestNewCellWritesLimits(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	prof := testProfile(t, "")
	names := map[string]bool{}
	for range 50 {
		c, err := tr.NewCell(prof)
		if err != nil {
			t.Fatalf("NewCell: %v", err)
		}
		if names[c.Name()] {
			t.Fatalf("name %s handed out twice", c.Name())
		}
		names[c.Name()] = true
		if err := ValidName(c.Name()); err != nil {
			t.Errorf("cell name: %v", err)
		}
		if c.Tenant() != DefaultTenant || c.Path() != filepath.Join(tr.CellsPath(), DefaultTenant, c.Name()) || c.Profile() != prof.Key() {
			t.Errorf("cell %s: tenant %q profile %v", c.Path(), c.Tenant(), c.Profile())
		}
		if len(c.Unenforced()) != 0 {
			t.Errorf("Unenforced = %v", c.Unenforced())
		}
		var st unix.Stat_t
		if err := unix.Fstat(c.FD(), &st); err != nil || st.Mode&unix.S_IFMT != unix.S_IFDIR {
			t.Errorf("FD %d: %v, mode %o", c.FD(), err, st.Mode)
		}
		for _, s := range prof.Settings() {
			if got := read(t, filepath.Join(c.Path(), s.File)); got != s.Value {
				t.Errorf("%s = %q, want %q", s.File, got, s.Value)
			}
		}
		if err := c.Remove(t.Context()); err != nil {
			t.Fatalf("Remove: %v", err)
		}
		if exists(c.Path()) {
			t.Fatalf("Remove left %s", c.Path())
		}
		if err := c.Remove(t.Context()); err != nil {
			t.Fatalf("second Remove: %v", err)
		}
	}
	if got := prof.Settings(); !slices.Contains(got, Setting{"memory.oom.group", "1"}) || !slices.Contains(got, Setting{"memory.swap.max", "0"}) {
		t.Errorf("profile settings %v lack the cell defaults", got)
	}
}

func TestNewCellUndoesOnWriteFailure(t *testing.T) {
	fs := &fakeFS{}
	tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
	// The fake has no memory.zswap.max, as a kernel without zswap.
	prof, err := NewProfile("t", &specs.LinuxResources{Unified: map[string]string{"memory.zswap.max": "0"}})
	if err != nil {
		t.Fatal(err)
	}
	_, err = tr.NewCell(prof)
	if !errors.Is(err, unix.ENOENT) || !strings.Contains(err.Error(), `memory.zswap.max="0"`) {
		t.Fatalf("err = %v, want ENOENT naming the write", err)
	}
	ents, _ := os.ReadDir(filepath.Join(tr.CellsPath(), "t"))
	for _, e := range ents {
		if e.IsDir() {
			t.Errorf("failed NewCell left %s", e.Name())
		}
	}
}

func TestNewCellTooMany(t *testing.T) {
	for _, errno := range []unix.Errno{unix.EAGAIN, unix.ENOSPC} {
		t.Run(errno.Error(), func(t *testing.T) {
			fs := &fakeFS{}
			tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
			tr.Tenant("t", nil)
			fs.mkdirErr = func(path string) error {
				if strings.Contains(filepath.Base(path), "-") {
					return errno
				}
				return nil
			}
			_, err := tr.NewCell(testProfile(t, "t"))
			if !errors.Is(err, ErrTooManyCells) || !errors.Is(err, errno) {
				t.Fatalf("err = %v, want ErrTooManyCells and %v", err, errno)
			}
		})
	}
}

func TestNewCellControllerMissing(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	prof, err := NewProfile("t", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	var cm *ControllerMissingError
	if _, err := tr.NewCell(prof); !errors.As(err, &cm) || cm.Controller != "cpuset" || cm.Need != "cpuset.cpus" {
		t.Fatalf("err = %v, want cpuset missing for cpuset.cpus", err)
	}
	if err := tr.Check(prof); !errors.Is(err, ErrControllerMissing) {
		t.Fatalf("Check = %v", err)
	}
}

func TestCellKillWaitRemove(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(c.Path(), "cgroup.events"), "populated 1\nfrozen 0\n")
	if p, err := c.Populated(); err != nil || !p {
		t.Fatalf("Populated = %v, %v", p, err)
	}
	killer(t, c.Path())
	if err := c.Remove(t.Context()); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if exists(c.Path()) {
		t.Fatal("populated cell not removed")
	}
}

// TestCellRemoveEmptyReadsNoEvents: an empty cell is removed by its
// rmdir alone, with no read of its cgroup.events (a read that cannot be
// parsed here fails the removal if one is made); a populated one is
// refused by the rmdir (EBUSY), then killed, waited for and removed
// (TestCellKillWaitRemove).
func TestCellRemoveEmptyReadsNoEvents(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(c.Path(), "cgroup.events"), "not cgroup.events\n")
	if _, err := c.Populated(); err == nil {
		t.Fatal("Populated parsed the file written over cgroup.events: the test cannot tell a read")
	}
	if err := c.Remove(t.Context()); err != nil {
		t.Fatalf("Remove: %v", err)
	}
	if exists(c.Path()) {
		t.Fatal("empty cell not removed")
	}
}

func TestCellKill(t *testing.T) {
	fs := &fakeFS{}
	tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(c.Path(), "cgroup.kill")); got != "1" {
		t.Errorf("cgroup.kill = %q", got)
	}
	fs.omit = []string{"cgroup.kill"}
	c2, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Remove(t.Context())
	if err := c2.Kill(); !errors.Is(err, ErrUnsupported) {
		t.Errorf("Kill without cgroup.kill = %v, want ErrUnsupported", err)
	}
}

func TestWaitEmpty(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	if err := c.WaitEmpty(t.Context()); err != nil {
		t.Fatalf("WaitEmpty on an empty cell: %v", err)
	}
	write(t, filepath.Join(c.Path(), "cgroup.events"), "populated 1\nfrozen 0\n")
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if err := c.WaitEmpty(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("WaitEmpty with a cancelled context = %v", err)
	}
	killer(t, c.Path())
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	if err := c.WaitEmpty(t.Context()); err != nil {
		t.Fatalf("WaitEmpty after kill: %v", err)
	}
}

func TestUsage(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids", "io"), nil)
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	p := c.Path()
	write(t, p+"/cpu.stat", "usage_usec 100\nuser_usec 60\nsystem_usec 40\nnr_periods 9\nnr_throttled 2\nthrottled_usec 7\n")
	write(t, p+"/memory.peak", "33554432\n")
	write(t, p+"/memory.events", "low 0\nhigh 0\nmax 18\noom 1\noom_kill 2\noom_group_kill 1\n")
	write(t, p+"/pids.peak", "5\n")
	write(t, p+"/pids.events", "max 3\n")
	write(t, p+"/io.stat", "8:0 rbytes=10 wbytes=20 rios=1 wios=1 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n")
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	want := Usage{CPUUsageUsec: 100, CPUUserUsec: 60, CPUSystemUsec: 40, NrThrottled: 2, ThrottledUsec: 7,
		MemoryPeak: 33554432, MemoryMax: 18, OOM: 1, OOMKill: 2, OOMGroupKill: 1, PidsPeak: 5, PidsMax: 3,
		IOReadBytes: 11, IOWriteBytes: 22}
	if fmt.Sprint(u) != fmt.Sprint(want) || !u.OOMKilled() {
		t.Errorf("Usage\n got %+v\nwant %+v", u, want)
	}
	write(t, p+"/memory.peak", "garbage\n")
	if _, err := c.Usage(); err == nil {
		t.Error("an unparsable memory.peak gave no error")
	}
}

func TestUsageMissing(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t), func(o *Options) { o.Unenforced = []string{"memory", "cpu", "pids"} })
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	write(t, c.Path()+"/cpu.stat", "usage_usec 5\nuser_usec 3\nsystem_usec 2\n")
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.CPUUsageUsec != 5 {
		t.Errorf("CPUUsageUsec = %d", u.CPUUsageUsec)
	}
	want := []string{"cpu.stat:nr_throttled", "cpu.stat:throttled_usec", "memory.peak", "memory.events", "pids.peak", "pids.events", "io.stat"}
	if !slices.Equal(u.Missing, want) {
		t.Errorf("Missing = %v, want %v", u.Missing, want)
	}
	if got := c.Unenforced(); !slices.Equal(got, []string{"cpu", "memory", "pids"}) {
		t.Errorf("Unenforced = %v", got)
	}
}

// openFDs counts this process's open fds.
func openFDs(t testing.TB) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatalf("list /proc/self/fd: %v", err)
	}
	return len(ents)
}

func TestCellHoldsFilesUntilRemove(t *testing.T) {
	for _, tc := range []struct {
		name  string
		ctrls []string
		mod   func(*Options)
		want  int // fds held by one cell
	}{
		// memory.current, the last of cellFDs, only once recycled.
		{"all controllers", []string{"memory", "cpu", "pids", "io"}, nil, cellFDs - 1},
		// dir, cgroup.events, cgroup.kill, cpu.stat: the absent files
		// are not opened.
		{"no controllers", nil, func(o *Options) { o.Unenforced = []string{"memory", "cpu", "pids"} }, 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, tc.ctrls...), tc.mod)
			before := openFDs(t)
			c, err := tr.NewCell(testProfile(t, ""))
			if err != nil {
				t.Fatal(err)
			}
			if got := openFDs(t) - before; got != tc.want {
				t.Errorf("cell holds %d fds, want %d", got, tc.want)
			}
			if err := c.Remove(t.Context()); err != nil {
				t.Fatal(err)
			}
			if got := openFDs(t) - before; got != 0 {
				t.Errorf("%d fds left open after Remove", got)
			}
		})
	}
}

func TestNewCellClosesFilesOnFailure(t *testing.T) {
	fs := &fakeFS{}
	tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids", "io"), nil)
	// cgroup.events missing fails the cell after some files were opened.
	fs.omit = []string{"cgroup.events"}
	before := openFDs(t)
	if _, err := tr.NewCell(testProfile(t, "")); err == nil {
		t.Fatal("NewCell without cgroup.events succeeded")
	}
	if got := openFDs(t) - before; got != 0 {
		t.Errorf("%d fds left open after a failed NewCell", got)
	}
}

func TestUsageSkipsFilesAbsentAtStartup(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t), func(o *Options) { o.Unenforced = []string{"memory", "cpu", "pids"} })
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	// Files that appear after start-up are still not read: the Tree
	// learned once that this kernel has none.
	write(t, c.Path()+"/memory.peak", "4096\n")
	write(t, c.Path()+"/pids.peak", "3\n")
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.MemoryPeak != 0 || u.PidsPeak != 0 {
		t.Errorf("read a file absent at start-up: MemoryPeak %d, PidsPeak %d", u.MemoryPeak, u.PidsPeak)
	}
	if !slices.Contains(u.Missing, "memory.peak") || !slices.Contains(u.Missing, "pids.peak") {
		t.Errorf("Missing = %v, want memory.peak and pids.peak listed", u.Missing)
	}
}

func TestCellReadsHeldFilesAgain(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids", "io"), nil)
	c, err := tr.NewCell(testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	for i, want := range []uint64{7, 123456} {
		write(t, c.Path()+"/memory.peak", strconv.FormatUint(want, 10)+"\n")
		u, err := c.Usage()
		if err != nil {
			t.Fatal(err)
		}
		if u.MemoryPeak != want {
			t.Errorf("read %d: MemoryPeak = %d, want %d", i, u.MemoryPeak, want)
		}
	}
	// A content longer than the first read buffer is read whole.
	var long strings.Builder
	for i := range 100 {
		fmt.Fprintf(&long, "8:%d rbytes=1 wbytes=2 rios=1 wios=1 dbytes=0 dios=0\n", i)
	}
	write(t, c.Path()+"/io.stat", long.String())
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.IOReadBytes != 100 || u.IOWriteBytes != 200 {
		t.Errorf("long io.stat: read %d, write %d bytes, want 100, 200", u.IOReadBytes, u.IOWriteBytes)
	}
}

func TestTenant(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	g, err := tr.Tenant("acme", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 30)}, Pids: &specs.LinuxPids{Limit: i64(100)}})
	if err != nil {
		t.Fatal(err)
	}
	if g.Name() != "acme" || g.Path() != filepath.Join(tr.CellsPath(), "acme") {
		t.Errorf("tenant %q at %s", g.Name(), g.Path())
	}
	if got := read(t, g.Path()+"/memory.max"); got != "1073741824" {
		t.Errorf("memory.max = %q", got)
	}
	if got := fakeControllers(read(t, g.Path()+"/cgroup.subtree_control")); !slices.Equal(got, []string{"memory", "cpu", "pids"}) {
		t.Errorf("tenant subtree_control = %v", got)
	}
	if exists(g.Path()+"/memory.oom.group") && read(t, g.Path()+"/memory.oom.group") == "1" {
		t.Error("a tenant got the cell default memory.oom.group=1")
	}
	if _, err := tr.Tenant("acme", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(50)}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, g.Path()+"/pids.max"); got != "50" {
		t.Errorf("updated pids.max = %q", got)
	}
	if got := read(t, g.Path()+"/memory.max"); got != "max" {
		t.Errorf("memory.max dropped from the budget = %q, want max", got)
	}
	if _, err := tr.Tenant("../x", nil); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad tenant name: %v", err)
	}
	if _, err := tr.Tenant("acme", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(-3)}}); !errors.Is(err, ErrInvalidLimit) {
		t.Errorf("bad tenant limit: %v", err)
	}

	c, err := tr.NewCell(testProfile(t, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	if err := tr.RemoveTenant("acme"); !errors.Is(err, ErrBusy) {
		t.Errorf("RemoveTenant with a cell = %v, want ErrBusy", err)
	}
	c.Remove(t.Context())

	write(t, g.Path()+"/cpu.stat", "usage_usec 900\nuser_usec 600\nsystem_usec 300\nnr_periods 1\nnr_throttled 4\nthrottled_usec 8\n")
	write(t, g.Path()+"/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 2\noom_group_kill 1\n")
	write(t, g.Path()+"/memory.current", "4096\n")
	s, err := g.Stats()
	if err != nil {
		t.Fatal(err)
	}
	want := TenantStats{CPUUsageUsec: 900, CPUUserUsec: 600, CPUSystemUsec: 300, NrThrottled: 4, ThrottledUsec: 8, MemoryCurrent: 4096, MemoryMax: 3, OOM: 1, OOMKill: 2, OOMGroupKill: 1}
	if fmt.Sprint(s) != fmt.Sprint(want) {
		t.Errorf("Stats\n got %+v\nwant %+v", s, want)
	}
	os.Remove(g.Path() + "/memory.current")
	if s, _ := g.Stats(); !slices.Equal(s.Missing, []string{"memory.current"}) {
		t.Errorf("Missing = %v", s.Missing)
	}

	if err := tr.RemoveTenant("acme"); err != nil {
		t.Fatalf("RemoveTenant: %v", err)
	}
	if exists(g.Path()) {
		t.Error("tenant not removed")
	}
	// Its totals are gone with it, not zeros.
	if s, err := g.Stats(); !errors.Is(err, unix.ENOENT) {
		t.Errorf("Stats of the removed group = %+v, %v; want an error wrapping ENOENT", s, err)
	}
}

func TestCloseRemovesHandedOutCells(t *testing.T) {
	fs := &fakeFS{}
	root := fakeRoot(t, "memory", "cpu", "pids")
	tr, err := openFake(t, fs, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.NewCell(testProfile(t, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, c.Path()+"/cgroup.events", "populated 1\nfrozen 0\n")
	killer(t, c.Path())
	if err := tr.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if exists(filepath.Join(root, "cellgate")) {
		t.Error("Close left the base")
	}
	if err := c.Remove(t.Context()); err != nil {
		t.Errorf("Remove after Close: %v", err)
	}
	if _, err := tr.NewCell(testProfile(t, "acme")); !errors.Is(err, ErrClosed) {
		t.Errorf("NewCell after Close = %v", err)
	}
}

func TestOpenOwnGroupIsRealRoot(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	tr, err := Open(t.Context(), Options{ProcRoot: fakeProc(t, root, "/"), ProbeSpawn: func(int) error { return nil }, ops: &fakeFS{}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer tr.Close()
	if f := tr.Features(); f.Base != root || f.Supervisor != "" {
		t.Errorf("Base %q Supervisor %q: the root group needs no supervisor", f.Base, f.Supervisor)
	}
	if exists(filepath.Join(root, "supervisor")) {
		t.Error("created supervisor/ in the root group")
	}
}

func TestOpenExplicitBaseIsOwnGroup(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	own := fakeOwnGroup(t, fs, root, "svc", os.Getpid())
	tr, err := Open(t.Context(), Options{ProcRoot: fakeProc(t, root, "/svc"), Base: own + "/", ProbeSpawn: func(int) error { return nil }, ops: fs})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	defer tr.Close()
	if f := tr.Features(); f.Supervisor != filepath.Join(own, "supervisor") {
		t.Errorf("naming the own group as the base did not move the daemon: %+v", f)
	}
}

func TestOpenReadOnlyCgroupfs(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{mkdirErr: func(string) error { return unix.EROFS }}
	_, err := openFake(t, fs, root, nil)
	if !errors.Is(err, ErrNotDelegated) || !errors.Is(err, unix.EROFS) {
		t.Fatalf("err = %v, want ErrNotDelegated wrapping EROFS", err)
	}
	if !strings.Contains(err.Error(), "cellgate doctor") {
		t.Errorf("error has no remedy: %v", err)
	}
}

func TestTreeStats(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	write(t, filepath.Join(tr.CellsPath(), "cgroup.stat"), "nr_descendants 7\nnr_dying_descendants 3\n")
	if s, err := tr.Stats(); err != nil || s != (TreeStats{NrDescendants: 7, NrDyingDescendants: 3}) {
		t.Errorf("Stats = %+v, %v", s, err)
	}
	write(t, filepath.Join(tr.CellsPath(), "cgroup.stat"), "nr_descendants 7\n")
	if _, err := tr.Stats(); err == nil {
		t.Error("Stats without nr_dying_descendants gave no error")
	}
}

func TestSetBudget(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), nil)
	if err := tr.SetBudget(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(2 << 30)}, Pids: &specs.LinuxPids{Limit: i64(1000)}}); err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(tr.CellsPath(), "memory.max")); got != "2147483648" {
		t.Errorf("cells/memory.max = %q", got)
	}
	if err := tr.SetBudget(nil); err != nil {
		t.Fatal(err)
	}
	for file, want := range map[string]string{"memory.max": "max", "pids.max": "max"} {
		if got := read(t, filepath.Join(tr.CellsPath(), file)); got != want {
			t.Errorf("cleared cells/%s = %q, want %q", file, got, want)
		}
	}
	if err := tr.SetBudget(&specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0"}}); !errors.Is(err, ErrControllerMissing) {
		t.Errorf("SetBudget needing cpuset = %v", err)
	}
}
