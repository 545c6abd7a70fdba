package main

import (
	"context"
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// reload re-reads the policy file (SIGHUP). An invalid file, or one whose
// limits the kernel cannot enforce, leaves the running policy in place and
// says why. A valid one takes over for requests routed from now on:
//
//  1. the groups of new tenants are created with their budgets
//     (cgroup.Tree.AddTenants), before the new fork routes' preloaders
//     start in them; then the global budget is written to cells/ and
//     every tenant's budget, all or nothing (cgroup.Tree.SetBudgets: a
//     failed write puts back what was written; what cannot be put back is
//     logged and in the error), admission holding each memory budget to
//     the lower of the two meanwhile (writeBudgets). A reload refused at
//     any step removes the groups it created for new tenants
//     (dropNewTenants);
//  2. admission takes the new budgets, still knowing the tenants of every
//     live snapshot (the replaced one included);
//  3. the new snapshot (routes, the routes' cell profiles, tenants)
//     replaces the current one atomically;
//  4. when the last request routed under a replaced snapshot has ended
//     (snapshotDrained), the pool drops the idle cells of the profiles no
//     live snapshot uses (retainProfiles), and its tenants that no live
//     snapshot names stop admitting and drain: their queued requests and
//     cells finish under their last budgets; then their groups are
//     removed (retire).
//
// Requests in flight keep the route, limits, tenant and admission
// reservation they started with, however long they take (a slow upload
// included); none is dropped. The error is why the running policy was kept
// (it is logged here too). The end of ctx (serve stopping) abandons the
// reload, and a fork route's import under way with it.
func (d *daemon) reload(ctx context.Context) error {
	var old *snapshot
	defer func() {
		if old != nil {
			old.release() // the last reference ends it (drainLater)
		}
	}()
	d.mu.Lock()
	defer d.mu.Unlock()
	start := time.Now()
	p, err := policy.Load(d.cfg.Policy)
	if err != nil {
		d.log.Error("reload: the policy file is invalid; still serving the previous policy", "policy", d.cfg.Policy, "err", err)
		return err
	}
	budgets := tenantBudgets(p)
	var made []string // the groups of new tenants, made for this reload
	if d.tree != nil {
		if made, err = d.tree.AddTenants(budgets); err != nil {
			d.log.Error("reload: cannot create the groups of the new tenants; still serving the previous policy", "policy", d.cfg.Policy, "err", err)
			return err
		}
	}
	specs, err := d.buildSpecs(ctx, p)
	if err != nil {
		d.dropNewTenants(made)
		if stoppedBy(ctx, err) {
			d.log.Warn("reload abandoned: serve is stopping; the previous policy serves the drain", "policy", d.cfg.Policy, "cause", context.Cause(ctx))
			return fmt.Errorf("reload abandoned: %w", context.Cause(ctx))
		}
		d.log.Error("reload: the new policy cannot run here; still serving the previous policy", "policy", d.cfg.Policy, "err", err)
		return err
	}
	if d.tree != nil {
		groups, global, held, err := d.writeBudgets(p, budgets, d.tree.SetBudgets)
		if err != nil {
			d.stopForks(specs)
			d.dropNewTenants(made)
			msg := "reload: cannot write the budgets; still serving the previous policy (budgets written before the failure were put back)"
			if errors.Is(err, cgroup.ErrNotRestored) {
				err = fmt.Errorf("%w (the budgets written before the failure could not all be put back: "+
					"the tree no longer matches the previous policy, which still serves; fix the cause and reload)", err)
				msg = "reload: cannot write the budgets, and undoing the writes failed; still serving the previous policy"
			}
			d.log.Error(msg, "err", err)
			return err
		}
		for i, t := range p.Tenants {
			d.setTenant(t.Name, groups[i])
		}
		d.noteBudgets(budgets, global)
		gen := d.budgetGen.Add(1)
		if len(held) > 0 {
			d.lowerLater(gen, held)
		}
	}
	d.warm(specs)
	s := newSnapshot(p, specs, d.drainLater)
	d.live = append(d.live, s)
	d.addSpecs(s)
	d.admission.Update(d.admissible())
	old = d.current.Swap(s)
	d.retainProfiles()
	var removed []string
	for _, t := range old.policy.Tenants {
		if !s.names(t.Name) {
			removed = append(removed, t.Name)
		}
	}
	d.log.Info("policy reloaded", "policy", d.cfg.Policy, "routes", len(p.Routes), "tenants", len(p.Tenants),
		"removed_tenants", removed, "live_policies", len(d.live), "took", time.Since(start))
	return nil
}

// tenantBudgets is p's tenants' budgets, as the tree writes them.
func tenantBudgets(p *policy.Policy) []cgroup.Budget {
	budgets := make([]cgroup.Budget, len(p.Tenants))
	for i, t := range p.Tenants {
		budgets[i] = cgroup.Budget{Tenant: t.Name, Resources: t.Resources()}
	}
	return budgets
}

// writeBudgets writes the budgets of p (and its global one) with set
// (the tree's SetBudgets), those held back (holdBudgets) at what the
// kernel has, and returns set's groups, the global budget written and
// the held ones. While it writes, admission holds each memory budget to
// the lower of the previous and p's (lowest): a request admitted after
// the check of what is reserved under a budget the write lowers, or
// under one it raises and that the kernel does not have yet (or will
// not, the write failing), would run under a lower limit in the kernel
// than the one it was admitted to. Admission.Hold fails no waiting
// request: the reload's Update after the swap does that, or, when set
// fails, the Update that gives admission its budgets back. Called with
// d.mu held.
func (d *daemon) writeBudgets(p *policy.Policy, budgets []cgroup.Budget,
	set func(*specs.LinuxResources, []cgroup.Budget) ([]*cgroup.Tenant, error)) ([]*cgroup.Tenant, *specs.LinuxResources, []heldBudget, error) {
	before := d.admissible()
	d.admission.Hold(lowest(before, p))
	global := globalResources(p.Global)
	held := d.holdBudgets(p, budgets, &global)
	groups, err := set(global, budgets)
	if err != nil {
		d.admission.Update(before)
		return nil, nil, nil, err
	}
	return groups, global, held, nil
}

// lowest is the admissible policy cur with each memory budget that p
// sets too (the global one, each tenant's) the lower of the two, 0 being
// none.
func lowest(cur, p *policy.Policy) *policy.Policy {
	lower := func(a, b int64) int64 {
		switch {
		case a == 0:
			return b
		case b == 0:
			return a
		}
		return min(a, b)
	}
	out := &policy.Policy{Global: cur.Global}
	out.Global.Memory = lower(cur.Global.Memory, p.Global.Memory)
	for _, t := range cur.Tenants {
		c := *t
		if i := slices.IndexFunc(p.Tenants, func(n *policy.Tenant) bool { return n.Name == t.Name }); i >= 0 {
			c.Memory = lower(t.Memory, p.Tenants[i].Memory)
		}
		out.Tenants = append(out.Tenants, &c)
	}
	return out
}

// heldBudget is a memory budget a reload lowered below what the requests
// admitted under the previous one reserve: the kernel keeps the previous
// one until they fit (lowerLater).
type heldBudget struct {
	tenant string // "" for the global budget
	res    *specs.LinuxResources
	memory int64
}

// holdBudgets keeps, in budgets and *global (what the reload writes), the
// memory budget in the kernel (memWritten: a reload before may have held
// one too) of each tenant (and the global one) whose new one is below the
// memory its requests in flight reserve, and returns the new ones for
// lowerLater. Written at once, the kernel would reclaim and
// then OOM-kill within the tenant's requests in flight, admitted under
// the budget they were given; admission, updated, admits nothing more
// there until they fit. Called with d.mu held.
func (d *daemon) holdBudgets(p *policy.Policy, budgets []cgroup.Budget, global **specs.LinuxResources) []heldBudget {
	stats := d.admission.Stats()
	var held []heldBudget
	for i, t := range p.Tenants {
		reserved := int64(0)
		for _, s := range stats.Tenants {
			if s.Name == t.Name {
				reserved = s.Reserved
			}
		}
		written, ok := d.memWritten[t.Name]
		if t.Memory <= 0 || reserved <= t.Memory || !ok {
			continue // a new tenant reserves nothing
		}
		held = append(held, heldBudget{tenant: t.Name, res: budgets[i].Resources, memory: t.Memory})
		budgets[i].Resources = withMemory(budgets[i].Resources, written)
	}
	if p.Global.Memory > 0 && stats.Reserved > p.Global.Memory {
		held = append(held, heldBudget{res: *global, memory: p.Global.Memory})
		*global = globalResources(policy.Global{Memory: d.memWritten[""]})
	}
	for _, h := range held {
		d.log.Warn("reload: a memory budget lowered below what the requests in flight reserve is written once they fit; "+
			"until then the kernel holds the previous one, and admission the new", "tenant", h.tenant, "memory", policy.FormatBytes(h.memory))
	}
	return held
}

// noteWritten records the memory budgets of tenants and the global one
// as those in the kernel (memWritten). Called with d.mu held (or at
// start-up).
func (d *daemon) noteWritten(tenants []*policy.Tenant, global int64) {
	d.memWritten = map[string]int64{"": global}
	for _, t := range tenants {
		d.memWritten[t.Name] = t.Memory
	}
}

// noteBudgets records the memory budgets a reload wrote (memWritten).
// A tenant it dropped keeps its entry while its group lasts (removeTenant
// deletes it): its budget is still the kernel's, which a reload bringing
// it back before its requests end holds.
func (d *daemon) noteBudgets(budgets []cgroup.Budget, global *specs.LinuxResources) {
	d.memWritten[""] = memoryOf(global)
	for _, b := range budgets {
		d.memWritten[b.Tenant] = memoryOf(b.Resources)
	}
}

// memoryOf is res's memory limit, 0 for none.
func memoryOf(res *specs.LinuxResources) int64 {
	if res == nil || res.Memory == nil || res.Memory.Limit == nil {
		return 0
	}
	return *res.Memory.Limit
}

// withMemory is res with a memory limit of memory (none when 0).
func withMemory(res *specs.LinuxResources, memory int64) *specs.LinuxResources {
	r := *res
	r.Memory = nil
	if memory > 0 {
		r.Memory = &specs.LinuxMemory{Limit: &memory}
	}
	return &r
}

// lowerLater writes the held budgets of the reload gen as the requests
// in flight come to fit them, polling admission (it has no release
// callback), unless a later reload has written budgets since, or serve
// stops.
func (d *daemon) lowerLater(gen uint64, held []heldBudget) {
	d.drains.Go(func() {
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for len(held) > 0 {
			select {
			case <-tick.C:
			case <-d.done:
				return
			}
			if d.budgetGen.Load() != gen {
				return // a later reload wrote the budgets
			}
			stats := d.admission.Stats()
			held = slices.DeleteFunc(held, func(h heldBudget) bool {
				reserved := stats.Reserved
				if h.tenant != "" {
					i := slices.IndexFunc(stats.Tenants, func(s policy.TenantStats) bool { return s.Name == h.tenant })
					if i < 0 {
						return true // gone: nothing to lower
					}
					reserved = stats.Tenants[i].Reserved
				}
				if reserved > h.memory {
					return false
				}
				return d.lowerBudget(gen, h)
			})
		}
	})
}

// lowerBudget writes a held budget, unless a reload after gen wrote the
// budgets; it reports whether it is done with h.
func (d *daemon) lowerBudget(gen uint64, h heldBudget) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.budgetGen.Load() != gen {
		return true
	}
	var err error
	if h.tenant == "" {
		err = d.tree.SetBudget(h.res)
	} else {
		_, err = d.tree.Tenant(h.tenant, h.res)
	}
	if err != nil {
		d.log.Error("write a lowered memory budget once the requests in flight fit it; the previous one stays until the next reload",
			"tenant", h.tenant, "memory", policy.FormatBytes(h.memory), "err", err)
		return true
	}
	d.memWritten[h.tenant] = h.memory
	d.log.Info("lowered memory budget written: the requests in flight fit it", "tenant", h.tenant, "memory", policy.FormatBytes(h.memory))
	return true
}

