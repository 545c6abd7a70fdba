package accounting

import (
	"errors"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestTenantTotalsCollector(t *testing.T) {
	acme := TenantTotals{
		Tenant:        "acme",
		CPUUsageUsec:  2_500_000,
		CPUUserUsec:   2_000_000,
		CPUSystemUsec: 500_000,
		ThrottledUsec: 250_000,
		MemoryCurrent: 4096,
		OOM:           3,
		OOMKill:       4,
		OOMGroupKill:  2,
		MemoryMax:     7,
	}
	const acmeText = `
# HELP cellgate_tenant_cpu_usage_seconds_total CPU time used by the tenant's cells, from the tenant group's cpu.stat usage_usec.
# TYPE cellgate_tenant_cpu_usage_seconds_total counter
cellgate_tenant_cpu_usage_seconds_total{tenant="acme"} 2.5
# HELP cellgate_tenant_cpu_user_seconds_total User CPU time used by the tenant's cells, from cpu.stat user_usec.
# TYPE cellgate_tenant_cpu_user_seconds_total counter
cellgate_tenant_cpu_user_seconds_total{tenant="acme"} 2
# HELP cellgate_tenant_cpu_system_seconds_total System CPU time used by the tenant's cells, from cpu.stat system_usec.
# TYPE cellgate_tenant_cpu_system_seconds_total counter
cellgate_tenant_cpu_system_seconds_total{tenant="acme"} 0.5
# HELP cellgate_tenant_cpu_throttled_seconds_total Time the tenant group was throttled by its cpu.max, from cpu.stat throttled_usec.
# TYPE cellgate_tenant_cpu_throttled_seconds_total counter
cellgate_tenant_cpu_throttled_seconds_total{tenant="acme"} 0.25
# HELP cellgate_tenant_memory_current_bytes Memory charged to the tenant group now, from memory.current.
# TYPE cellgate_tenant_memory_current_bytes gauge
cellgate_tenant_memory_current_bytes{tenant="acme"} 4096
# HELP cellgate_tenant_memory_events_total The tenant group's memory.events counters (max, oom, oom_kill, oom_group_kill), hierarchical.
# TYPE cellgate_tenant_memory_events_total counter
cellgate_tenant_memory_events_total{event="max",tenant="acme"} 7
cellgate_tenant_memory_events_total{event="oom",tenant="acme"} 3
cellgate_tenant_memory_events_total{event="oom_kill",tenant="acme"} 4
cellgate_tenant_memory_events_total{event="oom_group_kill",tenant="acme"} 2
`
	const upHelp = `
# HELP cellgate_tenant_totals_up 1 if the tenant totals were read from the kernel at this scrape, 0 if reading failed.
# TYPE cellgate_tenant_totals_up gauge
`
	tests := []struct {
		name   string
		totals []TenantTotals
		err    error
		want   string
	}{
		{"read", []TenantTotals{acme}, nil, upHelp + "cellgate_tenant_totals_up 1\n" + acmeText},
		{"partial read", []TenantTotals{acme}, errors.New("read cells/beta/cpu.stat: permission denied"), upHelp + "cellgate_tenant_totals_up 0\n" + acmeText},
		{"failed read", nil, errors.New("open cells: no such file or directory"), upHelp + "cellgate_tenant_totals_up 0\n"},
		// The memory controller off and no throttling figures (cpu.max
		// unset on an older kernel): those series are left out, not 0.
		{"figures missing", []TenantTotals{{Tenant: "acme", CPUUsageUsec: 2_500_000, CPUUserUsec: 2_000_000, CPUSystemUsec: 500_000,
			Missing: []string{"cpu.stat:nr_throttled", "cpu.stat:throttled_usec", "memory.events", "memory.current"}}}, nil,
			upHelp + "cellgate_tenant_totals_up 1\n" + strings.Join(strings.SplitAfter(acmeText, "\n")[:10], "")},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			calls := 0
			c := NewTenantTotalsCollector(func() ([]TenantTotals, error) {
				calls++
				return tt.totals, tt.err
			})
			if err := testutil.CollectAndCompare(c, strings.NewReader(tt.want)); err != nil {
				t.Error(err)
			}
			if calls != 1 {
				t.Errorf("read called %d times in one scrape, want 1", calls)
			}
			problems, err := testutil.CollectAndLint(c)
			if err != nil {
				t.Fatalf("lint: %v", err)
			}
			for _, p := range problems {
				t.Errorf("lint: %s: %s", p.Metric, p.Text)
			}
		})
	}
}

func TestAdmissionCollector(t *testing.T) {
	c := NewAdmissionCollector(func() []AdmissionStats {
		return []AdmissionStats{
			{Tenant: "acme", InFlight: 3, Queued: 5, ReservedBytes: 3 << 28},
			{Tenant: "beta", InFlight: 0, Queued: 0, ReservedBytes: 0},
		}
	})
	const want = `
# HELP cellgate_cells_in_flight Cells running now, by tenant.
# TYPE cellgate_cells_in_flight gauge
cellgate_cells_in_flight{tenant="acme"} 3
cellgate_cells_in_flight{tenant="beta"} 0
# HELP cellgate_queue_length Requests waiting for admission now, by tenant.
# TYPE cellgate_queue_length gauge
cellgate_queue_length{tenant="acme"} 5
cellgate_queue_length{tenant="beta"} 0
# HELP cellgate_reserved_memory_bytes Memory reserved by the running cells' limits, by tenant.
# TYPE cellgate_reserved_memory_bytes gauge
cellgate_reserved_memory_bytes{tenant="acme"} 805306368
cellgate_reserved_memory_bytes{tenant="beta"} 0
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want)); err != nil {
		t.Error(err)
	}
}

func TestPreloaderCollector(t *testing.T) {
	c := NewPreloaderCollector(func() []PreloaderStats {
		return []PreloaderStats{{Route: "flask", Restarts: 2, Recycles: 5, Retries: 3, Ready: 1}}
	})
	want := `
# HELP cellgate_preloader_restarts_total Preloaders that died (or broke their protocol) and were restarted, by route.
# TYPE cellgate_preloader_restarts_total counter
cellgate_preloader_restarts_total{route="flask"} 2
# HELP cellgate_preloader_retries_total Requests run again on a fresh cell because their preloader died while it was handing them their process, by route.
# TYPE cellgate_preloader_retries_total counter
cellgate_preloader_retries_total{route="flask"} 3
`
	if err := testutil.CollectAndCompare(c, strings.NewReader(want), "cellgate_preloader_restarts_total", "cellgate_preloader_retries_total"); err != nil {
		t.Error(err)
	}
}
