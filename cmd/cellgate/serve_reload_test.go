package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	specs "github.com/opencontainers/runtime-spec/specs-go"
)

const (
	// reloadPolicyA has tenants web and extra; reloadPolicyB drops extra
	// and its route.
	reloadPolicyA = `version: 1
tenants:
  - {name: web, memory: 1Gi, queue: 10, queue_timeout: 60s}
  - {name: extra, memory: 256Mi, queue: 10, queue_timeout: 60s}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: /bin/true}
  - {name: extra, match: {path: /extra}, tenant: extra, program: /bin/true}
`
	reloadPolicyB = `version: 1
tenants:
  - {name: web, memory: 768Mi, queue: 10, queue_timeout: 60s}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: /bin/true}
`
)

// testDaemon is a daemon with --isolation=none (no cgroup tree) serving
// the policy text, which the test rewrites before calling reload.
func testDaemon(t *testing.T, text string) (*daemon, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, text)
	d := &daemon{
		cfg:     &serveConfig{Policy: path, Isolation: isolationNone},
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		tenants: map[string]*cgroup.Tenant{},
		done:    make(chan struct{}),
	}
	t.Cleanup(func() { close(d.done) })
	pol, err := policy.Load(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	specs, err := d.buildSpecs(context.Background(), pol)
	if err != nil {
		t.Fatalf("specs of %s: %v", path, err)
	}
	d.startPolicy(pol, specs)
	return d, path
}

func writeFile(t *testing.T, path, text string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(text), 0o644); err != nil {
		t.Fatal(err)
	}
}

// admit admits one request of the route's tenant and releases it at once.
func admit(d *daemon, r *policy.Route) error {
	release, _, err := d.admission.Admit(context.Background(), r.Tenant, r.Memory)
	if err == nil {
		release()
	}
	return err
}

// TestReloadKeepsRoutedTenant: a request routed to tenant extra before a
// reload that drops extra is admitted however long it takes to get to
// admission (a slow upload), and extra stops admitting as soon as that
// request has ended. Before snapshots, a removed tenant admitted for a
// fixed second after the reload, then this admission failed with
// ErrUnknownTenant.
func TestReloadKeepsRoutedTenant(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	m, release, err := d.match("example.com", "POST", "/extra")
	if err != nil {
		t.Fatalf("match /extra: %v", err)
	}
	writeFile(t, path, reloadPolicyB)
	d.reload(context.Background())
	if _, _, err := d.match("example.com", "POST", "/extra"); !errors.Is(err, policy.ErrNoRoute) {
		t.Errorf("match /extra after the reload: %v, want ErrNoRoute", err)
	}
	// Longer than the timed grace (1s) the daemon used to give removed
	// tenants: nothing may depend on how long the request takes now.
	time.Sleep(1500 * time.Millisecond)
	if err := admit(d, m.Route); err != nil {
		t.Fatalf("admission of the request routed to extra before the reload: %v, want admitted", err)
	}
	if err := admit(d, m.Route); err != nil {
		t.Fatalf("second admission (a local redirect's cell) of the same request: %v, want admitted", err)
	}
	release()
	d.drains.Wait() // the snapshot's end, off the request (drainLater)
	if err := admit(d, m.Route); !errors.Is(err, policy.ErrUnknownTenant) {
		t.Errorf("admission to extra after the last request routed to it ended: %v, want ErrUnknownTenant", err)
	}
	d.mu.Lock()
	live := len(d.live)
	d.mu.Unlock()
	if live != 1 || d.current.Load().refs.Load() != 1 {
		t.Errorf("%d live snapshots, current has %d references; want 1 and 1 (no request left)", live, d.current.Load().refs.Load())
	}
}

