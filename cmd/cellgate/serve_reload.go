package main

import (
	"errors"
	"fmt"
	"os/user"
	"slices"
	"strconv"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// reload re-reads the policy file (SIGHUP). An invalid file, or one whose
// limits the kernel cannot enforce, leaves the running policy in place and
// says why. A valid one takes over for requests routed from now on:
//
//  1. the global budget is written to cells/, groups of new tenants are
//     created and every tenant's budget written;
//  2. admission takes the new budgets, still knowing the removed tenants,
//     so a request routed to one just before the swap is admitted under its
//     old budget;
//  3. the route table and the routes' cell profiles are swapped atomically;
//  4. after retireGrace, removed tenants stop admitting and drain: their
//     cells finish under the limits they started with, then their groups
//     are removed (retire).
//
// Requests in flight keep the route, limits and admission reservation they
// started with; none is dropped.
func (d *daemon) reload() {
	d.mu.Lock()
	defer d.mu.Unlock()
	start := time.Now()
	old := d.policy.Load()
	p, err := policy.Load(d.cfg.Policy)
	if err != nil {
		d.log.Error("reload: the policy file is invalid; still serving the previous policy", "policy", d.cfg.Policy, "err", err)
		return
	}
	specs, err := d.buildSpecs(p)
	if err != nil {
		d.log.Error("reload: the new policy cannot run here; still serving the previous policy", "policy", d.cfg.Policy, "err", err)
		return
	}
	if d.tree != nil {
		if err := d.tree.SetBudget(globalResources(p.Global)); err != nil {
			d.log.Error("reload: cannot write the global budget; still serving the previous policy", "err", err)
			return
		}
		for _, t := range p.Tenants {
			g, err := d.tree.Tenant(t.Name, t.Resources())
			if err != nil {
				d.log.Error("reload: cannot set up a tenant group; still serving the previous policy "+
					"(budgets of tenants already written stay)", "tenant", t.Name, "err", err)
				return
			}
			d.tenants[t.Name] = g
		}
	}
	var removed []*policy.Tenant
	for _, t := range old.Tenants {
		if !slices.ContainsFunc(p.Tenants, func(n *policy.Tenant) bool { return n.Name == t.Name }) {
			removed = append(removed, t)
		}
	}
	d.warm(specs)
	d.admission.Update(&policy.Policy{Global: p.Global, Tenants: append(slices.Clone(p.Tenants), removed...)})
	d.specs.Store(&specs)
	d.policy.Store(p)
	names := make([]string, len(removed))
	for i, t := range removed {
		names[i] = t.Name
	}
	d.log.Info("policy reloaded", "policy", d.cfg.Policy, "routes", len(p.Routes), "tenants", len(p.Tenants),
		"removed_tenants", names, "took", time.Since(start))
	go d.retire(p, names)
}

// retire ends the grace of the tenants a reload removed, waits until each
// has no cell in flight and nothing queued, and removes its group. It
// gives up on a tenant that a later reload brought back, and on all of
// them when the daemon shuts down (the tree's teardown removes them).
func (d *daemon) retire(p *policy.Policy, tenants []string) {
	select {
	case <-time.After(retireGrace):
	case <-d.done:
		return
	}
	d.mu.Lock()
	if d.policy.Load() == p {
		d.admission.Update(p)
	}
	d.mu.Unlock()
	if len(tenants) == 0 || d.tree == nil {
		return
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for len(tenants) > 0 {
		select {
		case <-tick.C:
		case <-d.done:
			return
		}
		stats := d.admission.Stats()
		tenants = slices.DeleteFunc(tenants, func(name string) bool {
			if slices.ContainsFunc(stats.Tenants, func(t policy.TenantStats) bool { return t.Name == name }) {
				return false // still draining
			}
			return d.removeTenant(name)
		})
	}
}

// removeTenant removes a drained tenant's group unless the current policy
// has it again; it reports whether the tenant is done with (removed or
// back).
func (d *daemon) removeTenant(name string) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if slices.ContainsFunc(d.policy.Load().Tenants, func(t *policy.Tenant) bool { return t.Name == name }) {
		return true
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
	delete(d.tenants, name)
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
	uid, err := strconv.ParseUint(acct.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("route %s: user %q has uid %q: %w", r.Name, acct.Username, acct.Uid, err)
	}
	g, err := strconv.ParseUint(acct.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("route %s: user %q has gid %q: %w", r.Name, acct.Username, acct.Gid, err)
	}
	if uid == 0 && !r.AllowRoot {
		return nil, fmt.Errorf("route %s: user %q is root (uid 0) without allow_root", r.Name, acct.Username)
	}
	cred := &sandbox.Credential{UID: uint32(uid), GID: uint32(g)}
	ids, err := acct.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("route %s: groups of user %q: %w", r.Name, acct.Username, err)
	}
	for _, id := range ids {
		if n, err := strconv.ParseUint(id, 10, 32); err == nil && uint32(n) != cred.GID {
			cred.Groups = append(cred.Groups, uint32(n))
		}
	}
	return cred, nil
}
