package cgroup

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"syscall"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// A route group holds the preloader's group (with its limit) and the
// route's cells; the preloader's uid owns exactly the cgroup.procs that
// clone3 CLONE_INTO_CGROUP needs: the route group's and each cell's.
func TestRouteGroup(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	tr, err := openFake(t, &fakeFS{}, root, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	owner := uint32(os.Getuid())
	if owner == 0 {
		owner = 4242 // as root, prove the chown happened
	}
	rg, err := tr.NewRouteGroup("acme", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(64 << 20)}}, owner)
	if err != nil {
		t.Fatal(err)
	}
	if got := read(t, filepath.Join(rg.pre.Path(), "memory.max")); got != "67108864" {
		t.Errorf("preload memory.max = %q", got)
	}
	// What the preloader's group holds, as the kernel lists it.
	if err := os.WriteFile(filepath.Join(rg.pre.Path(), "cgroup.procs"), []byte("4242\n77\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pids, err := rg.pre.Procs(); err != nil || !slices.Equal(pids, []int{4242, 77}) {
		t.Errorf("preload Procs = %v, %v; want [4242 77]", pids, err)
	}
	// Each instance of the preloader in a group of its own below preload,
	// removed with what is in it when the instance has ended.
	var insts []*Cell
	for range 2 {
		inst, err := rg.NewInstance()
		if err != nil {
			t.Fatal(err)
		}
		if filepath.Dir(inst.Path()) != rg.pre.Path() || inst.FD() < 0 {
			t.Fatalf("instance group %s (fd %d), want an open group below %s", inst.Path(), inst.FD(), rg.pre.Path())
		}
		insts = append(insts, inst)
	}
	if insts[0].Path() == insts[1].Path() {
		t.Fatalf("two instances share the group %s", insts[0].Path())
	}
	if err := insts[0].Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(insts[0].Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the ended instance's group %s is still there: %v", insts[0].Path(), err)
	}
	if _, err := os.Stat(insts[1].Path()); err != nil {
		t.Errorf("the other instance's group went with it: %v", err)
	}
	base, err := NewProfile("acme", &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(16 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	prof, err := rg.Profile(base)
	if err != nil {
		t.Fatal(err)
	}
	if prof.Key() == base.Key() {
		t.Error("a route group's profile shares its key with the tenant's")
	}
	c, err := tr.NewCell(prof)
	if err != nil {
		t.Fatal(err)
	}
	if filepath.Dir(c.Path()) != rg.Path() {
		t.Errorf("cell %s not in route group %s", c.Path(), rg.Path())
	}
	for path, want := range map[string]uint32{
		filepath.Join(rg.Path(), "cgroup.procs"):               owner,
		filepath.Join(c.Path(), "cgroup.procs"):                owner,
		filepath.Join(rg.pre.Path(), "cgroup.procs"):           uint32(os.Getuid()),
		filepath.Join(c.Path(), "memory.max"):                  uint32(os.Getuid()),
		filepath.Join(filepath.Dir(rg.Path()), "cgroup.procs"): uint32(os.Getuid()),
	} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Sys().(*syscall.Stat_t).Uid; got != want {
			t.Errorf("%s owned by %d, want %d", path, got, want)
		}
	}
	if _, err := rg.Profile(mustProfile(t, "other")); err == nil {
		t.Error("a profile of another tenant was accepted for the route group")
	}
	if err := c.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	if err := rg.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	if exists(rg.Path()) {
		t.Errorf("%s left after Remove", rg.Path())
	}
}

func mustProfile(t *testing.T, tenant string) *Profile {
	t.Helper()
	p, err := NewProfile(tenant, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestRouteGroupRemoveRaced: a group below the route group removed by
// another while Remove takes the subtree down (a preloader instance's end
// removing its group) is done with, and the route group still goes.
// Before, the group gone between its listing and its opening failed the
// walk with ENOENT, which Remove took for the route group being gone:
// the route group and its preload group stayed until shutdown.
func TestRouteGroupRemoveRaced(t *testing.T) {
	fs := &fakeFS{}
	tr, err := openFake(t, fs, fakeRoot(t, "memory", "cpu", "pids"), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer tr.Close()
	rg, err := tr.NewRouteGroup("acme", nil, uint32(os.Getuid()))
	if err != nil {
		t.Fatal(err)
	}
	inst, err := rg.NewInstance()
	if err != nil {
		t.Fatal(err)
	}
	// A group below the instance's, whose removal is the moment the
	// instance's own end removes its group, after the walk listed it.
	sub := filepath.Join(inst.Path(), "sub")
	if err := fs.mkdir(sub); err != nil {
		t.Fatal(err)
	}
	fs.rmdirHook = func(path string) {
		if path == sub {
			os.RemoveAll(inst.Path())
		}
	}
	if err := rg.Remove(t.Context()); err != nil {
		t.Fatal(err)
	}
	if exists(rg.Path()) {
		t.Errorf("%s left after Remove", rg.Path())
	}
}