// TestReloadTenantBack: a tenant dropped and then brought back by later
// reloads keeps admitting when the requests of the snapshots in between
// end out of order.
func TestReloadTenantBack(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	mA, releaseA, err := d.match("example.com", "GET", "/extra")
	if err != nil {
		t.Fatalf("match /extra: %v", err)
	}
	writeFile(t, path, reloadPolicyB)
	d.reload(context.Background())
	_, releaseB, err := d.match("example.com", "GET", "/hello")
	if err != nil {
		t.Fatalf("match /hello: %v", err)
	}
	writeFile(t, path, reloadPolicyA)
	d.reload(context.Background())
	releaseA()
	releaseB()
	if err := admit(d, mA.Route); err != nil {
		t.Errorf("admission to extra, back in the current policy: %v", err)
	}
	for _, ts := range d.admission.Stats().Tenants {
		if ts.Draining {
			t.Errorf("tenant %s drains although the current policy has it: %+v", ts.Name, ts)
		}
	}
}

// TestReloadConcurrentMatches: requests routed while reloads swap the
// policy (under -race): each is admitted, and when all have ended only the
// current snapshot is live.
func TestReloadConcurrentMatches(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 200 {
				m, release, err := d.match("example.com", "GET", "/hello")
				if err != nil {
					errs <- err
					return
				}
				if err := admit(d, m.Route); err != nil {
					errs <- err
					release()
					return
				}
				release()
			}
		}()
	}
	for i := range 20 {
		writeFile(t, path, []string{reloadPolicyB, reloadPolicyA}[i%2])
		d.reload(context.Background())
	}
	wg.Wait()
	d.drains.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("request during reloads: %v", err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.live) != 1 || d.live[0] != d.current.Load() || d.current.Load().refs.Load() != 1 {
		t.Errorf("after the requests ended: %d live snapshots, current has %d references; want 1 and 1", len(d.live), d.current.Load().refs.Load())
	}
}

// TestCellSpecAcrossReload: a request routed before a reload gets its
// route's spec as built with its snapshot (not one converted again), and
// the replaced snapshot's specs are let go when its last request ends.
func TestCellSpecAcrossReload(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	m, release, err := d.match("example.com", "GET", "/extra")
	if err != nil {
		t.Fatalf("match /extra: %v", err)
	}
	built := d.current.Load().specs[m.Route]
	writeFile(t, path, reloadPolicyB)
	d.reload(context.Background())
	var spec sandbox.Spec
	if err := d.cellSpec(m.Route, &spec); err != nil {
		t.Fatalf("cellSpec of a route of the replaced policy: %v", err)
	}
	if spec.Profile != built.profile {
		t.Errorf("cellSpec gave profile %p, want the one built with the route's snapshot %p", spec.Profile, built.profile)
	}
	release()
	d.drains.Wait()
	if _, ok := d.specs.Load(m.Route); ok {
		t.Error("the drained snapshot's route spec is still held")
	}
	hello, releaseHello, err := d.match("example.com", "GET", "/hello")
	if err != nil {
		t.Fatalf("match /hello: %v", err)
	}
	defer releaseHello()
	if _, ok := d.specs.Load(hello.Route); !ok {
		t.Error("the current snapshot's route spec is not held")
	}
}

