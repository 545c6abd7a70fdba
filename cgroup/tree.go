package cgroup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

// Controllers cellgate enables top-down in its subtree when the kernel has
// them. memory, cpu and pids are required (see Options.Unenforced); io is
// used when available.
var (
	requiredControllers = []string{"memory", "cpu", "pids"}
	optionalControllers = []string{"io"}
)

// Names of cellgate's groups directly under the base.
const (
	supervisorDir = "supervisor"
	cellsDir      = "cells"
	probeDir      = "_probe" // not a valid tenant name, so it cannot collide
)

// Options configure Open. The zero value finds everything itself and uses
// the process's own group as the base.
type Options struct {
	// ProcRoot is where proc is mounted ("" = /proc); tests point it at a
	// fake.
	ProcRoot string
	// Mount is the cgroup2 mount point ("" = found in
	// <ProcRoot>/self/mountinfo).
	Mount string
	// Base is the absolute path of cellgate's base group on cgroupfs.
	// "" = the process's own group (or its parent when the process was
	// started in <unit>/supervisor by systemd's DelegateSubgroup=); the
	// daemon then moves itself into <base>/supervisor. Any other directory
	// under Mount is created if missing and the process is not moved
	// (tests and "cellgate run" use a private base like
	// <mount>/cellgate-<id>). Its parent must have the controllers enabled
	// in its cgroup.subtree_control.
	Base string
	// Unenforced names required controllers (of "memory", "cpu", "pids")
	// cellgate may run without: when one is missing, limits for it are not
	// written and cells report it in Cell.Unenforced. A listed controller
	// that is available is still enforced.
	Unenforced []string
	// MaxCells, when > 0, is written to <base>/cells/cgroup.max.descendants:
	// a kernel cap on tenants plus cells (mkdir beyond it fails with
	// EAGAIN, surfacing as ErrTooManyCells).
	MaxCells int
	// ProbeSpawn starts a process inside the group with directory fd
	// cgroupFD and waits for it, to prove clone3 CLONE_INTO_CGROUP works.
	// nil = SpawnTrue. sandbox may pass its own spawner.
	ProbeSpawn func(cgroupFD int) error
	// Logger receives start-up and teardown records (nil = discard).
	Logger *slog.Logger
	// SweepTimeout bounds the start-up sweep and Close (0 = 10s).
	SweepTimeout time.Duration

	// ops replaces cgroupfs mkdir/rmdir in tests (nil = the kernel).
	ops dirOps
}

// Tree is cellgate's delegated subtree:
//
//	<base>/supervisor/          the daemon (when base is its own group)
//	<base>/cells/               controllers enabled for tenants
//	<base>/cells/<tenant>/      tenant budget, controllers enabled for cells
//	<base>/cells/<tenant>/<id>  one request cell
//
// A Tree is safe for concurrent use.
type Tree struct {
	log       *slog.Logger
	ops       dirOps
	base      string
	cells     string
	feat      Features
	enabled   []string
	allowed   []string // Options.Unenforced
	createdB  bool     // Open created base (a private base): Close removes it
	createdC  bool     // Open created cells/ (a failed Open removes it)
	nonce     string
	seq       atomic.Uint64
	sweepTime time.Duration

	mu      sync.Mutex
	closed  bool
	tenants map[string]*Tenant
	plans   map[ProfileKey]*plan
}

// plan is a profile as this Tree applies it: the writes for the enabled
// controllers, and the controllers left unenforced.
type plan struct {
	settings   []Setting
	unenforced []string
}

