package cgroup

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
	"golang.org/x/sys/unix"
)

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
	if err := t.applyBudget(g, p); err != nil {
		return nil, err
	}
	return g, nil
}

// SetBudget writes the global budget of all cells of all tenants to
// <base>/cells (converted with TenantSettings, e.g. memory.max as the
// kernel-enforced cap of everything cellgate runs). Like Tenant, calling
// it again updates it, and nil clears what the previous call set.
func (t *Tree) SetBudget(r *specs.LinuxResources) error {
	s, err := TenantSettings(r)
	if err != nil {
		return fmt.Errorf("global budget: %w", err)
	}
	p, err := t.planFor(s, "global budget")
	if err != nil {
		return err
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return ErrClosed
	}
	return t.applyBudget(&t.global, p)
}

// applyBudget writes p to the group g, resetting what g's previous budget
// set and p does not. t.mu is held.
func (t *Tree) applyBudget(g *Tenant, p *plan) error {
	writes, unknown := updateWrites(g.applied, p.settings)
	for _, f := range unknown {
		t.log.Warn("limit dropped from a budget stays in force: cellgate does not know its unlimited value", "group", g.path, "file", f)
	}
	for _, x := range writes {
		if err := writeFile(filepath.Join(g.path, x.File), x.Value); err != nil {
			return fmt.Errorf("write %s=%q in %s: %w", x.File, x.Value, g.path, err)
		}
	}
	g.applied = p.settings
	if len(p.unenforced) > 0 {
		t.log.Warn("budget not enforced for missing controllers", "group", g.path, "unenforced", strings.Join(p.unenforced, " "))
	}
	return nil
}

// openTenant returns the tenant group, creating it, unless the Tree is
// closed (ErrClosed).
func (t *Tree) openTenant(name string) (*Tenant, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, ErrClosed
	}
	return t.tenantLocked(name)
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

// unlimited is what each control file Convert can write holds when nothing
// limits it, for resetting a limit dropped from a tenant's budget. Files
// with one entry per device (io.max, io.weight) are reset per entry by
// resetSetting.
var unlimited = map[string]string{
	"memory.max": "max", "memory.high": "max", "memory.low": "0", "memory.min": "0",
	"memory.swap.max": "max", "memory.oom.group": "0",
	"cpu.weight": "100", "cpu.max": "max", "cpu.max.burst": "0", "cpu.idle": "0",
	"pids.max":               "max",
	"cgroup.max.descendants": "max", "cgroup.max.depth": "max",
}

// updateWrites returns the writes that take a group from the budget old
// to next: every write of next, preceded by resets of what old wrote and
// next does not. Files it cannot reset are returned in unknown.
func updateWrites(old, next []Setting) (writes []Setting, unknown []string) {
	for _, o := range old {
		if slices.ContainsFunc(next, func(n Setting) bool { return sameTarget(o, n) }) {
			continue
		}
		r, ok := resetSetting(o)
		if !ok {
			unknown = append(unknown, o.File)
			continue
		}
		if !slices.Contains(writes, r) {
			writes = append(writes, r)
		}
	}
	return append(writes, next...), unknown
}

// sameTarget reports whether two writes set the same thing: the same file,
// and for per-device files the same device and key.
func sameTarget(a, b Setting) bool {
	if a.File != b.File {
		return false
	}
	switch a.File {
	case "io.max":
		ad, ak := ioMaxTarget(a.Value)
		bd, bk := ioMaxTarget(b.Value)
		return ad == bd && ak == bk
	case "io.weight":
		ad, _, _ := strings.Cut(a.Value, " ")
		bd, _, _ := strings.Cut(b.Value, " ")
		return ad == bd
	}
	return true
}

// ioMaxTarget splits "8:0 rbps=1000" into "8:0" and "rbps".
func ioMaxTarget(v string) (dev, key string) {
	dev, rest, _ := strings.Cut(v, " ")
	key, _, _ = strings.Cut(rest, "=")
	return dev, key
}

// resetSetting is the write that undoes s.
func resetSetting(s Setting) (Setting, bool) {
	switch {
	case s.File == "io.max":
		dev, key := ioMaxTarget(s.Value)
		return Setting{s.File, dev + " " + key + "=max"}, true
	case s.File == "io.weight":
		dev, _, _ := strings.Cut(s.Value, " ")
		if dev == "default" {
			return Setting{s.File, "default 100"}, true
		}
		return Setting{s.File, dev + " default"}, true
	case strings.HasPrefix(s.File, "hugetlb.") && strings.HasSuffix(s.File, ".max"):
		return Setting{s.File, "max"}, true
	}
	v, ok := unlimited[s.File]
	return Setting{s.File, v}, ok
}
