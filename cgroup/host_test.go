package cgroup

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"
)

// These tests use the real cgroup2 hierarchy (on the development hosts,
// /sys/fs/cgroup/unified: no controllers, so every limit is unenforced),
// in a private base named for the test and removed at the end. They need
// root; they skip otherwise, and fail instead under
// CELLGATE_REQUIRE_KERNEL_TESTS=1. They never move the test process.

var realSeq atomic.Int64

// realBase returns a fresh private base path under the cgroup2 mount (not
// created: Open creates it), removed with everything under it at the end.
func realBase(t testing.TB) string {
	t.Helper()
	skip := t.Skipf
	if os.Getenv("CELLGATE_REQUIRE_KERNEL_TESTS") == "1" {
		skip = t.Fatalf
	}
	if os.Geteuid() != 0 {
		skip("needs root to create cgroups (euid %d)", os.Geteuid())
	}
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		skip("read mountinfo: %v", err)
	}
	mi, err := parseMountinfo(b)
	if err != nil {
		skip("no cgroup2: %v", err)
	}
	base := filepath.Join(mi.Point, fmt.Sprintf("cellgate-test-%d-%d", os.Getpid(), realSeq.Add(1)))
	t.Cleanup(func() { removeRealTree(t, base) })
	return base
}

// removeRealTree kills and removes whatever a test left under base.
func removeRealTree(t testing.TB, base string) {
	t.Helper()
	var dirs []string
	filepath.WalkDir(base, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for i := len(dirs) - 1; i >= 0; i-- {
		os.WriteFile(filepath.Join(dirs[i], "cgroup.kill"), []byte("1"), 0)
		if err := rmdirRetry(t.Context(), kernelOps{}, dirs[i]); err != nil {
			t.Errorf("cleanup: %v", err)
		}
	}
}

func openReal(t testing.TB, base string) *Tree {
	t.Helper()
	tr, err := Open(t.Context(), Options{Base: base, Unenforced: []string{"memory", "cpu", "pids"}})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	return tr
}

// startIn starts argv inside the cell with clone3 CLONE_INTO_CGROUP.
func startIn(t testing.TB, c *Cell, argv ...string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: c.FD()}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %v in %s: %v", argv, c.Path(), err)
	}
	t.Cleanup(func() {
		if cmd.ProcessState == nil {
			cmd.Process.Kill()
			cmd.Wait()
		}
	})
	return cmd
}