// Open finds the cgroup2 mount and the base group, moves the daemon into
// <base>/supervisor when the base is its own group, enables the controllers
// top-down, creates <base>/cells, sweeps leftover cells of a crashed run,
// and probes the kernel features. It fails with an error wrapping
// ErrNotDelegated, ErrControllerMissing or ErrUnsupported, with the
// remedy, when cellgate cannot own the subtree.
func Open(ctx context.Context, o Options) (*Tree, error) {
	t := &Tree{
		log:       o.Logger,
		ops:       o.ops,
		allowed:   slices.Clone(o.Unenforced),
		tenants:   map[string]*Tenant{},
		plans:     map[ProfileKey]*plan{},
		sweepTime: o.SweepTimeout,
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.ops == nil {
		t.ops = kernelOps{}
	}
	if t.sweepTime == 0 {
		t.sweepTime = 10 * time.Second
	}
	for _, c := range o.Unenforced {
		if !slices.Contains(requiredControllers, c) {
			return nil, fmt.Errorf("unenforced controller %q: want one of %s", c, strings.Join(requiredControllers, ", "))
		}
	}
	var nb [4]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return nil, fmt.Errorf("cell name nonce: %w", err)
	}
	t.nonce = hex.EncodeToString(nb[:])
	t.feat.Kernel = kernelRelease()

	if err := t.locate(o); err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			t.undo()
		}
	}()
	if err := t.setup(o); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, t.sweepTime)
	n, err := t.sweep(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("sweep leftover cells: %w", err)
	}
	if n > 0 {
		t.log.Warn("removed leftover cgroups of a previous run", "count", n, "cells", t.cells)
	}
	if o.MaxCells > 0 {
		if err := writeFile(filepath.Join(t.cells, "cgroup.max.descendants"), strconv.Itoa(o.MaxCells)); err != nil {
			return nil, fmt.Errorf("write cgroup.max.descendants=%d in %s: %w", o.MaxCells, t.cells, err)
		}
	}
	spawn := o.ProbeSpawn
	if spawn == nil {
		spawn = SpawnTrue
	}
	if err := t.probe(ctx, spawn); err != nil {
		return nil, err
	}
	t.log.Info("cgroup tree ready", "features", t.feat)
	ok = true
	return t, nil
}

// undo removes what a failed Open created: cells/ (when empty) and a
// private base. A daemon moved into supervisor/ stays there.
func (t *Tree) undo() {
	if t.createdC {
		t.ops.rmdir(t.cells)
	}
	if t.createdB {
		t.ops.rmdir(t.base)
	}
}

// locate sets the mount and the base, and moves the daemon into
// <base>/supervisor when the base is its own group.
func (t *Tree) locate(o Options) error {
	proc := o.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	mi := mountInfo{Point: o.Mount, Root: "/"}
	if mi.Point == "" {
		b, err := readFile(filepath.Join(proc, "self", "mountinfo"))
		if err != nil {
			return fmt.Errorf("find cgroup2 mount: %w", err)
		}
		if mi, err = parseMountinfo(b); err != nil {
			return err
		}
	}
	t.feat.Mount = filepath.Clean(mi.Point)

	own, ownErr := ownDir(proc, mi)
	if o.Base != "" && (ownErr != nil || filepath.Clean(o.Base) != own) {
		base := filepath.Clean(o.Base)
		if !filepath.IsAbs(base) || !strings.HasPrefix(base, t.feat.Mount+"/") {
			return fmt.Errorf("base %s: must be a directory under the cgroup2 mount %s", o.Base, t.feat.Mount)
		}
		t.base = base
		switch err := t.ops.mkdir(base); {
		case err == nil:
			t.createdB = true
		case errors.Is(err, unix.EEXIST):
		default:
			return fmt.Errorf("mkdir base %s: %w: %w (%s)", base, ErrNotDelegated, err, remedy)
		}
		t.feat.Base = base
		return nil
	}
	if ownErr != nil {
		return ownErr
	}
	if filepath.Base(own) == supervisorDir && own != t.feat.Mount {
		// Started in <unit>/supervisor (systemd DelegateSubgroup=supervisor).
		t.base = filepath.Dir(own)
		t.feat.Base, t.feat.Supervisor = t.base, own
		return nil
	}
	t.base = own
	t.feat.Base = own
	if _, err := os.Stat(filepath.Join(own, "cgroup.type")); errors.Is(err, os.ErrNotExist) {
		// Only the real root group has no cgroup.type. It may hold
		// processes and still delegate controllers; there is nothing to
		// move (kernel threads could not be moved). The root of a
		// container's cgroup namespace is not the real root: it has
		// cgroup.type, and the daemon must move.
		return nil
	}
	return t.moveSelf()
}