// cellsDaemon is a daemon with cells on this host's cgroup2 (a private
// base, every controller unenforced, so that it runs where cgroup2 has
// none), serving the policy text. It skips without root or cgroup2.
func cellsDaemon(t *testing.T, text string) (*daemon, string) {
	t.Helper()
	if os.Geteuid() != 0 {
		t.Skip("cells need root")
	}
	mount, err := cgroup2Mount()
	if err != nil {
		t.Skipf("cells need cgroup2: %v", err)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, text)
	d := &daemon{
		cfg:     &serveConfig{Policy: path, Isolation: isolationCells},
		log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
		tenants: map[string]*cgroup.Tenant{},
		done:    make(chan struct{}),
	}
	tree, err := cgroup.Open(t.Context(), cgroup.Options{
		Mount:      mount,
		Base:       filepath.Join(mount, fmt.Sprintf("cellgate-test-%d", os.Getpid())),
		Unenforced: []string{"memory", "cpu", "pids"},
	})
	if err != nil {
		t.Skipf("cgroup tree on %s: %v", mount, err)
	}
	d.tree = tree
	d.pool = cgroup.NewPool(tree, cgroup.PoolOptions{Logger: d.log})
	t.Cleanup(func() {
		close(d.done)
		if err := d.pool.Close(); err != nil {
			t.Error(err)
		}
		if err := tree.Close(); err != nil {
			t.Error(err)
		}
	})
	pol, err := policy.Load(path)
	if err != nil {
		t.Fatalf("load %s: %v", path, err)
	}
	for _, tn := range pol.Tenants {
		g, err := tree.Tenant(tn.Name, tn.Resources())
		if err != nil {
			t.Fatalf("tenant %s: %v", tn.Name, err)
		}
		d.tenants[tn.Name] = g
	}
	specs, err := d.buildSpecs(context.Background(), pol)
	if err != nil {
		t.Fatalf("specs of %s: %v", path, err)
	}
	d.startPolicy(pol, specs)
	d.warm(specs)
	return d, path
}

// TestReloadDropsReplacedProfilesCells: each reload that changes a route's
// limits gives it a new cell profile; once the replaced policy has no
// request left, the old profile's idle cells are removed. They used to
// stay until shutdown (4 cells and their fds per reload), and with
// --max-cells the leftovers left no room for the current route's cells.
func TestReloadDropsReplacedProfilesCells(t *testing.T) {
	const tmpl = `version: 1
tenants:
  - {name: web, memory: 1Gi}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: /bin/true, memory: %dMi}
`
	d, path := cellsDaemon(t, fmt.Sprintf(tmpl, 64))
	dir := filepath.Join(d.tree.CellsPath(), "web")
	idle := func() int {
		ents, _ := os.ReadDir(dir)
		n := 0
		for _, e := range ents {
			if e.IsDir() {
				n++
			}
		}
		return n
	}
	want := 4 // PoolOptions.MaxIdle's default, for the one live profile
	waitFor(t, fmt.Sprintf("%d idle cells under %s", want, dir), func() bool { return idle() == want })
	for i := range 3 {
		writeFile(t, path, fmt.Sprintf(tmpl, 65+i))
		if err := d.reload(context.Background()); err != nil {
			t.Fatalf("reload %d: %v", i, err)
		}
		waitFor(t, fmt.Sprintf("after reload %d, %d idle cells under %s (have %d)", i, want, dir, idle()),
			func() bool { return idle() == want })
	}
}

// TestBuildSpecsRefusesMissingSource: a confined route whose mount source
// or rootfs does not exist is refused at load, naming the route, the key
// and the path, instead of each of its requests failing with a 502.
func TestBuildSpecsRefusesMissingSource(t *testing.T) {
	for _, tc := range []struct{ name, keys, want string }{
		{"mount", "mounts: [{source: /nonexistent-cellgate, target: /data}]", "mounts: source /nonexistent-cellgate (bound at /data): no such file or directory (fix: create it"},
		{"rootfs", "rootfs: /nonexistent-cellgate", "rootfs /nonexistent-cellgate: no such file or directory (fix: create it"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			writeFile(t, path, "version: 1\nroutes:\n  - {name: hello, match: {path: /}, program: /bin/true, "+tc.keys+"}\n")
			pol, err := policy.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			d := &daemon{cfg: &serveConfig{Policy: path, Isolation: isolationCells}, log: slog.New(slog.DiscardHandler)}
			_, err = d.buildSpecs(context.Background(), pol)
			if err == nil || !strings.Contains(err.Error(), "route hello (") || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("buildSpecs: %v, want an error naming route hello and %q", err, tc.want)
			}
		})
	}
}

