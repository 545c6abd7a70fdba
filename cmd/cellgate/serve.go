package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
)

// exitServeFailed is serve's status when it could not start or did not
// stop cleanly (cells or groups left behind).
const exitServeFailed = 1

// serveMain is `cellgate serve`: settings from flags and CELLGATE_*, one
// validated config, then the daemon until SIGTERM or SIGINT.
func serveMain(ctx context.Context, args []string, std stdio) int {
	cfg, err := loadServeConfig(args, std.environ, std.out)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintln(std.err, err)
		return exitUsage
	}
	// systemd's sockets, made close-on-exec before anything is spawned
	// (the preflight's checks start processes).
	inherited := inheritedFiles()
	if cfg.Preflight {
		if status := preflight(cfg.Shared, std.err); status != exitOK {
			return status
		}
	}
	if err := serve(ctx, cfg, std, inherited); err != nil {
		fmt.Fprintf(std.err, "cellgate serve: %v\n", err)
		return exitServeFailed
	}
	return exitOK
}

// daemon is one running `cellgate serve`: the state that outlives a
// request and is swapped by a reload.
type daemon struct {
	cfg       *serveConfig
	log       *slog.Logger
	tree      *cgroup.Tree // nil with --isolation=none
	pool      *cgroup.Pool // nil with --isolation=none
	admission *policy.Admission

	// current is the snapshot new requests are routed under.
	current atomic.Pointer[snapshot]

	mu sync.Mutex // serializes reloads, snapshot and tenant group changes
	// tenants are the tenant groups, by name. Guarded by tenantsMu, which
	// writers take inside mu and the metrics and /status alone: a scrape
	// never waits for a reload (which holds mu while it starts preloaders).
	tenantsMu sync.Mutex
	tenants   map[string]*cgroup.Tenant
	// live are the snapshots not yet drained, oldest first; the last is
	// current. Guarded by mu.
	live []*snapshot
	// specs holds the routeSpec of every route of a live snapshot
	// (*policy.Route -> *routeSpec), for cellSpec to read without mu;
	// written with live.
	specs sync.Map

	// warmCells has the runner set confined cells of a route up ahead
	// (nil with --isolation=none).
	warmCells func(*cgroup.Profile, *confine.Prepared)

	ready atomic.Bool
	done  chan struct{} // closed when the daemon starts shutting down

	// logFiles are the log files SIGUSR1 reopens (the access log when it
	// is a file).
	logFiles []*logFile

	runner *sandbox.Runner // nil with --isolation=none
	// goInit: confined cells' init is cellgate itself (no cellgate-init),
	// which cannot run a program as root of a user namespace.
	goInit bool
	// rootUIDs are the host uids that uid 0 of the user namespaces of
	// routes run as root are (rootMap), by route name: one of the range
	// each, the one the name hashes to (sandbox.Runner.ReserveUIDFor: the
	// same from one start to the next, so that the program's files stay
	// its own), reserved at the route's first load and held for the
	// daemon's life, so that a reload keeps it. Written by buildSpecs:
	// at start-up, before any reload, then under mu.
	rootUIDs map[string]uint32
	// strays reaps the zombies orphaned in serve's PID namespace when serve
	// is its init (serve_strays.go); nil otherwise.
	strays *sandbox.StrayReaper
	// forkMu guards the fork routes' stopped flags, forks (every fork
	// route's preloader from its start until its counters are folded into
	// retiredForks, stopping ones included) and retiredForks, the counters
	// of preloaders stopped, by route: the metrics read them under forkMu
	// alone, so that a preloader's counters never dip while it stops and a
	// scrape never waits for a reload.
	forkMu       sync.Mutex
	forks        map[*forkSpec]struct{}
	retiredForks map[string]accounting.PreloaderStats
	// budgetGen counts the reloads that wrote budgets (written under
	// mu): a lowering held back by one (lowerLater) is dropped once
	// another has come. memWritten is the memory budget in the kernel, by
	// tenant ("" the global one; 0 none) whose group is there, which a
	// reload holds (holdBudgets); under mu.
	budgetGen  atomic.Uint64
	memWritten map[string]int64
	// drains counts the replaced snapshots' ends (snapshotDrained) under
	// way, off the requests that ended them (drainLater).
	drains sync.WaitGroup
}

// routeSpec is what a route's cells are started with, built once per route
// (at start-up or reload), off the hot path.
type routeSpec struct {
	profile *cgroup.Profile
	user    *sandbox.Credential
	gid     uint32            // the tenant's gid, 0 for the shared one
	confine *confine.Prepared // nil with --isolation=none or for a fork route
	err     error             // the route's user could not be resolved
	fork    *forkSpec         // a fork route's preloader and route group; nil for cgi
	// forkConfine is a fork route's plan, applied by its preloader and
	// each child (nil with --isolation=none or for a cgi route).
	forkConfine *confine.Prepared
	// root is the user namespace its program, run as root, is root of
	// (daemon.rootMap); nil: the host's root, or not run as root.
	root *confine.RootMap
}