// ownDir is the directory of the process's own group on the mount.
func ownDir(proc string, mi mountInfo) (string, error) {
	b, err := readFile(filepath.Join(proc, "self", "cgroup"))
	if err != nil {
		return "", fmt.Errorf("find own cgroup: %w", err)
	}
	own, err := parseProcCgroup(b)
	if err != nil {
		return "", err
	}
	return groupDir(mi, own)
}

// moveSelf moves the daemon from the base into <base>/supervisor, so the
// base can enable controllers (no internal processes). It refuses when
// the base holds other processes: the group is not cellgate's to take.
func (t *Tree) moveSelf() error {
	b, err := readFile(filepath.Join(t.base, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(t.base, "cgroup.procs"), err)
	}
	self := os.Getpid()
	var others []string
	for _, f := range strings.Fields(string(b)) {
		if f != strconv.Itoa(self) {
			others = append(others, f)
		}
	}
	if len(others) > 0 {
		return fmt.Errorf("own group %s is shared with pids %s: %w (%s)", t.base, strings.Join(others, " "), ErrNotDelegated, remedy)
	}
	sup := filepath.Join(t.base, supervisorDir)
	if err := t.ops.mkdir(sup); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir %s: %w: %w (%s)", sup, ErrNotDelegated, err, remedy)
	}
	if err := writeFile(filepath.Join(sup, "cgroup.procs"), strconv.Itoa(self)); err != nil {
		return fmt.Errorf("write cgroup.procs=%d in %s: %w: %w (%s)", self, sup, ErrNotDelegated, err, remedy)
	}
	t.feat.Supervisor = sup
	t.log.Info("moved cellgate into its supervisor group", "pid", self, "group", sup)
	return nil
}

// setup enables the controllers in the base, creates cells/ and enables
// them there too, and checks the required ones.
func (t *Tree) setup(o Options) error {
	avail, err := readControllers(filepath.Join(t.base, "cgroup.controllers"))
	if err != nil {
		return err
	}
	t.feat.Available = avail
	var want []string
	for _, c := range slices.Concat(requiredControllers, optionalControllers) {
		if slices.Contains(avail, c) {
			want = append(want, c)
		}
	}
	if err := enableControllers(t.base, want); err != nil {
		return err
	}
	t.cells = filepath.Join(t.base, cellsDir)
	switch err := t.ops.mkdir(t.cells); {
	case err == nil:
		t.createdC = true
	case !errors.Is(err, unix.EEXIST):
		return fmt.Errorf("mkdir %s: %w: %w (%s)", t.cells, ErrNotDelegated, err, remedy)
	}
	if err := enableControllers(t.cells, want); err != nil {
		return err
	}
	t.enabled = want
	t.feat.Enabled = slices.Clone(want)
	for _, c := range requiredControllers {
		if slices.Contains(want, c) {
			continue
		}
		if !slices.Contains(t.allowed, c) {
			return &ControllerMissingError{Controller: c, Path: t.base}
		}
		t.feat.Unenforced = append(t.feat.Unenforced, c)
	}
	if len(t.feat.Unenforced) > 0 {
		t.log.Warn("running without controllers: their limits are not enforced", "unenforced", strings.Join(t.feat.Unenforced, " "), "base", t.base)
	}
	return nil
}

func readControllers(path string) ([]string, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.Fields(string(b)), nil
}

