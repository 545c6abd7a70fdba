package cgroup

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"strconv"
	"sync"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// preloadDir is the preloader's own group inside a route group.
const preloadDir = "preload"

// RouteGroup is a fork route's own subtree under its tenant:
//
//	<tenant>/<name>/              controllers enabled, no limits; cgroup.procs owned by Owner
//	<tenant>/<name>/preload       the preloader's memory limit, which its instances share
//	<tenant>/<name>/preload/i<n>  one instance of the preloader (NewInstance)
//	<tenant>/<name>/<cell>        the route's request cells; cgroup.procs owned by Owner
//
// clone3 CLONE_INTO_CGROUP needs write access to the destination's
// cgroup.procs and to the common ancestor's (cgroup-v2.rst, delegation
// containment): the preloader, running as Owner, can start processes in
// its route's cells and nowhere else, and can move processes only between
// them (no other group's cgroup.procs is its; preload and every control
// file stay root's).
type RouteGroup struct {
	t      *Tree
	tenant string
	name   string
	path   string
	owner  uint32
	pre    *Cell // the preload group, held open: its instances' groups are made in it (NewInstance)
	closed sync.Once
}

// NewRouteGroup creates a route group in the tenant's group with the
// preloader's group limited by preload (converted like a tenant budget;
// nil writes nothing), for a preloader running as owner.
func (t *Tree) NewRouteGroup(tenant string, preload *specs.LinuxResources, owner uint32) (*RouteGroup, error) {
	tenant, err := tenantName(tenant)
	if err != nil {
		return nil, err
	}
	s, err := TenantSettings(preload)
	if err != nil {
		return nil, fmt.Errorf("preloader limits: %w", err)
	}
	p, err := t.planFor(s, "preloader of tenant "+tenant)
	if err != nil {
		return nil, err
	}
	g, _, err := t.openTenant(tenant)
	if err != nil {
		return nil, err
	}
	name := "f" + t.nonce + "-" + strconv.FormatUint(t.seq.Add(1), 36)
	rg := &RouteGroup{t: t, tenant: tenant, name: name, path: filepath.Join(g.path, name), owner: owner}
	if err := t.ops.mkdir(rg.path); err != nil {
		return nil, mkdirError(rg.path, err)
	}
	fail := func(err error) (*RouteGroup, error) {
		ctx, cancel := context.WithTimeout(context.Background(), t.sweepTime)
		defer cancel()
		t.removeSubtree(ctx, rg.path)
		return nil, err
	}
	if err := enableControllers(rg.path, t.enabled); err != nil {
		return fail(err)
	}
	if err := chownProcs(rg.path, owner); err != nil {
		return fail(err)
	}
	dir := filepath.Join(rg.path, preloadDir)
	if err := t.ops.mkdir(dir); err != nil {
		return fail(mkdirError(dir, err))
	}
	fd, err := openDir(dir)
	if err != nil {
		return fail(err)
	}
	rg.pre = &Cell{name: preloadDir, tenant: tenant, path: dir, fd: fd, unenforced: p.unenforced, ops: t.ops}
	for _, x := range p.settings {
		if err := writeAt(fd, x.File, x.Value); err != nil {
			unix.Close(fd)
			return fail(fmt.Errorf("write %s=%q in %s: %w", x.File, x.Value, dir, err))
		}
	}
	return rg, nil
}

// Name is the route group's directory name in its tenant group.
func (rg *RouteGroup) Name() string { return rg.name }

// Path is the route group's directory.
func (rg *RouteGroup) Path() string { return rg.path }

// NewInstance makes the group one instance of the preloader runs in,
// below the preload group, empty: its FD is for CLONE_INTO_CGROUP when the
// instance is started, and its Remove, when the instance has ended, ends
// everything the instance started and left (a subprocess of its app, one
// that left its process group or session included) and removes the
// group. No controller is enabled below preload: what an instance uses is
// charged to preload, under the preloader's limits, which a replacement
// and the instance it replaces share while both run. cgroup.procs stays
// root's: the preloader moves nothing in or out of it.
func (rg *RouteGroup) NewInstance() (*Cell, error) {
	name := "i" + strconv.FormatUint(rg.t.seq.Add(1), 36)
	dir := filepath.Join(rg.pre.path, name)
	if err := rg.t.ops.mkdir(dir); err != nil {
		return nil, mkdirError(dir, err)
	}
	fd, err := openDir(dir)
	if err != nil {
		rg.t.ops.rmdir(dir)
		return nil, err
	}
	return &Cell{name: name, tenant: rg.tenant, path: dir, fd: fd, ops: rg.t.ops}, nil
}

// Profile returns prof for cells in this route group, their cgroup.procs
// owned by the preloader's uid. The profile is of the group's own (its key
// differs), so the pool keeps its cells apart.
func (rg *RouteGroup) Profile(prof *Profile) (*Profile, error) {
	if prof.tenant != rg.tenant {
		return nil, fmt.Errorf("profile of tenant %s for route group %s of tenant %s: %w", prof.tenant, rg.name, rg.tenant, ErrInvalidName)
	}
	q := *prof
	q.group, q.owner = rg.name, rg.owner
	q.key.Group, q.key.Owner = rg.name, rg.owner
	return &q, nil
}

// Remove kills what is left in the route group (the preloader included)
// and removes it. Its cells must have been released and the pool drained
// of its profile; until the pool's removers are done, rmdir is retried
// until ctx ends (ErrBusy).
func (rg *RouteGroup) Remove(ctx context.Context) error {
	rg.closed.Do(rg.pre.closeFDs)
	_, err := rg.t.removeSubtree(ctx, rg.path)
	if err != nil && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove route group %s: %w", rg.path, err)
	}
	return nil
}

// chownProcs gives uid write access to dir's cgroup.procs (mode 0644 as
// the kernel creates it: owner-writable).
func chownProcs(dir string, uid uint32) error {
	path := filepath.Join(dir, "cgroup.procs")
	if err := unix.Chown(path, int(uid), -1); err != nil {
		return fmt.Errorf("chown %s to uid %d: %w", path, uid, err)
	}
	return nil
}