// serve runs the daemon until ctx ends or SIGTERM/SIGINT, then drains;
// inherited are the sockets systemd passed (inheritedFiles).
func serve(ctx context.Context, cfg *serveConfig, std stdio, inherited []*os.File) (err error) {
	log := slog.New(slog.NewTextHandler(std.err, &slog.HandlerOptions{Level: slog.Level(cfg.LogLevel)}))
	d := &daemon{cfg: cfg, log: log, tenants: map[string]*cgroup.Tenant{}, done: make(chan struct{}),
		forks: map[*forkSpec]struct{}{}, retiredForks: map[string]accounting.PreloaderStats{}}

	// Signals first: a SIGTERM during start-up must not kill the process
	// before it has removed what it created.
	sigs := newServeSignals()
	sigs.notify()
	defer sigs.stopNotify()
	stopping, endWatch := sigs.watchStop(ctx)
	defer endWatch()
	d.strays = newStrayReaper(log, os.Getpid())

	accessLog, accessFile, err := openAccessLog(cfg.AccessLog, std.out)
	if err != nil {
		return err
	}
	if accessFile != nil {
		defer accessFile.Close()
		d.logFiles = append(d.logFiles, accessFile)
	}

	pol, err := policy.Load(cfg.Policy)
	if err != nil {
		return fmt.Errorf("%w (check it with cellgate check %s)", err, cfg.Policy)
	}
	bi := buildVersion()
	log.Info("cellgate starting", "version", bi.Version, "commit", bi.Commit, "go", bi.GoVersion)
	log.Info("policy loaded", "policy", cfg.Policy, "routes", len(pol.Routes), "tenants", len(pol.Tenants))

	var runner proxy.Runner
	switch cfg.Isolation {
	case isolationNone:
		log.Warn("*** --isolation=none: workers run as plain child processes of cellgate, with NO cgroup, NO memory, CPU or process limit, " +
			"NO per-cell uid and NO kernel accounting. This is the benchmark baseline; never serve real traffic like this. ***")
		runner = &proxy.PlainExec{}
	default:
		// oerr, not err: the deferred close below joins its error to
		// serve's own (a := of err in this clause would make a new one,
		// and the close's error would go nowhere).
		r, closeCells, oerr := d.openCells(ctx, pol)
		if oerr != nil {
			return oerr
		}
		defer func() {
			if cerr := closeCells(); cerr != nil {
				err = errors.Join(err, cerr)
			}
		}()
		runner = r
	}
	specs, err := d.buildSpecs(stopping, pol)
	if err != nil {
		if stoppedBy(stopping, err) {
			log.Info("stopped during start-up: a fork route's import abandoned, nothing served", "cause", context.Cause(stopping))
			return nil
		}
		return err
	}
	d.warm(specs)
	d.startPolicy(pol, specs)

	reg := prometheus.NewRegistry()
	metrics, err := d.registerMetrics(reg)
	if err != nil {
		return err
	}
	srv, err := proxy.New(cfg.proxyConfig(), proxy.Deps{
		Runner:    runner,
		Router:    routerFunc(d.match),
		Admitter:  d.admission,
		AccessLog: accessLog,
		Metrics:   metrics,
		Logger:    log,
		LookupEnv: os.LookupEnv,
		CellSpec:  d.cellSpec,
	})
	if err != nil {
		return fmt.Errorf("front: %w", err)
	}
	controlRefused := newControlRefused()
	for _, c := range append(append(connCounters(srv), spoolGauges(srv)...), controlRefused) {
		if err := reg.Register(c); err != nil {
			return fmt.Errorf("register metrics: %w", err)
		}
	}
	lns, err := openListeners(cfg, inherited)
	if err != nil {
		return err
	}
	admin := newAdminServer(adminHandler(accounting.AdminHandler(reg, d.readiness, d.statusFunc(srv, time.Now())), cfg.AdminPprof, cfg.adminHosts),
		log, defaultAdminLimits)
	served := make(chan error, len(lns.public)+len(lns.admin))
	for _, ln := range lns.public {
		go func() { served <- fmt.Errorf("public listener %s: %w", ln.Addr(), srv.Serve(ln)) }()
	}
	for _, ln := range lns.admin {
		go func() { served <- fmt.Errorf("admin listener %s: %w", ln.Addr(), admin.Serve(ln)) }()
		if adminExposed(ln.Addr()) {
			log.Warn("the admin listener is not on a loopback address: /metrics and /status (requests in flight, hosts, paths, "+
				"client addresses) are served without authentication to whoever can reach it; bind it to 127.0.0.1 or firewall it",
				"admin", ln.Addr().String())
		}
	}
	for _, w := range cfg.rateWarnings() {
		log.Warn(w)
	}
	// The control socket listens before READY=1: a reload asked for as
	// soon as systemd (or a test) sees the daemon ready must find it.
	reloads := newReloadRequests() // the control socket's and the poller's
	stop := make(chan struct{})    // ends the helpers below when serve returns
	defer close(stop)
	if d.strays != nil {
		go d.strays.Run(stop)
	}
	if ctl, err := listenControl(log, reloads, controlRefused, d.done, stop); err != nil {
		log.Warn("no control socket: `cellgate reload` cannot reach this daemon; SIGHUP still reloads", "err", err)
	} else {
		defer ctl.close()
		go ctl.serve()
	}
	d.ready.Store(true)
	log.Info("serving", "listen", lns.public[0].Addr().String(), "admin", lns.admin[0].Addr().String(), "isolation", string(cfg.Isolation),
		"tls", cfg.TLSCert != "", "socket_activated", lns.activated)
	notify := newNotifier(log)
	notify.ready(d.status())
	go notify.run(stop, d.status)
	if cfg.PolicyPoll > 0 {
		tick := time.NewTicker(cfg.PolicyPoll)
		defer tick.Stop()
		go newPolicyPoller(cfg.Policy, log, cfg.PolicyPoll, d.policyInForce).run(stop, tick.C, reloads)
	}

	serveErr := d.loop(stopping, sigs, reloads, served, func(ctx context.Context) error { return d.reloadNotified(ctx, notify) })
	endWatch() // the signals are the drain's now
	notify.stopping("draining: stopped accepting, waiting for the requests in flight", cfg.DrainTimeout, d.teardownBound())
	return errors.Join(serveErr, d.shutdown(srv, admin.Server, sigs))
}