// enableControllers writes "+c ..." for the controllers of want that
// dir's cgroup.subtree_control does not list yet.
func enableControllers(dir string, want []string) error {
	sc := filepath.Join(dir, "cgroup.subtree_control")
	have, err := readControllers(sc)
	if err != nil {
		return err
	}
	var add []string
	for _, c := range want {
		if !slices.Contains(have, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	v := strings.Join(add, " ")
	if err := writeFile(sc, v); err != nil {
		why := remedy
		if errors.Is(err, unix.EBUSY) {
			why = "the group holds processes (no internal processes with controllers enabled); " + remedy
		}
		return fmt.Errorf("write cgroup.subtree_control=%q in %s: %w: %w (%s)", v, dir, ErrNotDelegated, err, why)
	}
	return nil
}

// probe checks cgroup.kill, memory.peak, pids.peak and a spawn into a
// scratch group under cells/.
func (t *Tree) probe(ctx context.Context, spawn func(int) error) error {
	dir := filepath.Join(t.cells, probeDir)
	if err := t.ops.mkdir(dir); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("probe: mkdir %s: %w", dir, err)
	}
	fd, err := openDir(dir)
	if err != nil {
		rmdirRetry(ctx, t.ops, dir)
		return fmt.Errorf("probe: %w", err)
	}
	for _, f := range []struct {
		name string
		dst  *bool
		ctrl string
	}{
		{"cgroup.kill", &t.feat.Kill, ""},
		{"memory.peak", &t.feat.MemoryPeak, "memory"},
		{"pids.peak", &t.feat.PidsPeak, "pids"},
		{"memory.oom.group", &t.feat.MemoryOOMGroup, "memory"},
	} {
		if f.ctrl != "" && !slices.Contains(t.enabled, f.ctrl) {
			continue
		}
		if *f.dst, err = hasFile(fd, f.name); err != nil {
			break
		}
	}
	if err == nil {
		if serr := spawn(fd); serr != nil {
			t.feat.CloneError = serr.Error()
		} else {
			t.feat.CloneIntoCgroup = true
		}
	}
	rctx, cancel := context.WithTimeout(ctx, t.sweepTime)
	rerr := removeGroup(rctx, t.ops, fd, dir)
	cancel()
	unix.Close(fd)
	switch {
	case err != nil:
		return fmt.Errorf("probe %s: %w", dir, err)
	case rerr != nil:
		return fmt.Errorf("probe: %w", rerr)
	case !t.feat.Kill:
		return fmt.Errorf("probe %s: no cgroup.kill on kernel %s: %w (cellgate needs Linux 5.14; run cellgate doctor)", dir, t.feat.Kernel, ErrUnsupported)
	case !t.feat.CloneIntoCgroup:
		return fmt.Errorf("probe %s: %s: %w (cellgate needs Linux 5.7 with clone3 allowed by seccomp; run cellgate doctor)", dir, t.feat.CloneError, ErrUnsupported)
	}
	return nil
}

// Features returns what Open probed.
func (t *Tree) Features() Features {
	f := t.feat
	f.Available = slices.Clone(f.Available)
	f.Enabled = slices.Clone(f.Enabled)
	f.Unenforced = slices.Clone(f.Unenforced)
	return f
}

// Base is the base group's path.
func (t *Tree) Base() string { return t.base }

// CellsPath is <base>/cells.
func (t *Tree) CellsPath() string { return t.cells }

// sweep kills and removes every group under cells/ (leftovers of a crashed
// run: cells, tenants, probe), deepest first, and returns how many it
// removed.
func (t *Tree) sweep(ctx context.Context) (int, error) {
	ents, err := os.ReadDir(t.cells)
	if err != nil {
		return 0, fmt.Errorf("read %s: %w", t.cells, err)
	}
	n := 0
	var errs []error
	for _, e := range ents {
		if !e.IsDir() {
			continue
		}
		m, err := t.removeSubtree(ctx, filepath.Join(t.cells, e.Name()))
		n += m
		if err != nil {
			errs = append(errs, err)
		}
	}
	return n, errors.Join(errs...)
}

// removeSubtree kills the group at dir (cgroup.kill covers the subtree),
// then removes its descendants deepest first, then dir.
func (t *Tree) removeSubtree(ctx context.Context, dir string) (int, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return 0, nil
		}
		return 0, fmt.Errorf("read %s: %w", dir, err)
	}
	n := 0
	for _, e := range ents {
		if e.IsDir() {
			m, err := t.removeSubtree(ctx, filepath.Join(dir, e.Name()))
			n += m
			if err != nil {
				return n, err
			}
		}
	}
	fd, err := openDir(dir)
	if err != nil {
		return n, err
	}
	defer unix.Close(fd)
	if err := removeGroup(ctx, t.ops, fd, dir); err != nil {
		return n, err
	}
	return n + 1, nil
}

