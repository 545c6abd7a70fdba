package cgroup

import (
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
	if got := read(t, filepath.Join(rg.Preload().Path(), "memory.max")); got != "67108864" {
		t.Errorf("preload memory.max = %q", got)
	}
	// What the preloader's group holds, as the kernel lists it.
	if err := os.WriteFile(filepath.Join(rg.Preload().Path(), "cgroup.procs"), []byte("4242\n77\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if pids, err := rg.Preload().Procs(); err != nil || !slices.Equal(pids, []int{4242, 77}) {
		t.Errorf("preload Procs = %v, %v; want [4242 77]", pids, err)
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
		filepath.Join(rg.Preload().Path(), "cgroup.procs"):     uint32(os.Getuid()),
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