// shutdown stops accepting, lets the requests in flight finish for up to
// the drain timeout (a second SIGTERM or SIGINT cuts it short), then kills
// the cells still running, and stops the admin listener last.
func (d *daemon) shutdown(srv *proxy.Server, admin *http.Server, sigs *serveSignals) error {
	d.ready.Store(false)
	close(d.done)
	ctx, cancel := context.WithTimeout(context.Background(), d.cfg.DrainTimeout)
	defer cancel()
	go func() {
		for {
			select {
			case <-sigs.usr1:
				d.reopenLogs()
			case s := <-sigs.stop:
				d.log.Warn("second signal: killing the cells in flight now", "signal", s.String())
				cancel()
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	start := time.Now()
	err := srv.Shutdown(ctx)
	d.drains.Wait() // the replaced policies' ends, which the last requests started
	if err != nil {
		d.log.Warn("drain ended before every request finished: their cells were killed", "err", err, "after", time.Since(start))
		err = nil // the killed requests were answered and logged; not a failure of serve
	} else {
		d.log.Info("drained", "after", time.Since(start))
	}
	actx, acancel := context.WithTimeout(context.Background(), time.Second)
	defer acancel()
	if aerr := admin.Shutdown(actx); aerr != nil {
		admin.Close()
	}
	return err
}

// startPolicy makes the start-up policy the current snapshot and sets up
// admission with its budgets.
func (d *daemon) startPolicy(pol *policy.Policy, specs map[*policy.Route]*routeSpec) {
	d.noteWritten(pol.Tenants, pol.Global.Memory)
	d.admission = policy.NewAdmission(pol, nil)
	d.live = []*snapshot{newSnapshot(pol, specs, d.drainLater)}
	d.addSpecs(d.live[0])
	d.current.Store(d.live[0])
}

// readiness is /readyz: ready while serving, not while starting or
// draining, nor while cells cannot be created (the cgroup tree is gone,
// or the last cell creation failed).
func (d *daemon) readiness() error {
	if !d.ready.Load() {
		return errors.New("starting or draining")
	}
	if d.tree != nil {
		return d.tree.Health()
	}
	return nil
}

// openCells opens the cgroup tree (moving the daemon into
// <base>/supervisor when the base is its own group), creates a group per
// tenant with its budget, starts the pool and the runner. The returned
// close tears it all down: every cell killed, every group removed.
func (d *daemon) openCells(ctx context.Context, pol *policy.Policy) (proxy.Runner, func() error, error) {
	cfg := d.cfg
	opts := cgroup.Options{Unenforced: cfg.Unenforced, MaxCells: cfg.MaxCells, Logger: d.log, ProbeSpawn: spawnSelf}
	if cfg.CgroupBase != "" {
		mount, err := cgroup2Mount()
		if err != nil {
			return nil, nil, err
		}
		opts.Base, _ = cfg.Shared.base(mount, "cellgate-serve")
	}
	if len(cfg.Unenforced) > 0 {
		d.log.Warn("*** --unenforced: limits of these controllers are NOT enforced when the kernel lacks them; cells say so in the access log ***",
			"controllers", cfg.Unenforced)
	}
	tree, err := cgroup.Open(ctx, opts)
	if errors.Is(err, cgroup.ErrBaseInUse) {
		return nil, nil, fmt.Errorf("cgroup tree: %w", err)
	}
	if err != nil {
		return nil, nil, fmt.Errorf("cgroup tree: %w (run cellgate doctor)", err)
	}
	d.tree = tree
	d.pool = cgroup.NewPool(tree, cgroup.PoolOptions{Logger: d.log})
	var runner *sandbox.Runner
	d.warmCells = func(prof *cgroup.Profile, plan *confine.Prepared) { runner.Warm(prof, plan) }
	var launcher *confine.Launcher
	closeAll := func() error {
		var errs []error
		d.stopAllForks()
		if runner != nil {
			errs = append(errs, runner.Close())
		}
		if launcher != nil {
			errs = append(errs, launcher.Close())
		}
		if err := d.pool.Close(); err != nil {
			// The cells it could not remove are the tree's to remove
			// next: its Close says what is left.
			d.log.Warn("close the cell pool", "err", err)
		}
		errs = append(errs, tree.Close())
		if err := errors.Join(errs...); err != nil {
			return fmt.Errorf("tear down the cgroup tree %s: %w", tree.Base(), err)
		}
		d.log.Info("cgroup tree removed", "base", tree.Base())
		return nil
	}
	fail := func(err error) (proxy.Runner, func() error, error) {
		return nil, nil, errors.Join(err, closeAll())
	}
	if err := tree.SetBudget(globalResources(pol.Global)); err != nil {
		return fail(fmt.Errorf("global budget (%s:%d): %w", pol.Source, pol.Global.Line, err))
	}
	for _, t := range pol.Tenants {
		g, err := tree.Tenant(t.Name, t.Resources())
		if err != nil {
			return fail(fmt.Errorf("tenant %s (%s:%d): %w", t.Name, pol.Source, t.Line, err))
		}
		d.setTenant(t.Name, g)
	}
	def, err := cgroup.NewProfile(policy.DefaultTenant, pol.Defaults.Resources())
	if err != nil {
		return fail(fmt.Errorf("default limits of %s: %w", pol.Source, err))
	}
	launcher, self, err := openLauncher(cfg.Init)
	if err != nil {
		return fail(fmt.Errorf("cell init: %w", err))
	}
	if self {
		d.log.Warn("no "+confine.InitArg0+" beside the cellgate executable and no --init: confined cells start cellgate itself as their init, "+
			"which costs its whole start-up per request; install "+confine.InitArg0+" (make build) beside cellgate", "init", launcher.Name())
	}
	if err := mountSetattrErr(); err != nil {
		d.log.Warn("mount_setattr is refused: binds in cells are made without the host's mounts below them, which cells do not see; "+
			"to show them, run on Linux 5.12 or later under a seccomp profile that allows mount_setattr (deploy/seccomp/cellgate.json does)", "err", err)
	}
	runner, err = sandbox.New(sandbox.Config{
		Cells:          sandbox.PoolCells{Pool: d.pool},
		Logger:         d.log,
		Profile:        def,
		UIDs:           sandbox.UIDRange(cfg.UIDs),
		GID:            cfg.GID,
		Launcher:       launcher,
		WarmCells:      cfg.WarmCells,
		ResidentCells:  residentCells(cfg.ResidentCells, launcher.GoInit()), // the Go init has no resident mode
		MountTemplates: cfg.MountTemplates && !launcher.GoInit(),            // nor a template mode
		InitSpawner:    cfg.InitSpawner && !launcher.GoInit(),               // nor a spawner mode
		NetNamespaces:  cfg.NetNamespaces,
	})
	if err != nil {
		return fail(fmt.Errorf("sandbox: %w", err))
	}
	d.runner, d.goInit = runner, launcher.GoInit()
	return runner, closeAll, nil
}

// residentCells is --resident-cells, or 0 with the Go init, which has no
// resident mode.
func residentCells(n int, goInit bool) int {
	if goInit {
		return 0
	}
	return n
}

// globalResources is the policy's global budget as the limits of cells/:
// its memory.max. nil (no global memory budget) clears it.
func globalResources(g policy.Global) *specs.LinuxResources {
	if g.Memory <= 0 {
		return nil
	}
	m := g.Memory
	return &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: &m}}
}

// hostProblems is a policy refused for what the host has or lacks (a
// program, a user, a group's members, a mount's files): invalid today,
// and valid once the host changes, with no change of the file. The
// policy poller retries such a reload; an error of the file's own (its
// syntax, its values) waits for the file to change.
type hostProblems struct{ error }

func (e *hostProblems) Unwrap() error { return e.error }

// buildSpecs builds every route's profile and credentials, and starts the
// preloader of every fork route (an app that fails to import fails here,
// with its traceback; what was started is stopped again). With cells it
// checks each profile against the tree: a controller a route needs and the
// kernel lacks fails here, not on the first request. The end of ctx (serve
// stopping) abandons a fork route's import under way, and the build.
func (d *daemon) buildSpecs(ctx context.Context, pol *policy.Policy) (map[*policy.Route]*routeSpec, error) {
	specs := make(map[*policy.Route]*routeSpec, len(pol.Routes))
	fail := func(r *policy.Route, err error) (map[*policy.Route]*routeSpec, error) {
		d.stopForks(specs)
		return nil, fmt.Errorf("route %s (%s:%d): %w", r.Name, pol.Source, r.Line, err)
	}
	hidden := daemonFiles(d.cfg.Policy, d.cfg.TLSKey) // once per load: the policy may be a symlink switched between loads
	for _, r := range pol.Routes {
		rs := d.newRouteSpec(pol, r, hidden)
		if rs.profile == nil {
			return fail(r, rs.err)
		}
		specs[r] = rs
	}
	// A route that can never work refuses the policy (routecheck.go).
	err := verifyRoutes(pol, func(r *policy.Route) (sandbox.Credential, error) { return d.routeCredential(pol, r, specs[r]) })
	var views []routeView // what each route's cells see, with cells
	if d.cfg.Isolation != isolationNone {
		views = routeViews(pol, resolvePath)
		err = withProblems(err, verifyGIDs(pol, d.cfg.GID, groupFile))
		err = withProblems(err, verifyWritableMounts(pol, views))
	}
	if err != nil {
		return nil, &hostProblems{err}
	}
	for _, w := range exposedDaemonFiles(pol, views, hidden, d.cfg.GID) {
		d.log.Warn("a file of serve's is readable by cells: " + w)
	}
	for _, w := range rootSetuidMounts(views, mountedNosuid) {
		d.log.Warn(w)
	}
	for _, r := range pol.Routes { // in the file's order, as check lists them
		if rs := specs[r]; rs.confine != nil {
			for _, w := range dirProgramsHidden(rs.confine.Plan(), r) {
				d.log.Warn("a program of a dir route is not in its cells' view: " + w)
			}
		}
	}
	if d.tree == nil || !d.tree.Features().HugeTLBClosed {
		for _, w := range hugetlbfsMounts(views, hugetlbfsIn()) {
			d.log.Warn(w)
		}
	}
	for _, r := range pol.Routes {
		rs := specs[r]
		if d.tree != nil {
			if err := d.tree.Check(rs.profile); err != nil {
				return fail(r, fmt.Errorf("%w (run cellgate doctor)", err))
			}
		}
		if r.Fork != nil {
			f, err := d.startFork(ctx, pol, r, rs.profile, rs.forkConfine)
			if err != nil {
				return fail(r, err)
			}
			rs.fork, rs.profile = f, f.base
		}
	}
	return specs, nil
}

// routeCredential is who the cells of a route run as: with
// --isolation=none cellgate's own credentials (workers are plain
// children), else the route's user or a per-cell uid with its tenant's
// gid (cellGID).
func (d *daemon) routeCredential(pol *policy.Policy, r *policy.Route, rs *routeSpec) (sandbox.Credential, error) {
	if rs.err != nil {
		return sandbox.Credential{}, rs.err
	}
	if d.cfg.Isolation == isolationNone {
		return selfCredential()
	}
	if rs.root != nil {
		// What its files on the host are open to.
		return sandbox.Credential{UID: rs.root.UID, GID: rs.root.GID}, nil
	}
	return cellCredential(rs.user, sandbox.UIDRange(d.cfg.UIDs), cellGID(pol, r, d.cfg.GID))
}

// rootMap returns the user namespace of a route whose program runs as
// root (user, its credentials, is uid 0): root there is one uid of the
// range, reserved for the route (rootUIDs), with the cells' gid
// (confine.Plan.RootMap). nil for any other route, a fork route (its
// preloader has a user namespace of its own) and one with
// host_namespaces: [user].
func (d *daemon) rootMap(pol *policy.Policy, r *policy.Route, user *sandbox.Credential) (*confine.RootMap, error) {
	if !ownRootNS(r, user) {
		return nil, nil
	}
	if d.goInit {
		return nil, confine.ErrUserNSNeedsCInit
	}
	uid, ok := d.rootUIDs[r.Name]
	if !ok {
		var err error
		if uid, err = d.runner.ReserveUIDFor("root of route " + r.Name); err != nil {
			return nil, fmt.Errorf("user: root: a uid of the range for root of its user namespace: %w", err)
		}
		if d.rootUIDs == nil {
			d.rootUIDs = map[string]uint32{}
		}
		d.rootUIDs[r.Name] = uid
	}
	return &confine.RootMap{UID: uid, GID: cellGID(pol, r, d.cfg.GID)}, nil
}

// warm starts pre-creating cells for every route's profile, so that the
// first requests do not pay for mkdir and the limit writes, and (with
// --warm-cells) setting confined cells up ahead.
func (d *daemon) warm(specs map[*policy.Route]*routeSpec) {
	if d.pool == nil {
		return
	}
	for r, rs := range specs {
		if err := d.pool.Warm(rs.profile); err != nil {
			d.log.Warn("warm cells for a route; its cells will be created on demand", "route", r.Name, "err", err)
		}
		if rs.confine != nil && d.warmCells != nil {
			d.warmCells(rs.profile, rs.confine)
		}
	}
}

// newRouteSpec converts a route's limits, user and confinement. A nil
// profile means the limits or the confinement were refused (err says why).
func (d *daemon) newRouteSpec(pol *policy.Policy, r *policy.Route, hidden []string) *routeSpec {
	res := r.Resources
	// A user that does not resolve fails the route's requests, not the
	// policy (err below).
	user, userErr := resolveUser(r, d.cfg.GID)
	var plan, forkPlan *confine.Prepared
	var root *confine.RootMap
	if d.cfg.Isolation != isolationNone {
		var err error
		if root, err = d.rootMap(pol, r, user); err != nil {
			return &routeSpec{err: err}
		}
		p, err := routeConfinement(r, hidden, root)
		if err != nil {
			return &routeSpec{err: err}
		}
		// A fork route's cells hold no init: its preloader applies the
		// plan to itself and has each child set up the rest.
		if r.Fork != nil {
			forkPlan = p
		} else {
			plan, res = p, withInitPids(res)
		}
	}
	prof, err := cgroup.NewProfile(r.Tenant, res)
	if err != nil {
		return &routeSpec{err: fmt.Errorf("cell limits: %w", err)}
	}
	if plan != nil && r.Confinement.ReusedGroups {
		prof = prof.Reused() // its resident requests hand their groups on
	}
	err = userErr
	if err == nil && user != nil && plan != nil {
		err = plan.CheckRunAs(user.UID)
	}
	return &routeSpec{profile: prof, user: user, gid: tenantGID(pol, r), confine: plan, forkConfine: forkPlan, root: root, err: err}
}

// cellSpec is proxy.Deps.CellSpec: the route's profile and credentials,
// built with the snapshot the route belongs to (a request holds it, see
// match), found without a lock. Specs are built when a policy is loaded,
// never on a request's path: a route of no live snapshot means the request
// did not hold its snapshot, and is refused.
func (d *daemon) cellSpec(r *policy.Route, spec *sandbox.Spec) error {
	v, ok := d.specs.Load(r)
	if !ok {
		return fmt.Errorf("route %s: no live policy snapshot holds it", r.Name)
	}
	rs := v.(*routeSpec)
	if rs.err != nil {
		return rs.err
	}
	spec.Profile, spec.User, spec.GID, spec.Confine = rs.profile, rs.user, rs.gid, rs.confine
	if rs.fork != nil {
		spec.Preloader = rs.fork.preloader
	}
	return nil
}

// addSpecs makes a snapshot's route specs visible to cellSpec; it is
// called as the snapshot joins live.
func (d *daemon) addSpecs(s *snapshot) {
	for r, rs := range s.specs {
		d.specs.Store(r, rs)
	}
}

// registerMetrics registers the per-request metrics, the admission gauges,
// the tenant totals read from the tenant groups, and the Go runtime's.
func (d *daemon) registerMetrics(reg *prometheus.Registry) (*accounting.Metrics, error) {
	m, err := accounting.NewMetrics(reg)
	if err != nil {
		return nil, err
	}
	cs := []prometheus.Collector{
		collectors.NewGoCollector(),
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		accounting.NewAdmissionCollector(d.admissionStats),
		buildInfoCollector(buildVersion()),
	}
	if d.tree != nil {
		cs = append(cs, accounting.NewTenantTotalsCollector(d.tenantTotals))
		cs = append(cs, accounting.NewPreloaderCollector(d.preloaderStats))
		cs = append(cs, d.poolCounters()...)
	}
	if d.runner != nil {
		cs = append(cs, runnerCounters(d.runner)...)
	}
	if d.strays != nil {
		cs = append(cs, strayCounter(d.strays))
	}
	for _, c := range cs {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register metrics: %w", err)
		}
	}
	return m, nil
}