// Close kills and removes everything cellgate created under cells/ (cells
// still handed out included), cells/ itself, and a private base that Open
// created. The supervisor group stays: the daemon is still in it, and
// moving it back would mean disabling the base's controllers for a process
// that is about to exit; the service manager (or the container's cgroup
// namespace) removes the group after the process is gone, and the next
// Open reuses it. Close the Pool first.
func (t *Tree) Close() error {
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil
	}
	t.closed = true
	t.tenants = map[string]*Tenant{}
	t.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), t.sweepTime)
	defer cancel()
	var errs []error
	if _, err := t.sweep(ctx); err != nil {
		errs = append(errs, err)
	}
	if err := rmdirRetry(ctx, t.ops, t.cells); err != nil {
		errs = append(errs, err)
	}
	if t.createdB {
		if err := rmdirRetry(ctx, t.ops, t.base); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("close cgroup tree %s: %w", t.base, err)
	}
	return nil
}

// Tenant is a tenant group, <base>/cells/<name>: the parent of the
// tenant's cells, holding its budget and its totals.
type Tenant struct {
	name    string
	path    string
	applied []Setting // the budget last written (guarded by Tree.mu)
}

// Name is the tenant's name.
func (g *Tenant) Name() string { return g.name }

// Path is the tenant group's directory.
func (g *Tenant) Path() string { return g.path }

// Tenant creates the tenant group (or finds it) and writes its budget r
// (converted with TenantSettings; nil writes nothing). Calling it again
// updates the budget: a limit the previous call wrote and this one does
// not is reset to unlimited. Limits for unenforced controllers are
// skipped (and logged); other missing controllers are a
// *ControllerMissingError. Cells of a tenant never set up here go into a
// group without a budget, created on first use.
func (t *Tree) Tenant(name string, r *specs.LinuxResources) (*Tenant, error) {
	name, err := tenantName(name)
	if err != nil {
		return nil, err
	}
	s, err := TenantSettings(r)
	if err != nil {
		return nil, fmt.Errorf("tenant %s: %w", name, err)
	}
	p, err := t.planFor(s, "tenant "+name)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	g, err := t.tenantLocked(name)
	if err != nil {
		return nil, err
	}
	writes, unknown := updateWrites(g.applied, p.settings)
	for _, f := range unknown {
		t.log.Warn("limit dropped from a tenant's budget stays in force: cellgate does not know its unlimited value", "tenant", name, "file", f)
	}
	for _, x := range writes {
		if err := writeFile(filepath.Join(g.path, x.File), x.Value); err != nil {
			return nil, fmt.Errorf("write %s=%q in %s: %w", x.File, x.Value, g.path, err)
		}
	}
	g.applied = p.settings
	if len(p.unenforced) > 0 {
		t.log.Warn("tenant budget not enforced for missing controllers", "tenant", name, "unenforced", strings.Join(p.unenforced, " "))
	}
	return g, nil
}

// tenantLocked returns the tenant group, creating it with the controllers
// enabled for its cells. t.mu is held.
func (t *Tree) tenantLocked(name string) (*Tenant, error) {
	if g := t.tenants[name]; g != nil {
		return g, nil
	}
	dir := filepath.Join(t.cells, name)
	if err := t.ops.mkdir(dir); err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, mkdirError(dir, err)
	}
	if err := enableControllers(dir, t.enabled); err != nil {
		return nil, err
	}
	g := &Tenant{name: name, path: dir}
	t.tenants[name] = g
	return g, nil
}

// RemoveTenant removes an empty tenant group. Draining it (its cells,
// the pool's idle cells: Pool.DrainTenant) is the caller's job; a group
// that still has cells is ErrBusy.
func (t *Tree) RemoveTenant(name string) error {
	name, err := tenantName(name)
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	dir := filepath.Join(t.cells, name)
	err = t.ops.rmdir(dir)
	switch {
	case err == nil, errors.Is(err, unix.ENOENT):
		delete(t.tenants, name)
		return nil
	case errors.Is(err, unix.EBUSY), errors.Is(err, unix.ENOTEMPTY):
		return fmt.Errorf("rmdir %s: %w: %w (drain its cells first)", dir, ErrBusy, err)
	}
	return fmt.Errorf("rmdir %s: %w", dir, err)
}