// TestScrapeDuringReload: the metrics' tenant totals and preloader
// counters, and /status's tenant memory, are read while a reload holds the
// daemon's lock (as it does while it starts a fork route's preloaders,
// seconds for a large app). Before, both took that lock: a scrape waited
// for the reload, and the scraper's timeout failed it.
func TestScrapeDuringReload(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA)
	d.forks = map[*forkSpec]struct{}{}
	d.mu.Lock()
	defer d.mu.Unlock()
	done := make(chan struct{})
	go func() {
		defer close(done)
		d.preloaderStats()
		d.tenantTotals()
	}()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("the metrics' readers wait for the daemon's lock a reload holds")
	}
}

// TestRefusedReloadLeavesNoNewTenant: a reload that brings a new tenant
// with a fork route and is refused once the route's group is made (here:
// its preloader cannot start, the runner having no launcher for a
// confined one) leaves no group of that tenant. Starting the fork route
// made the tenant's group (for the route's group) before the budgets were
// written, and nothing removed it: it stayed, without a budget, until
// shutdown.
func TestRefusedReloadLeavesNoNewTenant(t *testing.T) {
	d, path := cellsDaemon(t, reloadPolicyB)
	def, err := cgroup.NewProfile(policy.DefaultTenant, nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := sandbox.New(sandbox.Config{Cells: sandbox.PoolCells{Pool: d.pool}, Logger: d.log, Profile: def})
	if err != nil {
		t.Fatalf("sandbox: %v", err)
	}
	t.Cleanup(func() { r.Close() })
	d.runner = r
	app := t.TempDir()
	openToCells(t, app)
	writeFile(t, path, `version: 1
tenants:
  - {name: web, memory: 768Mi}
  - {name: fresh, memory: 1Gi}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: /bin/true}
  - {name: app, match: {path: /app}, tenant: fresh, driver: fork, runtime: python-wsgi, app: "hello:app", app_dir: `+app+`, filesystem: host}
`)
	err = d.reload(context.Background())
	if err == nil || !strings.Contains(err.Error(), "preloader of route app") {
		t.Fatalf("reload of a fork route whose preloader cannot start: %v, want it refused", err)
	}
	if dir := filepath.Join(d.tree.CellsPath(), "fresh"); exists(dir) {
		t.Errorf("the refused reload left the group of its new tenant fresh: %s", dir)
	}
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// TestLastRequestDoesNotWaitForReload: the request whose end ends a
// replaced policy returns at once though a reload holds the daemon's lock
// (for as long as it imports fork routes' apps): the policy's end runs
// off it. Before, its answer, record and connection waited for the
// reload.
func TestLastRequestDoesNotWaitForReload(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	_, release, err := d.match("example.com", "GET", "/extra")
	if err != nil {
		t.Fatalf("match /extra: %v", err)
	}
	writeFile(t, path, reloadPolicyB)
	if err := d.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	d.mu.Lock() // a reload under way
	released := make(chan struct{})
	go func() { release(); close(released) }()
	select {
	case <-released:
	case <-time.After(10 * time.Second):
		d.mu.Unlock()
		<-released
		t.Fatal("the last request of the replaced policy waited for the reload's lock")
	}
	d.mu.Unlock()
	d.drains.Wait()
	d.mu.Lock()
	defer d.mu.Unlock()
	if len(d.live) != 1 {
		t.Errorf("%d live policies once the replaced one's last request ended, want 1", len(d.live))
	}
}

// TestRetireGivesUpOnATenantBack: retire, given a tenant a later reload
// brought back, returns: before, admission's stats listed it (admitting
// again), which retire took for still draining, and it polled until
// shutdown.
func TestRetireGivesUpOnATenantBack(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	writeFile(t, path, reloadPolicyB)
	if err := d.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, reloadPolicyA) // extra is back
	if err := d.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{})
	go func() { d.retire([]string{"extra"}); close(returned) }()
	select {
	case <-returned:
	case <-time.After(10 * time.Second):
		t.Error("retire still polls a tenant the current policy has again")
	}
}