// poolCounters export the cell pool's counters: how often a request found
// a pre-created cell (hit), one a request before it had used (reused,
// groups: reused) or had one created on its own path (miss), and the
// background removals.
func (d *daemon) poolCounters() []prometheus.Collector {
	counter := func(name, help string, labels prometheus.Labels, f func(cgroup.PoolStats) uint64) prometheus.Collector {
		return prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: name, Help: help, ConstLabels: labels},
			func() float64 { return float64(f(d.pool.Stats())) })
	}
	const gets = "Cells taken from the pool: hit = pre-created, reused = used by a request before (groups: reused), miss = created on the request's path."
	return []prometheus.Collector{
		counter("pool_gets_total", gets, prometheus.Labels{"result": "hit"}, func(s cgroup.PoolStats) uint64 { return s.Hits }),
		counter("pool_gets_total", gets, prometheus.Labels{"result": "reused"}, func(s cgroup.PoolStats) uint64 { return s.Reused }),
		counter("pool_gets_total", gets, prometheus.Labels{"result": "miss"}, func(s cgroup.PoolStats) uint64 { return s.Misses }),
		counter("pool_create_errors_total", "Cell creations that failed.", nil, func(s cgroup.PoolStats) uint64 { return s.CreateErrors }),
		counter("pool_removed_total", "Used cells removed.", nil, func(s cgroup.PoolStats) uint64 { return s.Removed }),
		counter("pool_remove_errors_total", "Cell removals that failed (left for the next start-up sweep).", nil, func(s cgroup.PoolStats) uint64 { return s.RemoveErrors }),
	}
}