func TestRealCellLifecycle(t *testing.T) {
	base := realBase(t)
	tr := openReal(t, base)
	f := tr.Features()
	if !f.Kill || !f.CloneIntoCgroup {
		t.Fatalf("Features = %+v", f)
	}
	p := NewPool(tr, PoolOptions{MaxIdle: 2})
	prof := testProfile(t, "acme")
	c, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if pop, err := c.Populated(); err != nil || pop {
		t.Fatalf("fresh cell Populated = %v, %v", pop, err)
	}
	// A worker that leaves a grandchild behind: cgroup.kill must take both.
	cmd := startIn(t, c, "/bin/sh", "-c", "sleep 1000 & exec sleep 1000")
	procs, err := os.ReadFile(filepath.Join(c.Path(), "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(strings.Fields(string(procs)), fmt.Sprint(cmd.Process.Pid)) {
		t.Fatalf("worker %d not in its cell: cgroup.procs %q", cmd.Process.Pid, procs)
	}
	if pop, err := c.Populated(); err != nil || !pop {
		t.Fatalf("Populated = %v, %v", pop, err)
	}
	if err := c.Kill(); err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.Sys().(syscall.WaitStatus).Signal() != syscall.SIGKILL {
		t.Errorf("worker ended with %v, want SIGKILL", err)
	}
	if err := c.WaitEmpty(t.Context()); err != nil {
		t.Fatalf("WaitEmpty: %v", err)
	}
	u, err := c.Usage()
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	for _, m := range u.Missing {
		if strings.HasPrefix(m, "cpu.stat:usage") || m == "cpu.stat" {
			t.Errorf("cpu.stat usage missing: %v", u.Missing)
		}
	}
	var want []string
	for _, ctrl := range prof.Controllers() {
		if slices.Contains(f.Unenforced, ctrl) {
			want = append(want, ctrl)
		}
	}
	if !slices.Equal(c.Unenforced(), want) {
		t.Errorf("cell Unenforced = %v, want %v (tree: %v)", c.Unenforced(), want, f.Unenforced)
	}
	if s, err := tr.Stats(); err != nil || s.NrDescendants < 2 { // the tenant and this cell
		t.Errorf("tree Stats = %+v, %v", s, err)
	}
	p.Release(c)
	if err := p.Close(); err != nil {
		t.Fatalf("pool Close: %v", err)
	}
	if exists(c.Path()) {
		t.Error("released cell still exists after pool Close")
	}
	if err := tr.Close(); err != nil {
		t.Fatalf("tree Close: %v", err)
	}
	if exists(base) {
		t.Errorf("Close left %s", base)
	}
}

func TestRealSweepAfterCrash(t *testing.T) {
	base := realBase(t)
	tr := openReal(t, base)
	c, err := tr.NewCell(testProfile(t, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	cmd := startIn(t, c, "/bin/sleep", "1000")
	// "Crash": the tree is abandoned with a live worker in a cell (the
	// kernel drops a dead process's lock with its descriptors); a new
	// Open on the same base must kill and remove it.
	unix.Close(tr.lockFD)
	tr.lockFD = -1
	tr2 := openReal(t, base)
	defer tr2.Close()
	if err := cmd.Wait(); err == nil {
		t.Error("the leftover worker was not killed by the sweep")
	}
	if exists(c.Path()) || exists(filepath.Dir(c.Path())) {
		t.Errorf("sweep left %s", c.Path())
	}
	if err := c.Remove(t.Context()); err != nil {
		t.Errorf("Remove of a swept cell: %v", err)
	}
}

// Benchmarks: the per-request cgroup cost without a worker. CellRaw is
// NewCell + Remove on the calling goroutine; CellPool is Get + Release in a
// tight loop (throughput: refill and removal compete with the loop, so
// most Gets create); CellPoolGet is the hot path alone, Get from a warm
// pool + Release to the background removers, with the refill waited for
// outside the timer. Run with
//
//	go test -run '^$' -bench Cell ./cgroup
func BenchmarkCellRaw(b *testing.B) {
	tr := openReal(b, realBase(b))
	defer tr.Close()
	prof := testProfile(b, "bench")
	for b.Loop() {
		c, err := tr.NewCell(prof)
		if err != nil {
			b.Fatal(err)
		}
		if err := c.Remove(b.Context()); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkCellPool(b *testing.B) {
	tr := openReal(b, realBase(b))
	defer tr.Close()
	p := NewPool(tr, PoolOptions{MaxIdle: 8})
	defer p.Close()
	prof := testProfile(b, "bench")
	if err := p.Warm(prof); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		c, err := p.Get(b.Context(), prof)
		if err != nil {
			b.Fatal(err)
		}
		p.Release(c)
	}
	s := p.Stats()
	b.ReportMetric(float64(s.Hits)/float64(s.Hits+s.Misses), "hit-ratio")
}

func BenchmarkCellPoolGet(b *testing.B) {
	tr := openReal(b, realBase(b))
	defer tr.Close()
	p := NewPool(tr, PoolOptions{MaxIdle: 1})
	defer p.Close()
	prof := testProfile(b, "bench")
	if err := p.Warm(prof); err != nil {
		b.Fatal(err)
	}
	for b.Loop() {
		b.StopTimer()
		for p.Idle(prof) == 0 {
			runtime.Gosched()
		}
		b.StartTimer()
		c, err := p.Get(b.Context(), prof)
		if err != nil {
			b.Fatal(err)
		}
		p.Release(c)
	}
	s := p.Stats()
	b.ReportMetric(float64(s.Hits)/float64(s.Hits+s.Misses), "hit-ratio")
}

// TestHostKilledCellNotReused: a group that cgroup.kill was written to
// SIGKILLs every process later cloned into it with CLONE_INTO_CGROUP, at
// birth, on the kernels the kill count went to (6.1.172 and 6.18 among them; the
// count is taken from the parent's group, then compared with the
// group's): a reused cell that was killed during its request (its
// deadline, its client gone) must not be handed on. Before, the next
// request of a route with reused groups was killed at its start.
func TestHostKilledCellNotReused(t *testing.T) {
	base := realBase(t)
	tr := openReal(t, base)
	defer tr.Close()
	p := NewPool(tr, PoolOptions{MaxIdle: 2})
	defer p.Close()
	prof, err := NewProfile("acme", nil)
	if err != nil {
		t.Fatal(err)
	}
	prof = prof.Reused()
	run := func(c *Cell) error {
		cmd := exec.Command("/bin/true")
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: c.FD()}
		return cmd.Run()
	}
	c, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatal(err)
	}
	if err := run(c); err != nil {
		t.Fatalf("a request in a fresh cell: %v", err)
	}
	if err := c.Kill(); err != nil { // its deadline, as the Runner's killer
		t.Fatal(err)
	}
	p.Recycle(c)
	for range 3 {
		next, err := p.Get(t.Context(), prof)
		if err != nil {
			t.Fatal(err)
		}
		if err := run(next); err != nil {
			t.Errorf("a request in %s (the killed cell: %v): %v", next.Path(), next == c, err)
		}
		p.Recycle(next)
	}
}