// TestHoldBudgets: a reload's memory budget below what the tenant's
// requests in flight reserve is written as the previous one, and held for
// later; one they fit, a new tenant's, and one without a memory budget
// are written as they are.
func TestHoldBudgets(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA) // web: 1Gi, extra: 256Mi
	release, _, err := d.admission.Admit(context.Background(), "web", 600<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	p, err := policy.Parse("p.yaml", []byte(`version: 1
tenants:
  - {name: web, memory: 512Mi}
  - {name: extra, memory: 128Mi}
  - {name: new, memory: 64Mi}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: /bin/true}
`))
	if err != nil {
		t.Fatal(err)
	}
	budgets := tenantBudgets(p)
	var global *specs.LinuxResources
	held := d.holdBudgets(p, budgets, &global)
	if len(held) != 1 || held[0].tenant != "web" || held[0].memory != 512<<20 || *held[0].res.Memory.Limit != 512<<20 {
		t.Fatalf("held %+v, want web's 512 MiB alone (600 MiB reserved)", held)
	}
	for i, want := range []int64{1 << 30, 128 << 20, 64 << 20} {
		if got := *budgets[i].Resources.Memory.Limit; got != want {
			t.Errorf("%s's budget written now: %d, want %d", budgets[i].Tenant, got, want)
		}
	}
	// A second reload of the same file, the requests still in flight,
	// holds web's at what the kernel has, 1 GiB, not the policy in
	// force's 512 MiB (which would OOM-kill them).
	d.noteBudgets(budgets, global)
	d.current.Store(newSnapshot(p, map[*policy.Route]*routeSpec{}, d.drainLater)) // the reload's swap
	budgets = tenantBudgets(p)
	if held := d.holdBudgets(p, budgets, &global); len(held) != 1 || *budgets[0].Resources.Memory.Limit != 1<<30 {
		t.Errorf("second reload: held %+v, web's budget written %d; want it held at 1 GiB", held, *budgets[0].Resources.Memory.Limit)
	}
}