// runnerCounters export the work of confined cells done off the
// request's path: teardowns running in the background now, how often
// a request found a warm cell or a network namespace made ahead (hit) or
// made its own (miss), and how many of those namespaces were reused.
func runnerCounters(r *sandbox.Runner) []prometheus.Collector {
	pair := func(name, help string, f func() (uint64, uint64)) []prometheus.Collector {
		var cs []prometheus.Collector
		for i, res := range []string{"hit", "miss"} {
			cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: name, Help: help,
				ConstLabels: prometheus.Labels{"result": res}}, func() float64 {
				hits, misses := f()
				return float64([]uint64{hits, misses}[i])
			}))
		}
		return cs
	}
	cs := []prometheus.Collector{prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "cellgate", Name: "cell_teardowns",
		Help: "Confined cells being torn down in the background after their response (at most sandbox.DefaultTeardowns)."},
		func() float64 { return float64(r.TeardownsPending()) })}
	cs = append(cs, pair("warm_cells_total", "Confined requests that found a warm cell (hit) or set theirs up (miss).", r.WarmStats)...)
	cs = append(cs, pair("mount_templates_total", "Confined cells that started from their route's mount template (hit) or built their own view, none being fresh (miss).", r.TemplateStats)...)
	cs = append(cs, pair("netns_ahead_total", "Confined cells that found a network namespace made ahead (hit) or made their own (miss).", r.NetnsStats)...)
	cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: "netns_reused_total",
		Help: "Confined cells whose network namespace made ahead an earlier cell of their tenant had used (counted in netns_ahead_total's hits too)."},
		func() float64 { return float64(r.NetnsReused()) }))
	for _, why := range sandbox.ResidentEndReasons() {
		cs = append(cs, prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: "resident_ended_total",
			Help:        "Resident cells ended, by why: unclean (a request left what the init cannot end), root (a program ran as the host's root), sockets (left in the cell's network namespace), aged (served their time), surplus (the route had enough), failed (the init died or failed).",
			ConstLabels: prometheus.Labels{"reason": why.String()}}, func() float64 { return float64(r.ResidentEnded(why)) }))
	}
	return cs
}

