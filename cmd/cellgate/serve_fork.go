package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Bounds of a fork route's preloader.
const (
	// defaultForkChildren is how many requests of a fork route may run at
	// once (uids mapped into its preloader's user namespace) when neither
	// its tenant nor the policy caps cells; the kernel allows 340 lines
	// per uid_map.
	defaultForkChildren = 64
	maxForkChildren     = 256
	// forkStopTimeout bounds a preloader's exit after its socket closed,
	// and the removal of its route group.
	forkStopTimeout = 5 * time.Second
)

// forkSpec is a fork route's running parts, owned by the snapshot whose
// route it serves: uids reserved from the range, its route group, and
// its preloader.
type forkSpec struct {
	route     string
	release   func() // gives the uids back
	group     *cgroup.RouteGroup
	base      *cgroup.Profile // the route's cell profile in the route group
	preloader *sandbox.Preloader
	stopped   bool // guarded by daemon.forkMu
}

// startFork sets up a fork route: uids for the preloader (its own and one
// per request in flight), a route group under the tenant with the
// preloader's memory limit, and the preloader, started through the
// Runner's spawn path, confined by plan unless it is nil. It returns once
// the app is imported; an app that fails to import is an error carrying its
// traceback. The end of ctx (serve stopping) abandons the import.
func (d *daemon) startFork(ctx context.Context, pol *policy.Policy, r *policy.Route, prof *cgroup.Profile, plan *confine.Prepared) (*forkSpec, error) {
	if d.runner == nil {
		return nil, fmt.Errorf("driver fork needs cells (--isolation=none runs plain processes only)")
	}
	n := forkChildren(pol, r)
	uids, release, err := d.runner.ReserveUIDs(n + 1)
	if err != nil {
		return nil, fmt.Errorf("%w (widen --uid-range)", err)
	}
	pm := r.Fork.PreloadMemory
	group, err := d.tree.NewRouteGroup(r.Tenant, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &pm}}, uids[0])
	if err != nil {
		release()
		return nil, fmt.Errorf("route group: %w (run cellgate doctor)", err)
	}
	cellProf, err := group.Profile(prof)
	if err != nil {
		d.dropGroup(group, release)
		return nil, err
	}
	wait := sandbox.DefaultPreloadWait
	for _, t := range pol.Tenants {
		if t.Name == r.Tenant && t.QueueTimeout > 0 {
			wait = t.QueueTimeout
		}
	}
	pre, err := d.runner.StartPreloader(ctx, sandbox.PreloaderConfig{
		Route:        r.Name,
		Python:       r.Fork.Python,
		App:          r.Fork.App,
		AppDir:       r.Fork.AppDir,
		Env:          preloaderEnv(r),
		Group:        preloadGroup{group},
		Owner:        uids[0],
		ChildUIDs:    uids[1:],
		GID:          d.cfg.GID,
		RecycleAfter: r.Fork.RecycleAfter,
		WaitReady:    wait,
		Confine:      plan,
	})
	if err != nil {
		d.dropGroup(group, release)
		return nil, err
	}
	f := &forkSpec{route: r.Name, release: release, group: group, base: cellProf, preloader: pre}
	d.forkMu.Lock()
	d.forks[f] = struct{}{}
	d.forkMu.Unlock()
	return f, nil
}

// preloadGroup is a route group's preload group as a preloader takes it:
// each instance in a group of its own below it.
type preloadGroup struct{ rg *cgroup.RouteGroup }

func (g preloadGroup) NewInstance() (sandbox.InstanceGroup, error) {
	c, err := g.rg.NewInstance()
	if err != nil {
		return nil, err // not a nil *cgroup.Cell in an interface
	}
	return c, nil
}

// forkChildren is how many requests of the route may be in flight: its
// tenant's max_cells, else the policy's, else defaultForkChildren, at most
// maxForkChildren.
func forkChildren(pol *policy.Policy, r *policy.Route) int {
	n := pol.Global.MaxCells
	for _, t := range pol.Tenants {
		if t.Name == r.Tenant && t.MaxCells > 0 {
			n = t.MaxCells
		}
	}
	if n <= 0 {
		n = defaultForkChildren
	}
	return min(n, maxForkChildren)
}

