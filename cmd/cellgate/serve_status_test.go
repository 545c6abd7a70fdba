package main

import (
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/proxy"
)

// A running request's cell figures come from its cgroup now; a figure the
// cgroup does not have (memory controller off) and a cell already gone
// are null, never 0.
func TestStatusRequestLiveFigures(t *testing.T) {
	now := time.Now()
	cell := t.TempDir()
	writeFile(t, filepath.Join(cell, "cpu.stat"), "usage_usec 4200\nuser_usec 4000\nsystem_usec 200\n")
	base := proxy.InFlight{RequestID: "r", Route: "api", Tenant: "acme", State: proxy.StateRunning,
		Arrived: now.Add(-3 * time.Second), QueueWait: time.Millisecond, CellPath: cell, CellStarted: now.Add(-2 * time.Second)}

	r := statusRequest(base, now)
	if r.CPUUsageUsec == nil || *r.CPUUsageUsec != 4200 || r.MemoryCurrent != nil || r.CellAgeUsec == nil || *r.CellAgeUsec != 2_000_000 {
		t.Errorf("without memory.current: %+v", r)
	}
	if r.AgeUsec != 3_000_000 || r.QueueWaitUsec != 1000 || r.Tenant != "acme" {
		t.Errorf("request fields: %+v", r)
	}
	// A reused group (groups: reused): the CPU of the requests before
	// this one is not its own.
	reused := base
	reused.CellCPUBefore = 4000
	if r := statusRequest(reused, now); r.CPUUsageUsec == nil || *r.CPUUsageUsec != 200 {
		t.Errorf("a reused group's live CPU: %+v, want 200 (4200 less the 4000 before the request)", r)
	}
	writeFile(t, filepath.Join(cell, "memory.current"), "1048576\n")
	if r := statusRequest(base, now); r.MemoryCurrent == nil || *r.MemoryCurrent != 1<<20 {
		t.Errorf("with memory.current: %+v", r)
	}
	if err := os.RemoveAll(cell); err != nil {
		t.Fatal(err)
	}
	if r := statusRequest(base, now); r.CPUUsageUsec != nil || r.MemoryCurrent != nil || r.CellAgeUsec != nil {
		t.Errorf("cell gone: %+v", r)
	}
	base.CellPath = ""
	if r := statusRequest(base, now); r.CPUUsageUsec != nil {
		t.Errorf("no cell: %+v", r)
	}
}

// The tenants' budgets are admission's use against the current policy's
// totals; an unset total is null.
func TestStatusBudgets(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA)
	var s accounting.Status
	d.statusBudgets(&s, nil)
	if s.Global.MemoryBudget != nil || s.Global.MaxCells != nil {
		t.Errorf("global: %+v", s.Global)
	}
	var web *accounting.StatusTenant
	for i := range s.Tenants {
		if s.Tenants[i].Name == "web" {
			web = &s.Tenants[i]
		}
	}
	if web == nil || web.MemoryBudget == nil || *web.MemoryBudget != 1<<30 || web.QueueMax != 10 || web.MaxCells != nil || web.MemoryCurrent != nil {
		t.Fatalf("tenant web: %+v in %+v", web, s.Tenants)
	}
}

func TestAdminExposed(t *testing.T) {
	for addr, want := range map[string]bool{"127.0.0.1:9090": false, "[::1]:9090": false, "0.0.0.0:9090": true, "[::]:9090": true, "10.1.2.3:9090": true} {
		a, err := net.ResolveTCPAddr("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := adminExposed(a); got != want {
			t.Errorf("adminExposed(%s) = %v, want %v", addr, got, want)
		}
	}
	// A socket-activated admin socket of a path: local, not exposed
	// (serve warned of it as reachable from other hosts before).
	if adminExposed(&net.UnixAddr{Name: "/run/cellgate/admin.sock", Net: "unix"}) {
		t.Error("adminExposed(a Unix socket) = true, want false")
	}
}

// TestStatusBudgetsPartialTotals: a tenant group that could not be read
// costs /status that tenant's memory only. All of them lost theirs before.
func TestStatusBudgetsPartialTotals(t *testing.T) {
	d, _ := testDaemon(t, reloadPolicyA)
	var s accounting.Status
	d.statusBudgets(&s, func() ([]accounting.TenantTotals, error) {
		return []accounting.TenantTotals{{Tenant: "web", MemoryCurrent: 4096}}, errors.New("read memory.current in cells/extra: input/output error")
	})
	got := map[string]*uint64{}
	for _, tn := range s.Tenants {
		got[tn.Name] = tn.MemoryCurrent
	}
	if m := got["web"]; m == nil || *m != 4096 {
		t.Errorf("web's memory_current = %v, want 4096 (read) in %+v", m, s.Tenants)
	}
	if m, ok := got["extra"]; !ok || m != nil {
		t.Errorf("extra's memory_current = %v (listed: %v), want none (not read)", m, ok)
	}
}

// TestTenantTotalsSkipsRemovedGroup: a tenant group removed after the list
// of groups was copied (a tenant a reload dropped, retired as a scrape
// runs) is left out of the totals, without an error or a warning. Its
// totals were zeros before (every file missing): a counter reset, to
// Prometheus, for every one of them.
func TestTenantTotalsSkipsRemovedGroup(t *testing.T) {
	d, _ := cellsDaemon(t, reloadPolicyA)
	var logged lockedBuffer
	d.log = slog.New(slog.NewTextHandler(&logged, nil))
	if err := d.pool.DrainTenant("extra"); err != nil {
		t.Fatal(err)
	}
	if err := d.tree.RemoveTenant("extra"); err != nil { // d.tenants still lists it
		t.Fatal(err)
	}
	totals, err := d.tenantTotals()
	if err != nil || len(totals) != 1 || totals[0].Tenant != "web" {
		t.Errorf("tenantTotals = %+v, %v; want web's alone", totals, err)
	}
	if logged.String() != "" {
		t.Errorf("logged:\n%s", logged.String())
	}
}

// TestStatusDroppedTenantDraining: a tenant a reload dropped, still
// admitting the requests the replaced policy routed to it, shows the
// budget admission holds them to (its last) and draining: /status showed
// it unlimited (no max_cells, no memory budget, queue 0) and not
// draining, as the current policy has no budget of it.
func TestStatusDroppedTenantDraining(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	m, release, err := d.match("example.com", "POST", "/extra")
	if err != nil {
		t.Fatal(err)
	}
	defer release()
	rel, _, err := d.admission.Admit(context.Background(), m.Route.Tenant, m.Route.Memory)
	if err != nil {
		t.Fatal(err)
	}
	defer rel()
	writeFile(t, path, reloadPolicyB)
	if err := d.reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	var s accounting.Status
	d.statusBudgets(&s, nil)
	i := slices.IndexFunc(s.Tenants, func(t accounting.StatusTenant) bool { return t.Name == "extra" })
	if i < 0 {
		t.Fatalf("tenant extra not in /status while a request of it runs: %+v", s.Tenants)
	}
	if tn := s.Tenants[i]; tn.MemoryBudget == nil || *tn.MemoryBudget != 256<<20 || tn.QueueMax != 10 || !tn.Draining || tn.InFlight != 1 {
		t.Errorf("tenant extra after the reload dropped it: %+v (budget %v), want its 256Mi budget, queue 10, draining, 1 in flight", tn, tn.MemoryBudget)
	}
}
