package integration

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Package cgroup on a kernel with the memory, cpu and pids controllers:
// limits written and read back, the kernel's refusals (pids.max,
// cgroup.max.descendants) surfacing as errors, an OOM kill read back as
// Usage.

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }

// openTree opens a cgroup.Tree on a private base under requireKernel's
// group, closed at the end of the test.
func openTree(t *testing.T, o cgroup.Options) *cgroup.Tree {
	t.Helper()
	o.Base = filepath.Join(requireKernel(t), "cellgate")
	trackBase(o.Base)
	tr, err := cgroup.Open(t.Context(), o)
	if err != nil {
		t.Fatalf("cgroup.Open: %v", err)
	}
	t.Cleanup(func() {
		if err := tr.Close(); err != nil {
			t.Errorf("Tree.Close: %v", err)
		}
		if _, err := os.Stat(o.Base); err == nil {
			t.Errorf("Tree.Close left %s", o.Base)
		}
	})
	return tr
}

func newPool(t *testing.T, tr *cgroup.Tree, o cgroup.PoolOptions) *cgroup.Pool {
	t.Helper()
	p := cgroup.NewPool(tr, o)
	t.Cleanup(func() {
		if err := p.Close(); err != nil {
			t.Errorf("Pool.Close: %v", err)
		}
	})
	return p
}

func readTrim(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return strings.TrimSpace(string(b))
}

// spawnIn starts argv inside the cell with clone3 CLONE_INTO_CGROUP.
func spawnIn(c *cgroup.Cell, argv ...string) (*exec.Cmd, error) {
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: c.FD()}
	return cmd, cmd.Start()
}

func TestCgroupFeaturesAndLimits(t *testing.T) {
	tr := openTree(t, cgroup.Options{})
	f := tr.Features()
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !contains(f.Enabled, c) {
			t.Errorf("controller %s not enabled: %+v", c, f)
		}
	}
	if !f.Kill || !f.CloneIntoCgroup || !f.MemoryPeak || !f.PidsPeak || !f.MemoryOOMGroup || len(f.Unenforced) != 0 {
		t.Errorf("Features = %+v", f)
	}

	if err := tr.SetBudget(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(512 << 20)}}); err != nil {
		t.Fatalf("SetBudget: %v", err)
	}
	if got := readTrim(t, filepath.Join(tr.CellsPath(), "memory.max")); got != "536870912" {
		t.Errorf("cells/memory.max = %q", got)
	}
	g, err := tr.Tenant("acme", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(256 << 20)}, Pids: &specs.LinuxPids{Limit: i64(64)}})
	if err != nil {
		t.Fatalf("Tenant: %v", err)
	}
	for file, want := range map[string]string{"memory.max": "268435456", "pids.max": "64", "memory.oom.group": "0"} {
		if got := readTrim(t, filepath.Join(g.Path(), file)); got != want {
			t.Errorf("tenant %s = %q, want %q", file, got, want)
		}
	}

	prof, err := cgroup.NewProfile("acme", &specs.LinuxResources{
		Memory:  &specs.LinuxMemory{Limit: i64(32 << 20)},
		CPU:     &specs.LinuxCPU{Quota: i64(50000), Burst: u64(10000)},
		Pids:    &specs.LinuxPids{Limit: i64(16)},
		Unified: map[string]string{"memory.high": "30000000"},
	})
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(t, tr, cgroup.PoolOptions{MaxIdle: 2})
	c, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	defer p.Release(c)
	if len(c.Unenforced()) != 0 {
		t.Errorf("Unenforced = %v", c.Unenforced())
	}
	for file, want := range map[string]string{
		"memory.max": "33554432", "memory.swap.max": "0", "memory.oom.group": "1", "memory.high": "29999104",
		"cpu.max": "50000 100000", "cpu.max.burst": "10000", "pids.max": "16",
	} {
		if got := readTrim(t, filepath.Join(c.Path(), file)); got != want {
			t.Errorf("cell %s = %q, want %q", file, got, want)
		}
	}

	// A short worker: its usage lands in the cell and in the tenant.
	cmd, err := spawnIn(c, "/bin/sh", "-c", "i=0; while [ $i -lt 20000 ]; do i=$((i+1)); done")
	if err != nil {
		t.Fatalf("spawn: %v", err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("worker: %v", err)
	}
	if err := c.WaitEmpty(t.Context()); err != nil {
		t.Fatal(err)
	}
	u, err := c.Usage()
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	if u.CPUUsageUsec == 0 || u.MemoryPeak == 0 || u.PidsPeak == 0 || u.OOMKilled() {
		t.Errorf("Usage = %+v", u)
	}
	for _, m := range u.Missing {
		if m != "io.stat" { // io is not delegated by requireKernel
			t.Errorf("Usage.Missing has %s", m)
		}
	}
	s, err := g.Stats()
	if err != nil {
		t.Fatalf("tenant Stats: %v", err)
	}
	if s.CPUUsageUsec < u.CPUUsageUsec || len(s.Missing) != 0 {
		t.Errorf("tenant Stats = %+v, cell used %d usec", s, u.CPUUsageUsec)
	}
}