// connCounters export the front's connections: open now, and refused by
// the caps (--max-conns, --max-conns-per-ip) before any handler ran, which
// the access log never sees.
func connCounters(srv *proxy.Server) []prometheus.Collector {
	const refused = "Client connections refused by a connection cap, before any request was read."
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "cellgate", Name: "connections_open", Help: "Client connections open now."},
			func() float64 { return float64(srv.ConnStats().Open) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: "connections_refused_total", Help: refused,
			ConstLabels: prometheus.Labels{"cap": "total"}}, func() float64 { return float64(srv.ConnStats().RefusedTotal) }),
		prometheus.NewCounterFunc(prometheus.CounterOpts{Namespace: "cellgate", Name: "connections_refused_total", Help: refused,
			ConstLabels: prometheus.Labels{"cap": "per_ip"}}, func() float64 { return float64(srv.ConnStats().RefusedPerIP) }),
	}
}

// spoolGauges export the bytes that the spools of requests and responses
// hold now, in memory and in files under --temp-dir (bounded by
// --spool-memory and --spool-disk).
func spoolGauges(srv *proxy.Server) []prometheus.Collector {
	const help = "Bytes held now by the spools of request bodies and responses."
	return []prometheus.Collector{
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "cellgate", Name: "spool_bytes", Help: help,
			ConstLabels: prometheus.Labels{"where": "memory"}}, func() float64 { return float64(srv.SpoolStats().Memory) }),
		prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: "cellgate", Name: "spool_bytes", Help: help,
			ConstLabels: prometheus.Labels{"where": "disk"}}, func() float64 { return float64(srv.SpoolStats().Disk) }),
	}
}