func mustParse(t *testing.T, text string) *policy.Policy {
	t.Helper()
	p, err := policy.Parse("p.yaml", []byte(text))
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TestHoldBudgetsTenantBack: a tenant a reload dropped, whose requests
// still run, brought back by the next reload with a lower memory budget
// has it held at what its group has in the kernel. Before, the dropped
// tenant's entry went with the first reload, the second took it for new,
// and wrote the lower budget under its requests.
func TestHoldBudgetsTenantBack(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA) // extra: 256Mi
	release, _, err := d.admission.Admit(context.Background(), "extra", 200<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	dropped := mustParse(t, reloadPolicyB)
	d.noteBudgets(tenantBudgets(dropped), nil) // the reload that drops extra
	back := mustParse(t, strings.Replace(reloadPolicyA, "{name: extra, memory: 256Mi", "{name: extra, memory: 64Mi", 1))
	budgets := tenantBudgets(back)
	var global *specs.LinuxResources
	held := d.holdBudgets(back, budgets, &global)
	if len(held) != 1 || held[0].tenant != "extra" || *budgets[1].Resources.Memory.Limit != 256<<20 {
		t.Errorf("held %+v, extra's budget written %d; want extra held at its 256 MiB (200 MiB reserved)", held, *budgets[1].Resources.Memory.Limit)
	}
}

// TestWriteBudgetsAdmissionFirst: while a reload writes its budgets,
// admission holds each memory budget to the lower of the previous one and
// the reload's (a request admitted meanwhile under the higher would run
// under a lower limit in the kernel than it was admitted to: one the
// write lowers, or one it raises and fails to write), fails no request
// waiting in a queue for it, and has its previous budgets back when the
// write fails.
func TestWriteBudgetsAdmissionFirst(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA) // web: 1Gi
	webBudget := func() int64 {
		for _, s := range d.admission.Stats().Tenants {
			if s.Name == "web" {
				return s.Budget.Memory
			}
		}
		return -1
	}
	var atWrite int64
	set := func(err error) func(*specs.LinuxResources, []cgroup.Budget) ([]*cgroup.Tenant, error) {
		return func(_ *specs.LinuxResources, b []cgroup.Budget) ([]*cgroup.Tenant, error) {
			atWrite = webBudget()
			if err != nil {
				return nil, err
			}
			return make([]*cgroup.Tenant, len(b)), nil
		}
	}
	write := func(p *policy.Policy, err error) error {
		d.mu.Lock()
		defer d.mu.Unlock()
		_, _, _, err = d.writeBudgets(p, tenantBudgets(p), set(err))
		return err
	}
	refused := errors.New("the kernel refused")

	// 300 MiB in flight, 800 MiB waiting for them: more than the lowered
	// budget, which a reload refused must not fail.
	release, _, err := d.admission.Admit(context.Background(), "web", 300<<20)
	if err != nil {
		t.Fatal(err)
	}
	waited := make(chan error, 1)
	go func() {
		rel, _, err := d.admission.Admit(context.Background(), "web", 800<<20)
		if err == nil {
			rel()
		}
		waited <- err
	}()
	for deadline := time.Now().Add(time.Minute); d.admission.Stats().Queued == 0; time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("the 800 MiB request is not waiting a minute on: %+v", d.admission.Stats())
		}
	}
	lower := mustParse(t, reloadPolicyB) // web: 768Mi
	if err := write(lower, refused); err == nil || atWrite != 768<<20 || webBudget() != 1<<30 {
		t.Errorf("a lowering refused: err %v, admission's budget for web at the write %d and after %d; want an error, 768 MiB, then 1 GiB again",
			err, atWrite, webBudget())
	}
	release()
	if err := <-waited; err != nil {
		t.Errorf("the request waiting across a refused reload: %v, want it admitted", err)
	}

	higher := mustParse(t, strings.Replace(reloadPolicyB, "memory: 768Mi", "memory: 2Gi", 1))
	if err := write(higher, refused); err == nil || atWrite != 1<<30 || webBudget() != 1<<30 {
		t.Errorf("a raise refused: err %v, admission's budget for web at the write %d and after %d; want an error, 1 GiB twice", err, atWrite, webBudget())
	}
	if err := write(lower, nil); err != nil || atWrite != 768<<20 || webBudget() != 768<<20 {
		t.Errorf("a lowering written: err %v, admission's budget for web at the write %d and after %d; want none, 768 MiB twice", err, atWrite, webBudget())
	}
}

// TestLowerLaterSuperseded: a held lowering whose requests never come to
// fit it ends once a later reload has written the budgets, not at
// shutdown (one poller more for each lowering a reload raised again).
func TestLowerLaterSuperseded(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA)
	release, _, err := d.admission.Admit(context.Background(), "web", 900<<20)
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	gen := d.budgetGen.Add(1)
	d.lowerLater(gen, []heldBudget{{tenant: "web", memory: 512 << 20}})
	d.budgetGen.Add(1) // the next reload
	ended := make(chan struct{})
	go func() { d.drains.Wait(); close(ended) }()
	select {
	case <-ended:
	case <-time.After(time.Minute):
		t.Error("the superseded lowering still polls a minute after the next reload")
	}
}

// TestRetireGivesUpOnABusyGroup: a drained tenant whose group the kernel
// keeps calling busy (a fork route's group a preloader that did not end
// left) is given up after the bound, logged, not polled until shutdown.
func TestRetireGivesUpOnABusyGroup(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	writeFile(t, path, reloadPolicyB) // extra dropped: not admitting, nothing in flight
	if err := d.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	returned := make(chan struct{})
	go func() {
		d.retireWith([]string{"extra"}, func(string) bool { return false }, 300*time.Millisecond)
		close(returned)
	}()
	select {
	case <-returned:
	case <-time.After(time.Minute):
		t.Error("retire still polls a busy group a minute on")
	}
}