// TestCgroupBudgetUpdateOrder: a tenant's budget updated to a lower CPU
// quota and burst, and from idle to a weight, is written in an order the
// kernel takes (it refuses a quota below the burst a group holds and a
// weight in an idle group), and back again.
func TestCgroupBudgetUpdateOrder(t *testing.T) {
	tr := openTree(t, cgroup.Options{})
	budgets := []*specs.LinuxResources{
		{CPU: &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000), Burst: u64(40000), Idle: i64(1)}},
		{CPU: &specs.LinuxCPU{Quota: i64(20000), Period: u64(100000), Burst: u64(10000), Idle: i64(0), Shares: u64(2048)}},
		{CPU: &specs.LinuxCPU{Quota: i64(60000), Period: u64(100000), Burst: u64(50000), Idle: i64(1)}},
	}
	wants := []map[string]string{
		{"cpu.max": "50000 100000", "cpu.max.burst": "40000", "cpu.idle": "1"},
		{"cpu.max": "20000 100000", "cpu.max.burst": "10000", "cpu.idle": "0", "cpu.weight": "174"},
		{"cpu.max": "60000 100000", "cpu.max.burst": "50000", "cpu.idle": "1"},
	}
	for i, r := range budgets {
		gs, err := tr.SetBudgets(nil, []cgroup.Budget{{Tenant: "acme", Resources: r}})
		if err != nil {
			t.Fatalf("budget %d: SetBudgets: %v", i, err)
		}
		for file, want := range wants[i] {
			if got := readTrim(t, filepath.Join(gs[0].Path(), file)); got != want {
				t.Errorf("budget %d: %s = %q, want %q", i, file, got, want)
			}
		}
	}
}

func TestCgroupPidsMaxZeroRefusesSpawn(t *testing.T) {
	tr := openTree(t, cgroup.Options{})
	prof, err := cgroup.NewProfile("", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(0)}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.NewCell(prof)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	if got := readTrim(t, filepath.Join(c.Path(), "pids.max")); got != "0" {
		t.Fatalf("pids.max = %q", got)
	}
	cmd, err := spawnIn(c, "/bin/true")
	if err == nil {
		cmd.Wait()
		t.Fatal("spawn into a cell with pids.max=0 succeeded")
	}
	if !errors.Is(err, syscall.EAGAIN) {
		t.Errorf("spawn error = %v, want EAGAIN", err)
	}
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if u.PidsMax == 0 {
		t.Errorf("pids.events max = 0 after a refused fork: %+v", u)
	}
}

func TestCgroupMaxDescendantsSurfacesFromGet(t *testing.T) {
	// cells/ may hold 3 groups: the tenant and two cells.
	tr := openTree(t, cgroup.Options{MaxCells: 3})
	prof, err := cgroup.NewProfile("acme", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(8)}})
	if err != nil {
		t.Fatal(err)
	}
	p := newPool(t, tr, cgroup.PoolOptions{MaxIdle: 1, MinBackoff: 5 * time.Millisecond, MaxBackoff: 20 * time.Millisecond})
	var held []*cgroup.Cell
	var refused error
	for range 3 {
		c, err := p.Get(t.Context(), prof)
		if err != nil {
			refused = err
			break
		}
		held = append(held, c)
	}
	if !errors.Is(refused, cgroup.ErrTooManyCells) || !errors.Is(refused, syscall.EAGAIN) {
		t.Fatalf("after %d cells, Get = %v, want ErrTooManyCells wrapping EAGAIN", len(held), refused)
	}
	for _, c := range held {
		p.Release(c)
	}
	// Removed (even dying) groups do not count: Get works again.
	for try := 0; ; try++ {
		c, err := p.Get(t.Context(), prof)
		if err == nil {
			p.Release(c)
			break
		}
		if !errors.Is(err, cgroup.ErrTooManyCells) || try == 1000 {
			t.Fatalf("Get after releasing: %v", err)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func TestCgroupOOMKillReadBack(t *testing.T) {
	tr := openTree(t, cgroup.Options{})
	prof, err := cgroup.NewProfile("", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	c, err := tr.NewCell(prof)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Remove(t.Context())
	// tail -c buffers its last 64 MiB of a pipe: twice the cell's limit.
	cmd, err := spawnIn(c, "/bin/sh", "-c", "head -c 67108864 /dev/zero | tail -c 67108864 >/dev/null")
	if err != nil {
		t.Fatal(err)
	}
	werr := cmd.Wait()
	if err := c.WaitEmpty(t.Context()); err != nil {
		t.Fatal(err)
	}
	u, err := c.Usage()
	if err != nil {
		t.Fatal(err)
	}
	if !u.OOMKilled() || u.OOMGroupKill == 0 || u.MemoryPeak < 30<<20 {
		t.Errorf("worker ended with %v; Usage = %+v, want a group OOM kill near 32 MiB", werr, u)
	}
}