// dropNewTenants removes the groups a refused reload made for its new
// tenants (cgroup.Tree.AddTenants). No live snapshot names them, and the
// fork routes' groups the reload made in them are gone (buildSpecs and
// stopForks remove them), so they are empty; one that cannot be removed is
// logged and stays until shutdown. Called with d.mu held.
func (d *daemon) dropNewTenants(names []string) {
	for _, name := range names {
		if err := d.tree.RemoveTenant(name); err != nil {
			d.log.Error("reload refused: remove the group it made for a new tenant; it stays until shutdown", "tenant", name, "err", err)
		}
	}
}

// retire waits until each tenant (no longer admitting) has no cell in
// flight and nothing queued, and removes its group. It gives up on a
// tenant that a later reload brought back, on one whose drained group the
// kernel still will not remove after retireBusy (a fork route's group
// left by a preloader that did not end: logged, left for shutdown), and
// on all of them when the daemon shuts down (the tree's teardown removes
// them). Admission has no drain callback, so it polls.
func (d *daemon) retire(tenants []string) { d.retireWith(tenants, d.removeTenant, retireBusy) }

// retireWith is retire with remove for removeTenant and busyFor for
// retireBusy.
func (d *daemon) retireWith(tenants []string, remove func(string) bool, busyFor time.Duration) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	busy := map[string]time.Time{} // since when each drained tenant's group is busy
	for len(tenants) > 0 {
		stats := d.admission.Stats()
		tenants = slices.DeleteFunc(tenants, func(name string) bool {
			if slices.ContainsFunc(stats.Tenants, func(t policy.TenantStats) bool { return t.Name == name }) {
				return d.namedAgain(name) // admitting again: done with; else still draining
			}
			if remove(name) {
				return true
			}
			if since, ok := busy[name]; !ok {
				busy[name] = time.Now()
			} else if time.Since(since) > busyFor {
				d.log.Error("a removed tenant's group is still busy after its cells ended; it stays until shutdown",
					"tenant", name, "waited", busyFor)
				return true
			}
			return false
		})
		if len(tenants) == 0 {
			return
		}
		select {
		case <-tick.C:
		case <-d.done:
			return
		}
	}
}