// admissionStats converts admission's snapshot for the collector.
func (d *daemon) admissionStats() []accounting.AdmissionStats {
	s := d.admission.Stats()
	out := make([]accounting.AdmissionStats, len(s.Tenants))
	for i, t := range s.Tenants {
		out[i] = accounting.AdmissionStats{Tenant: t.Name, InFlight: t.InFlight, Queued: t.Queued, ReservedBytes: t.Reserved}
	}
	return out
}

// setTenant records a tenant's group; nil forgets the tenant.
func (d *daemon) setTenant(name string, g *cgroup.Tenant) {
	d.tenantsMu.Lock()
	defer d.tenantsMu.Unlock()
	if g == nil {
		delete(d.tenants, name)
		return
	}
	d.tenants[name] = g
}

// tenantTotals reads every tenant group's counters from the kernel. A
// group removed since the list was copied (a tenant a reload dropped) is
// left out, neither an error nor zeros; the totals of the groups read are
// returned with the errors of the others.
func (d *daemon) tenantTotals() ([]accounting.TenantTotals, error) {
	d.tenantsMu.Lock()
	groups := make([]*cgroup.Tenant, 0, len(d.tenants))
	for _, g := range d.tenants {
		groups = append(groups, g)
	}
	d.tenantsMu.Unlock()
	var errs []error
	out := make([]accounting.TenantTotals, 0, len(groups))
	for _, g := range groups {
		s, err := g.Stats()
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			d.log.Warn("read tenant totals", "tenant", g.Name(), "path", g.Path(), "err", err)
			errs = append(errs, err)
			continue
		}
		out = append(out, accounting.TenantTotals{
			Tenant: g.Name(), CPUUsageUsec: s.CPUUsageUsec, CPUUserUsec: s.CPUUserUsec, CPUSystemUsec: s.CPUSystemUsec,
			ThrottledUsec: s.ThrottledUsec, MemoryCurrent: s.MemoryCurrent, OOM: s.OOM, OOMKill: s.OOMKill,
			OOMGroupKill: s.OOMGroupKill, MemoryMax: s.MemoryMax, Missing: s.Missing,
		})
	}
	return out, errors.Join(errs...)
}

// openAccessLog returns the access logger writing JSON records to dest:
// "stdout" (out), "stderr" or a file opened for appending, which is
// returned too (SIGUSR1 reopens it).
func openAccessLog(dest string, out io.Writer) (*slog.Logger, *logFile, error) {
	switch dest {
	case "stdout":
		return slog.New(accounting.NewJSONHandler(out)), nil, nil
	case "stderr":
		return slog.New(accounting.NewJSONHandler(os.Stderr)), nil, nil
	}
	f, err := openLogFile(dest)
	if err != nil {
		return nil, nil, fmt.Errorf("access log --access-log=%s: %w", dest, err)
	}
	return slog.New(accounting.NewJSONHandler(f)), f, nil
}

// reopenLogs is SIGUSR1: every log file is opened again by name.
func (d *daemon) reopenLogs() {
	if err := reopenAll(d.logFiles); err != nil {
		d.log.Error("SIGUSR1: reopen log files", "err", err)
		return
	}
	d.log.Info("SIGUSR1: log files reopened", "files", len(d.logFiles))
}