// preloaderEnv is the preloader's environment: the route's env and
// pass_env, and PATH (the route's or proxy.DefaultPath), as a request of
// the route gets them.
func preloaderEnv(r *policy.Route) []string {
	env := append([]string(nil), r.Env...)
	hasPath := false
	for _, kv := range r.Env {
		hasPath = hasPath || strings.HasPrefix(kv, "PATH=")
	}
	for _, name := range r.PassEnv {
		if v, ok := os.LookupEnv(name); ok {
			env = append(env, name+"="+v)
			hasPath = hasPath || name == "PATH"
		}
	}
	if !hasPath {
		env = append(env, "PATH="+proxy.DefaultPath)
	}
	return env
}

// stopFork stops a fork route's preloader, removes its idle cells and its
// route group (killing what is left in it), and gives its uids back once
// the group is gone. Requests of its snapshot must have ended.
func (d *daemon) stopFork(f *forkSpec) {
	d.forkMu.Lock()
	if f.stopped {
		d.forkMu.Unlock()
		return
	}
	f.stopped = true
	d.forkMu.Unlock()
	f.preloader.Close(forkStopTimeout)
	d.forkMu.Lock()
	st := f.preloader.Stats()
	prev := d.retiredForks[f.route]
	prev.Restarts += st.Restarts
	prev.Recycles += st.Recycles
	prev.Retries += st.Retries
	d.retiredForks[f.route] = prev
	delete(d.forks, f) // in the same critical section: counted once, always
	d.forkMu.Unlock()
	d.pool.DrainProfile(f.base)
	d.dropGroup(f.group, f.release)
}

// dropGroup removes a fork route's group and gives its uids back, unless
// the group could not be removed: a process of the route (its preloader,
// a subprocess of its import, a request) may still run under them, and
// another route must not get them.
func (d *daemon) dropGroup(g *cgroup.RouteGroup, release func()) {
	ctx, cancel := context.WithTimeout(context.Background(), forkStopTimeout)
	defer cancel()
	if err := g.Remove(ctx); err != nil {
		d.log.Error("remove a fork route's group; left for shutdown", "group", g.Path(), "err", err)
		return
	}
	release()
}

// stopForks stops the fork routes of specs.
func (d *daemon) stopForks(specs map[*policy.Route]*routeSpec) {
	for _, rs := range specs {
		if rs.fork != nil {
			d.stopFork(rs.fork)
		}
	}
}

// stopAllForks stops the fork routes of every live snapshot (shutdown,
// after the drain).
func (d *daemon) stopAllForks() {
	d.mu.Lock()
	live := append([]*snapshot(nil), d.live...)
	d.mu.Unlock()
	for _, s := range live {
		d.stopForks(s.specs)
	}
}

// preloaderStats sums each route's preloaders: those running (stopping
// included) and those stopped. It takes forkMu alone: a reload starting
// preloaders under mu does not hold a scrape up.
func (d *daemon) preloaderStats() []accounting.PreloaderStats {
	d.forkMu.Lock()
	defer d.forkMu.Unlock()
	by := map[string]*accounting.PreloaderStats{}
	get := func(route string) *accounting.PreloaderStats {
		if by[route] == nil {
			by[route] = &accounting.PreloaderStats{Route: route}
		}
		return by[route]
	}
	for route, st := range d.retiredForks {
		s := get(route)
		s.Restarts, s.Recycles, s.Retries = st.Restarts, st.Recycles, st.Retries
	}
	for f := range d.forks {
		st := f.preloader.Stats()
		s := get(st.Route)
		s.Restarts += st.Restarts
		s.Recycles += st.Recycles
		s.Retries += st.Retries
		if st.Ready && !f.stopped {
			s.Ready++
		}
	}
	out := make([]accounting.PreloaderStats, 0, len(by))
	for _, s := range by {
		out = append(out, *s)
	}
	return out
}
