package cgroup

import (
	"errors"
	"fmt"
	"maps"
	"os"
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
	applied []Setting // the budget last written (guarded by Tree.budgetMu)
}

// Name is the tenant's name.
func (g *Tenant) Name() string { return g.name }

// label names the group in logs: the tenant, or the global budget's
// cells/.
func (g *Tenant) label() string {
	if g.name == "" {
		return "(global budget)"
	}
	return g.name
}

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
	p, err := t.budgetPlan(r, "tenant "+name)
	if err != nil {
		return nil, err
	}
	t.budgetMu.Lock()
	defer t.budgetMu.Unlock()
	g, _, err := t.openTenant(name)
	if err != nil {
		return nil, err
	}
	if err := t.applyBudget(g, p, nil); err != nil {
		return nil, err
	}
	return g, nil
}

// Budget is one tenant's budget, for SetBudgets.
type Budget struct {
	Tenant    string
	Resources *specs.LinuxResources
}

// SetBudgets writes the global budget (as SetBudget) and each tenant's
// budget (as Tenant, creating the groups of new tenants) as one change,
// for a reload, and returns the tenants' groups in order. Every budget is
// converted and checked before anything is written. When a write fails,
// the change is undone (rollback) and its error returned: the files
// written hold their previous values again, the groups it created are
// removed, and the budgets Tenant and SetBudget update from are the
// previous ones. A file that cannot be put back is logged at error level
// and its error, wrapping ErrNotRestored, joined to the returned one.
func (t *Tree) SetBudgets(global *specs.LinuxResources, budgets []Budget) ([]*Tenant, error) {
	gp, err := t.budgetPlan(global, "global budget")
	if err != nil {
		return nil, err
	}
	names, plans, err := t.tenantPlans(budgets)
	if err != nil {
		return nil, err
	}
	t.budgetMu.Lock()
	defer t.budgetMu.Unlock()
	if t.isClosed() {
		return nil, ErrClosed
	}
	j := &journal{}
	if err := t.applyBudget(&t.global, gp, j); err != nil {
		return nil, t.rollback(j, err)
	}
	groups := make([]*Tenant, len(budgets))
	for i, name := range names {
		g, made, err := t.openTenant(name)
		if err != nil {
			return nil, t.rollback(j, err)
		}
		if made {
			j.created = append(j.created, g)
		}
		if err := t.applyBudget(g, plans[i], j); err != nil {
			return nil, t.rollback(j, err)
		}
		groups[i] = g
	}
	return groups, nil
}

// AddTenants creates the groups of the tenants of budgets that have none,
// each with its budget written (as Tenant), as one change: when a write
// fails, the groups it made are removed again and its error returned. A
// tenant that has a group is left as it is (SetBudgets updates it). It
// returns the names of the groups it made. A reload writes its new
// tenants' budgets so before it starts their fork routes' preloaders,
// which run in those groups (NewRouteGroup), and removes the groups again
// (RemoveTenant) when it is refused later: nothing else knows them then.
func (t *Tree) AddTenants(budgets []Budget) ([]string, error) {
	names, plans, err := t.tenantPlans(budgets)
	if err != nil {
		return nil, err
	}
	t.budgetMu.Lock()
	defer t.budgetMu.Unlock()
	j := &journal{}
	var made []string
	for i, name := range names {
		g, created, err := t.openTenant(name)
		if err != nil {
			return nil, t.rollback(j, err)
		}
		if !created {
			continue // it had a group, or a directory of the name was there: left as SetBudgets finds it
		}
		j.created = append(j.created, g)
		if err := t.applyBudget(g, plans[i], j); err != nil {
			return nil, t.rollback(j, err)
		}
		made = append(made, name)
	}
	return made, nil
}

// tenantPlans validates the tenants' names and converts their budgets,
// before anything is written.
func (t *Tree) tenantPlans(budgets []Budget) ([]string, []*plan, error) {
	names := make([]string, len(budgets))
	plans := make([]*plan, len(budgets))
	for i, b := range budgets {
		var err error
		if names[i], err = tenantName(b.Tenant); err != nil {
			return nil, nil, err
		}
		if plans[i], err = t.budgetPlan(b.Resources, "tenant "+names[i]); err != nil {
			return nil, nil, err
		}
	}
	return names, plans, nil
}

// budgetPlan converts the budget r of what ("global budget", "tenant
// NAME") to the plan applyBudget writes.
func (t *Tree) budgetPlan(r *specs.LinuxResources, what string) (*plan, error) {
	s, err := TenantSettings(r)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	return t.planFor(s, what)
}

