package cgroup

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// eventually polls cond until it holds; the bound is a test deadline, not
// a timing assertion.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(20 * time.Second); !cond(); {
		if time.Now().After(deadline) {
			t.Fatalf("never: %s", what)
		}
		time.Sleep(time.Millisecond)
	}
}

// subdirs counts the groups in dir.
func subdirs(t testing.TB, dir string) int {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		t.Fatal(err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() {
			n++
		}
	}
	return n
}

func newFakePool(t testing.TB, fs *fakeFS, o PoolOptions) (*Tree, *Pool) {
	t.Helper()
	tr := mustOpenFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
	p := NewPool(tr, o)
	t.Cleanup(func() { p.Close() })
	return tr, p
}

func TestPoolGetRelease(t *testing.T) {
	tr, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: 2})
	prof := testProfile(t, "acme")
	dir := filepath.Join(tr.CellsPath(), "acme")

	c, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if got := read(t, filepath.Join(c.Path(), "memory.max")); got != "33554432" {
		t.Errorf("memory.max = %q", got)
	}
	eventually(t, "the pool refills to MaxIdle beside the handed-out cell", func() bool { return subdirs(t, dir) == 3 })
	c2, err := p.Get(t.Context(), prof)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Name() == c.Name() {
		t.Fatal("the same cell was handed out twice")
	}
	p.Release(c)
	p.Release(c2)
	eventually(t, "released cells are removed and the idle ones refilled", func() bool {
		return !exists(c.Path()) && !exists(c2.Path()) && subdirs(t, dir) == 2
	})
	if err := p.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	// Close waited for the removers: the two released and the idle cells.
	if s := p.Stats(); s.Hits+s.Misses != 2 || s.Misses < 1 || s.Removed < 2 || s.RemoveErrors != 0 {
		t.Errorf("Stats = %+v", s)
	}
	if n := subdirs(t, dir); n != 0 {
		t.Errorf("Close left %d idle cells", n)
	}
	if _, err := p.Get(t.Context(), prof); !errors.Is(err, ErrClosed) {
		t.Errorf("Get after Close = %v, want ErrClosed", err)
	}
}

func TestPoolNeverReusesConcurrently(t *testing.T) {
	_, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: 3})
	profs := []*Profile{testProfile(t, "a"), testProfile(t, "b")}
	var mu sync.Mutex
	seen := map[string]bool{}
	var wg sync.WaitGroup
	for g := range 8 {
		wg.Go(func() {
			for range 10 {
				c, err := p.Get(t.Context(), profs[g%2])
				if err != nil {
					t.Error(err)
					return
				}
				mu.Lock()
				if seen[c.Path()] {
					t.Errorf("cell %s handed out twice", c.Path())
				}
				seen[c.Path()] = true
				mu.Unlock()
				p.Release(c)
			}
		})
	}
	wg.Wait()
	if len(seen) != 80 {
		t.Errorf("%d distinct cells for 80 Gets", len(seen))
	}
}

func TestPoolCreateFailureSurfacesAndBacksOff(t *testing.T) {
	fs := &fakeFS{}
	tr, p := newFakePool(t, fs, PoolOptions{MaxIdle: 4, MinBackoff: time.Hour, MaxBackoff: time.Hour})
	if _, err := tr.Tenant("acme", nil); err != nil {
		t.Fatal(err)
	}
	var attempts atomic.Int64
	fs.mkdirErr = func(path string) error {
		if filepath.Dir(path) == filepath.Join(tr.CellsPath(), "acme") {
			attempts.Add(1)
			return unix.EAGAIN
		}
		return nil
	}
	_, err := p.Get(t.Context(), testProfile(t, "acme"))
	if !errors.Is(err, ErrTooManyCells) || !errors.Is(err, unix.EAGAIN) {
		t.Fatalf("Get = %v, want ErrTooManyCells wrapping EAGAIN", err)
	}
	eventually(t, "the refiller tries once", func() bool { return attempts.Load() >= 2 })
	time.Sleep(20 * time.Millisecond)
	if n := attempts.Load(); n != 2 {
		t.Errorf("%d creation attempts: the refiller did not back off", n)
	}
	if s := p.Stats(); s.CreateErrors != 2 {
		t.Errorf("CreateErrors = %d", s.CreateErrors)
	}
}