// retireBusy bounds how long retire retries the removal of a drained
// tenant's group that the kernel calls busy: its last cells are removed
// in milliseconds, off the pool's removers.
const retireBusy = time.Minute

// namedAgain reports whether a live snapshot names the tenant (a later
// reload brought it back).
func (d *daemon) namedAgain(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.named(name)
}

// removeTenant removes a drained tenant's group unless a live snapshot
// names it again; it reports whether the tenant is done with (removed or
// back).
func (d *daemon) removeTenant(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.named(name) {
		return true
	}
	select {
	case <-d.done:
		return true // shutting down: the tree's teardown removes it
	default:
	}
	if err := d.pool.DrainTenant(name); err != nil {
		d.log.Warn("drain a removed tenant's idle cells", "tenant", name, "err", err)
	}
	err := d.tree.RemoveTenant(name)
	if errors.Is(err, cgroup.ErrBusy) {
		return false // its last cells are still being removed: next tick
	}
	if err != nil {
		d.log.Error("remove a removed tenant's group; it stays until shutdown", "tenant", name, "err", err)
		return true
	}
	d.setTenant(name, nil)
	delete(d.memWritten, name)
	d.log.Info("removed tenant drained and its group removed", "tenant", name)
	return true
}

// resolveUser returns the credentials of a route whose user is not Auto
// (nil for Auto). A uid without an account runs with gid. Root needs the
// route's allow_root, checked here again as policy asks.
func resolveUser(r *policy.Route, gid uint32) (*sandbox.Credential, error) {
	u := r.User
	if u.Auto {
		return nil, nil
	}
	var (
		acct *user.User
		err  error
	)
	if u.Name != "" {
		acct, err = user.Lookup(u.Name)
		if err != nil {
			return nil, fmt.Errorf("route %s: user %q: %w", r.Name, u.Name, err)
		}
	} else {
		acct, err = user.LookupId(strconv.FormatUint(uint64(u.UID), 10))
		var unknown user.UnknownUserIdError
		if errors.As(err, &unknown) {
			if u.UID == 0 && !r.AllowRoot {
				return nil, fmt.Errorf("route %s: uid 0 without allow_root", r.Name)
			}
			return &sandbox.Credential{UID: u.UID, GID: gid}, nil
		}
		if err != nil {
			return nil, fmt.Errorf("route %s: uid %d: %w", r.Name, u.UID, err)
		}
	}
	cred, err := accountCredential(acct)
	if err != nil {
		return nil, fmt.Errorf("route %s: %w", r.Name, err)
	}
	if cred.UID == 0 && !r.AllowRoot {
		return nil, fmt.Errorf("route %s: user %q is root (uid 0) without allow_root", r.Name, acct.Username)
	}
	return cred, nil
}