// SetBudget writes the global budget of all cells of all tenants to
// <base>/cells (converted with TenantSettings, e.g. memory.max as the
// kernel-enforced cap of everything cellgate runs). Like Tenant, calling
// it again updates it, and nil clears what the previous call set.
func (t *Tree) SetBudget(r *specs.LinuxResources) error {
	p, err := t.budgetPlan(r, "global budget")
	if err != nil {
		return err
	}
	t.budgetMu.Lock()
	defer t.budgetMu.Unlock()
	if t.isClosed() {
		return ErrClosed
	}
	return t.applyBudget(&t.global, p, nil)
}

// applyBudget writes p to the group g, resetting what g's previous budget
// set and p does not. With a journal j, each write's undo is recorded in
// it first (what the file held: previousSetting), and a write that fails
// stops there for the caller to roll j back. t.budgetMu is held, and
// not t.mu: a memory.max below what the group holds has the kernel
// reclaim in the write, for as long as that takes, and cells are made
// meanwhile.
func (t *Tree) applyBudget(g *Tenant, p *plan, j *journal) error {
	writes, unknown := updateWrites(g.applied, p.settings)
	for _, f := range unknown {
		t.log.Warn("limit dropped from a budget stays in force: cellgate does not know its unlimited value", "group", g.path, "file", f)
	}
	if j != nil {
		j.budgets = append(j.budgets, groupBudget{g, g.applied})
	}
	for _, x := range writes {
		var undo Setting
		if j != nil {
			var err error
			if undo, err = previousSetting(g, x); err != nil {
				return err
			}
		}
		if err := writeFile(filepath.Join(g.path, x.File), x.Value); err != nil {
			return fmt.Errorf("write %s=%q in %s: %w", x.File, x.Value, g.path, err)
		}
		if j != nil {
			j.writes = append(j.writes, groupWrite{g: g, wrote: x, undo: undo})
		}
	}
	g.applied = p.settings
	if len(p.unenforced) > 0 {
		t.log.Warn("budget not enforced for missing controllers", "group", g.path, "unenforced", strings.Join(p.unenforced, " "))
	}
	return nil
}

// journal is what a change of budgets (SetBudgets) did, so that rollback
// can undo it.
type journal struct {
	writes  []groupWrite  // in the order made
	budgets []groupBudget // each group's budget before the change
	created []*Tenant     // the groups the change created
}

type groupWrite struct {
	g     *Tenant
	wrote Setting // the write made
	undo  Setting // the write that puts back what the file held
}

type groupBudget struct {
	g       *Tenant
	applied []Setting
}

// previousSetting is the write that puts back what x is about to change in
// g. The entry of a per-device file (io.max, io.weight) that x sets comes
// from g's budget when it set that entry, else is reset to the kernel's
// default, which the entry holds until cellgate writes it (reading these
// files gives every device's entries, which one write cannot take back).
// Any other file holds one value: it is read now, before x is written,
// and written back as read. t.budgetMu is held.
func previousSetting(g *Tenant, x Setting) (Setting, error) {
	if x.File == "io.max" || x.File == "io.weight" {
		if i := slices.IndexFunc(g.applied, func(o Setting) bool { return sameTarget(o, x) }); i >= 0 {
			return g.applied[i], nil
		}
		r, _ := resetSetting(x)
		return r, nil
	}
	b, err := readFile(filepath.Join(g.path, x.File))
	if err != nil {
		return Setting{}, fmt.Errorf("read %s in %s (to restore it should the change fail): %w", x.File, g.path, err)
	}
	return Setting{x.File, strings.TrimSpace(string(b))}, nil
}