func TestPoolReleaseInlineWhenQueueFull(t *testing.T) {
	fs := &fakeFS{}
	_, p := newFakePool(t, fs, PoolOptions{MaxIdle: 1, MaxRemovals: 1, Removers: 1})
	prof := testProfile(t, "")
	var cells []*Cell
	for range 3 {
		c, err := p.Get(t.Context(), prof)
		if err != nil {
			t.Fatal(err)
		}
		cells = append(cells, c)
	}
	entered, unblock := make(chan struct{}), make(chan struct{})
	fs.rmdirHook = func(path string) {
		if path == cells[0].Path() {
			close(entered)
			<-unblock
		}
	}
	p.Release(cells[0]) // taken by the one remover, which blocks in rmdir
	<-entered
	p.Release(cells[1]) // fills the queue
	p.Release(cells[2]) // queue full: removed inline
	if exists(cells[2].Path()) {
		t.Error("the inline Release did not remove its cell")
	}
	if s := p.Stats(); s.InlineRemovals != 1 {
		t.Errorf("InlineRemovals = %d", s.InlineRemovals)
	}
	close(unblock)
	eventually(t, "queued removals finish", func() bool { return !exists(cells[0].Path()) && !exists(cells[1].Path()) })
}

func TestPoolReleaseAfterClose(t *testing.T) {
	_, p := newFakePool(t, &fakeFS{}, PoolOptions{})
	c, err := p.Get(t.Context(), testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil {
		t.Fatal(err)
	}
	p.Release(c)
	if exists(c.Path()) {
		t.Error("Release after Close did not remove the cell")
	}
}

func TestPoolDrainTenant(t *testing.T) {
	tr, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: 3})
	prof := testProfile(t, "acme")
	if err := p.Warm(prof); err != nil {
		t.Fatal(err)
	}
	dir := filepath.Join(tr.CellsPath(), "acme")
	eventually(t, "Warm pre-creates cells", func() bool { return subdirs(t, dir) == 3 })
	if err := p.DrainTenant("acme"); err != nil {
		t.Fatal(err)
	}
	if n := subdirs(t, dir); n != 0 {
		t.Fatalf("DrainTenant left %d cells", n)
	}
	if err := tr.RemoveTenant("acme"); err != nil {
		t.Fatalf("RemoveTenant after drain: %v", err)
	}
}

