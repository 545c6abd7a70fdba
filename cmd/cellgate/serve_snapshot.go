package main

import (
	"crypto/sha256"
	"slices"
	"sync/atomic"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
)

// snapshot is one loaded policy as the daemon runs it: its routes, their
// cell specs, and the tenants its routes name. A request holds the
// snapshot it was routed under from Router.Match until it ends, so a
// reload can tell when the last request that may still name a tenant of
// an older policy is gone: that, not a timer, ends the tenant's admission.
type snapshot struct {
	policy *policy.Policy
	specs  map[*policy.Route]*routeSpec

	// refs counts the requests holding the snapshot, plus one while it is
	// the daemon's current snapshot. Reaching 0 is final: drained is called
	// once, and acquire refuses from then on.
	refs    atomic.Int64
	drained func(*snapshot)
}

// newSnapshot returns a snapshot holding the reference of the current
// snapshot; drained is called when it has been replaced and its last
// request has ended.
func newSnapshot(p *policy.Policy, specs map[*policy.Route]*routeSpec, drained func(*snapshot)) *snapshot {
	s := &snapshot{policy: p, specs: specs, drained: drained}
	s.refs.Store(1)
	return s
}

// acquire takes a reference unless the snapshot has drained.
func (s *snapshot) acquire() bool {
	for {
		n := s.refs.Load()
		if n <= 0 {
			return false
		}
		if s.refs.CompareAndSwap(n, n+1) {
			return true
		}
	}
}

// release gives a reference back; the last one calls drained.
func (s *snapshot) release() {
	switch n := s.refs.Add(-1); {
	case n == 0:
		s.drained(s)
	case n < 0:
		panic("cellgate: snapshot released more often than acquired")
	}
}

// names reports whether the snapshot's policy has the tenant.
func (s *snapshot) names(tenant string) bool {
	return slices.ContainsFunc(s.policy.Tenants, func(t *policy.Tenant) bool { return t.Name == tenant })
}

// acquireCurrent returns the current snapshot with a reference taken. A
// snapshot replaced between the load and the acquire may already have
// drained; the load is then retried and finds its successor.
func (d *daemon) acquireCurrent() *snapshot {
	for {
		if s := d.current.Load(); s.acquire() {
			return s
		}
	}
}

// match is the Router: the current policy's routes. The match holds its
// snapshot until release.
func (d *daemon) match(host, method, urlPath string) (*policy.Match, func(), error) {
	s := d.acquireCurrent()
	m, err := s.policy.Match(host, method, urlPath)
	if err != nil {
		s.release()
		return nil, nil, err
	}
	return m, s.release, nil
}

// policyInForce is the digest of the current policy's file content
// (policy.Policy.Digest), whichever load made it current.
func (d *daemon) policyInForce() [sha256.Size]byte { return d.current.Load().policy.Digest }

// routerFunc adapts a function to proxy.Router.
type routerFunc func(host, method, urlPath string) (*policy.Match, func(), error)

func (f routerFunc) Match(host, method, urlPath string) (*policy.Match, func(), error) {
	return f(host, method, urlPath)
}

// admissible is what admission knows while the live snapshots may still
// be named by requests: the newest policy's global budget, and every
// tenant of a live snapshot with its newest budget. Called with d.mu held.
func (d *daemon) admissible() *policy.Policy {
	newest := d.live[len(d.live)-1].policy
	p := &policy.Policy{Global: newest.Global}
	for i := len(d.live) - 1; i >= 0; i-- {
		for _, t := range d.live[i].policy.Tenants {
			if !slices.ContainsFunc(p.Tenants, func(n *policy.Tenant) bool { return n.Name == t.Name }) {
				p.Tenants = append(p.Tenants, t)
			}
		}
	}
	return p
}

// named reports whether a live snapshot names the tenant. Called with d.mu
// held.
func (d *daemon) named(tenant string) bool {
	return slices.ContainsFunc(d.live, func(s *snapshot) bool { return s.names(tenant) })
}

// drainLater is the drained callback: it runs snapshotDrained off the
// goroutine of the request whose release ended the snapshot, which would
// otherwise wait for d.mu, held by a reload for as long as it imports
// fork routes' apps (a minute each, at most), before its answer, record
// and connection were done with.
func (d *daemon) drainLater(s *snapshot) { d.drains.Go(func() { d.snapshotDrained(s) }) }

// snapshotDrained ends a snapshot (drainLater): a replaced snapshot's last
// request has ended. Its tenants that no live snapshot names stop
// admitting and drain (their queued requests and cells finish under their
// last budgets); retire then removes their groups.
func (d *daemon) snapshotDrained(s *snapshot) {
	d.mu.Lock()
	d.live = slices.DeleteFunc(d.live, func(l *snapshot) bool { return l == s })
	for r := range s.specs {
		d.specs.Delete(r)
	}
	var gone []string
	for _, t := range s.policy.Tenants {
		if !d.named(t.Name) {
			gone = append(gone, t.Name)
		}
	}
	d.admission.Update(d.admissible())
	d.retainProfiles()
	unwarm := d.unwarmed(s)
	d.mu.Unlock()
	// Its fork routes' preloaders served their last request: they exit,
	// their route groups go, counted in drains (this runs in one: the
	// counter is above zero), which shutdown waits for before it tears
	// the tree down. Its routes' warm cells go now too, not a minute
	// later: a removed tenant's group waits for them.
	d.drains.Go(func() { d.stopForks(s.specs) })
	for _, rs := range unwarm {
		d.runner.Unwarm(rs.profile, rs.confine)
	}
	if len(gone) == 0 {
		return
	}
	d.log.Info("tenants of a replaced policy no longer admit: draining", "tenants", gone)
	if d.tree != nil {
		go d.retire(gone)
	}
}

// unwarmed returns the specs of s whose confined cells are kept ahead
// (warm, resident) and that no live snapshot shares (a reload that keeps a
// route unchanged keeps its spec). Called with d.mu held.
func (d *daemon) unwarmed(s *snapshot) []*routeSpec {
	if d.runner == nil {
		return nil
	}
	var out []*routeSpec
	for _, rs := range s.specs {
		if rs.confine == nil {
			continue
		}
		shared := slices.ContainsFunc(d.live, func(l *snapshot) bool {
			for _, o := range l.specs {
				if o.profile == rs.profile && o.confine == rs.confine {
					return true
				}
			}
			return false
		})
		if !shared {
			out = append(out, rs)
		}
	}
	return out
}

// retainProfiles has the pool keep pre-creating cells only for the
// profiles of the live snapshots' routes: a reload that changes a route's
// limits gives it a new profile, and the old one's idle cells (each
// holding fds, each counted by --max-cells) would otherwise stay until
// shutdown. Called with d.mu held, so that a reload cannot warm a profile
// between the listing and the drop.
func (d *daemon) retainProfiles() {
	if d.pool == nil {
		return
	}
	var keep []*cgroup.Profile
	for _, s := range d.live {
		for _, rs := range s.specs {
			keep = append(keep, rs.profile)
		}
	}
	d.pool.Retain(keep)
}