// planFor filters settings for this tree: writes for unenforced
// controllers are dropped and reported; a needed controller that is
// neither enabled nor allowed to be missing is an error.
func (t *Tree) planFor(s []Setting, what string) (*plan, error) {
	p := &plan{}
	for _, x := range s {
		c := x.Controller()
		switch {
		case c == "cgroup", slices.Contains(t.enabled, c):
			p.settings = append(p.settings, x)
		case slices.Contains(t.allowed, c):
			if !slices.Contains(p.unenforced, c) {
				p.unenforced = append(p.unenforced, c)
			}
		default:
			return nil, fmt.Errorf("%s: %w", what, &ControllerMissingError{Controller: c, Path: t.cells, Need: x.File})
		}
	}
	slices.Sort(p.unenforced)
	return p, nil
}

// profilePlan returns the cached plan for a profile.
func (t *Tree) profilePlan(prof *Profile) (*plan, error) {
	t.mu.Lock()
	p := t.plans[prof.key]
	t.mu.Unlock()
	if p != nil {
		return p, nil
	}
	p, err := t.planFor(prof.settings, "profile for tenant "+prof.tenant)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.plans[prof.key] = p
	t.mu.Unlock()
	return p, nil
}

// Check reports whether cells of prof can be created on this tree (every
// controller its limits need is enabled or allowed to be unenforced),
// without creating one. cmd uses it to validate a policy at start-up.
func (t *Tree) Check(prof *Profile) error {
	_, err := t.profilePlan(prof)
	return err
}

// NewCell creates a cell for prof now: mkdir, open its directory fd, write
// the profile's limits through the fd. Each step is undone when a later
// one fails. Creation refused by the kernel's caps (EAGAIN, ENOSPC) wraps
// ErrTooManyCells. The caller removes the cell (Cell.Remove) when done;
// the Pool does all this off the hot path.
func (t *Tree) NewCell(prof *Profile) (*Cell, error) {
	p, err := t.profilePlan(prof)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	if t.closed {
		t.mu.Unlock()
		return nil, ErrClosed
	}
	g, err := t.tenantLocked(prof.tenant)
	t.mu.Unlock()
	if err != nil {
		return nil, err
	}
	name := "c" + t.nonce + "-" + strconv.FormatUint(t.seq.Add(1), 36)
	dir := g.path + "/" + name
	if err := t.ops.mkdir(dir); err != nil {
		return nil, mkdirError(dir, err)
	}
	fd, err := openDir(dir)
	if err != nil {
		t.ops.rmdir(dir)
		return nil, err
	}
	for _, x := range p.settings {
		if err := writeAt(fd, x.File, x.Value); err != nil {
			unix.Close(fd)
			t.ops.rmdir(dir)
			return nil, fmt.Errorf("write %s=%q in %s: %w", x.File, x.Value, dir, err)
		}
	}
	return &Cell{name: name, tenant: prof.tenant, path: dir, fd: fd, key: prof.key, unenforced: p.unenforced, ops: t.ops}, nil
}

// mkdirError wraps a failed group mkdir; the kernel's caps become
// ErrTooManyCells.
func mkdirError(dir string, err error) error {
	switch {
	case errors.Is(err, unix.EAGAIN):
		return fmt.Errorf("mkdir %s: %w: %w (cgroup.max.descendants or cgroup.max.depth reached)", dir, ErrTooManyCells, err)
	case errors.Is(err, unix.ENOSPC):
		return fmt.Errorf("mkdir %s: %w: %w", dir, ErrTooManyCells, err)
	case errors.Is(err, unix.EACCES), errors.Is(err, unix.EPERM), errors.Is(err, unix.EROFS):
		return fmt.Errorf("mkdir %s: %w: %w (%s)", dir, ErrNotDelegated, err, remedy)
	}
	return fmt.Errorf("mkdir %s: %w", dir, err)
}