// rollback undoes the failed change j, whose error is err: it writes each
// file's previous value back, newest first, restores the groups' budgets
// and removes the groups j created (empty: nothing ran in them yet). It
// returns err joined with an error for each file or group it could not
// put back, each wrapping ErrNotRestored and logged at error level with
// the tenant, the file and the value. A file left with the new value
// counts as part of its group's budget, so that a later budget without it
// resets it. t.budgetMu is held.
func (t *Tree) rollback(j *journal, err error) error {
	errs := []error{err}
	var stuck []groupWrite
	for _, w := range slices.Backward(j.writes) {
		if werr := writeFile(filepath.Join(w.g.path, w.undo.File), w.undo.Value); werr != nil {
			t.log.Error("budget change failed and a file could not be put back: it keeps the new value", "tenant", w.g.label(),
				"group", w.g.path, "file", w.undo.File, "value", w.undo.Value, "new_value", w.wrote.Value, "err", werr)
			errs = append(errs, fmt.Errorf("%s: restore %s=%q in %s: %w: %w", w.g.label(), w.undo.File, w.undo.Value, w.g.path, ErrNotRestored, werr))
			stuck = append(stuck, w)
		}
	}
	for _, b := range slices.Backward(j.budgets) {
		b.g.applied = b.applied
	}
	for _, w := range stuck {
		if !slices.ContainsFunc(w.g.applied, func(o Setting) bool { return sameTarget(o, w.wrote) }) {
			w.g.applied = append(slices.Clip(w.g.applied), w.wrote)
		}
	}
	t.mu.Lock()
	defer t.mu.Unlock()
	for _, g := range slices.Backward(j.created) {
		if rerr := t.ops.rmdir(g.path); rerr != nil && !errors.Is(rerr, unix.ENOENT) {
			t.log.Error("budget change failed and the group it created could not be removed", "tenant", g.name, "group", g.path, "err", rerr)
			errs = append(errs, fmt.Errorf("%s: remove %s: %w: %w", g.name, g.path, ErrNotRestored, rerr))
			continue
		}
		delete(t.tenants, g.name)
	}
	return errors.Join(errs...)
}

// openTenant returns the tenant group, creating it, unless the Tree is
// closed (ErrClosed); made: its directory was made by this call.
func (t *Tree) openTenant(name string) (g *Tenant, made bool, err error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.closed {
		return nil, false, ErrClosed
	}
	return t.tenantLocked(name)
}

// isClosed reports whether Close has begun.
func (t *Tree) isClosed() bool {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.closed
}

// tenantLocked returns the tenant group, creating it with the controllers
// enabled for its cells; made: its directory was made by this call.
// t.mu is held.
func (t *Tree) tenantLocked(name string) (g *Tenant, made bool, err error) {
	if g := t.tenants[name]; g != nil {
		return g, false, nil
	}
	dir := filepath.Join(t.cells, name)
	err = t.ops.mkdir(dir)
	if err != nil && !errors.Is(err, unix.EEXIST) {
		return nil, false, mkdirError(dir, err)
	}
	made = err == nil
	if err := enableControllers(dir, t.enabled); err != nil {
		if made {
			t.ops.rmdir(dir) // empty: only just made
		}
		return nil, false, err
	}
	g = &Tenant{name: name, path: dir}
	if !made {
		// A previous run's, left by the start-up sweep with a cell it
		// could not empty: its limits are that run's. Taken as applied,
		// those the new budget does not set are reset, not kept.
		g.applied = inherited(dir)
		t.log.Warn("tenant group of a previous run still there (a leftover cell it could not remove): its limits are reset to this policy's", "group", dir)
	}
	t.tenants[name] = g
	return g, made, nil
}

// inherited lists the control files of unlimited that the group at dir
// has, as settings for updateWrites to reset.
func inherited(dir string) []Setting {
	var out []Setting
	for _, f := range slices.Sorted(maps.Keys(unlimited)) {
		if _, err := os.Stat(filepath.Join(dir, f)); err == nil {
			out = append(out, Setting{File: f, Value: unlimited[f]})
		}
	}
	return out
}

// RemoveTenant removes an empty tenant group. Draining it (its cells,
// the pool's idle cells: Pool.DrainTenant) is the caller's job; a group
// that still has cells is ErrBusy.
func (t *Tree) RemoveTenant(name string) error {
	name, err := tenantName(name)
	if err != nil {
		return err
	}
	t.budgetMu.Lock()
	defer t.budgetMu.Unlock()
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
	return append(writes, burstFirst(old, next)...), unknown
}

// burstFirst returns next, with a write of cpu.max.burst=0 before its
// cpu.max when next sets both and old may have left a burst: the kernel
// refuses a quota below the burst the group holds, and a burst above the
// quota it holds, so that neither order of the two writes takes a group
// from {50000, burst 40000} to {20000, burst 10000}, or from {20000} to
// {50000, burst 40000}; a burst of 0 fits any quota.
func burstFirst(old, next []Setting) []Setting {
	isBurst := func(s Setting) bool { return s.File == "cpu.max.burst" }
	i := slices.IndexFunc(next, func(s Setting) bool { return s.File == "cpu.max" })
	if i < 0 || !slices.ContainsFunc(next, isBurst) || !slices.ContainsFunc(old, isBurst) {
		return next
	}
	return slices.Insert(slices.Clone(next), i, Setting{"cpu.max.burst", "0"})
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