func TestPoolGetErrors(t *testing.T) {
	tr, p := newFakePool(t, &fakeFS{}, PoolOptions{})
	prof, err := NewProfile("t", &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0"}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := p.Get(t.Context(), prof); !errors.Is(err, ErrControllerMissing) {
		t.Errorf("Get for a profile needing cpuset = %v", err)
	}
	if err := p.Warm(prof); !errors.Is(err, ErrControllerMissing) {
		t.Errorf("Warm = %v", err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	cancel()
	if _, err := p.Get(ctx, testProfile(t, "u")); !errors.Is(err, context.Canceled) {
		t.Errorf("Get with a cancelled context and no idle cell = %v", err)
	}
	if n := subdirs(t, filepath.Join(tr.CellsPath(), "t")); n != 0 {
		t.Errorf("%d cells for a refused profile", n)
	}
}

func TestPoolReleaseKillsPopulated(t *testing.T) {
	_, p := newFakePool(t, &fakeFS{}, PoolOptions{})
	c, err := p.Get(t.Context(), testProfile(t, ""))
	if err != nil {
		t.Fatal(err)
	}
	write(t, c.Path()+"/cgroup.events", "populated 1\nfrozen 0\n")
	killer(t, c.Path())
	p.Release(c)
	eventually(t, "a populated cell is killed and removed", func() bool { return !exists(c.Path()) })
	if !strings.Contains(c.Path(), "/cells/default/") {
		t.Errorf("cell path %s", c.Path())
	}
}

func TestPoolRetain(t *testing.T) {
	tr, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: 2})
	keep, old := testProfile(t, "acme"), testProfile(t, "beta")
	for _, prof := range []*Profile{keep, old} {
		if err := p.Warm(prof); err != nil {
			t.Fatal(err)
		}
	}
	a, b := filepath.Join(tr.CellsPath(), "acme"), filepath.Join(tr.CellsPath(), "beta")
	// Idle too: a cell's directory exists before the cell is idle.
	eventually(t, "both profiles warm", func() bool {
		return subdirs(t, a) == 2 && subdirs(t, b) == 2 && p.Idle(keep) == 2 && p.Idle(old) == 2
	})
	p.Retain([]*Profile{keep})
	if n := subdirs(t, b); n != 0 || p.Idle(old) != 0 {
		t.Errorf("a dropped profile kept %d cells", n)
	}
	if n := subdirs(t, a); n != 2 || p.Idle(keep) != 2 {
		t.Errorf("a kept profile has %d cells", n)
	}
	// A replaced route's cell still setting up gets its cell, but the
	// profile is not pooled again: nothing would take its idle cells.
	c, err := p.Get(t.Context(), old)
	if err != nil {
		t.Fatal(err)
	}
	p.mu.RLock()
	_, pooled := p.profiles[old.key]
	p.mu.RUnlock()
	if pooled {
		t.Errorf("a Get of a dropped profile pooled it again")
	}
	p.Release(c)
	eventually(t, "the dropped profile's cell removed at its release", func() bool { return subdirs(t, b) == 0 })
	// A policy that has the route again (Warm) pools it.
	if err := p.Warm(old); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the profile warm again", func() bool { return p.Idle(old) == 2 })
}

func TestPoolRefills(t *testing.T) {
	for _, tc := range []struct {
		name    string
		maxIdle int
		release bool // release the cell before waiting for the refill
	}{
		// MaxIdle 4: the Get leaves three idle cells; Release refills.
		{"after Release", 4, true},
		// MaxIdle 2: the Get leaves half; it refills at once.
		{"after half the idle cells", 2, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, p := newFakePool(t, &fakeFS{}, PoolOptions{MaxIdle: tc.maxIdle})
			prof := testProfile(t, "acme")
			if err := p.Warm(prof); err != nil {
				t.Fatal(err)
			}
			eventually(t, "warm", func() bool { return p.Idle(prof) == tc.maxIdle })
			c, err := p.Get(t.Context(), prof)
			if err != nil {
				t.Fatal(err)
			}
			if tc.release {
				p.Release(c)
			} else {
				defer p.Release(c)
			}
			eventually(t, "refilled to MaxIdle", func() bool { return p.Idle(prof) == tc.maxIdle })
			if s := p.Stats(); s.Misses != 0 {
				t.Errorf("Stats = %+v, want no miss", s)
			}
		})
	}
}

// TestPoolCloseCountsItsOwnFailures: a cell whose removal failed while
// the pool ran (logged then, left to the tree's Close) does not make the
// pool's Close fail: serve's exit status says what its stop left, and the
// tree's Close removes that cell. Before, Close counted every failure
// since the start.
func TestPoolCloseCountsItsOwnFailures(t *testing.T) {
	tr := mustOpenFake(t, &fakeFS{}, fakeRoot(t, "memory", "cpu", "pids"), func(o *Options) { o.SweepTimeout = 100 * time.Millisecond })
	p := NewPool(tr, PoolOptions{RemoveTimeout: 50 * time.Millisecond})
	t.Cleanup(func() { p.Close() })
	c, err := p.Get(t.Context(), testProfile(t, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(c.Path(), "cgroup.events"), "populated 1\nfrozen 0\n") // a process the kill does not end
	p.Release(c)
	eventually(t, "the removal fails", func() bool { return p.Stats().RemoveErrors == 1 })
	if err := p.Close(); err != nil {
		t.Errorf("Close after a removal failed before it: %v, want nil", err)
	}
}
