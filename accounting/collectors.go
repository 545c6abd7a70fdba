package accounting

import (
	"github.com/prometheus/client_golang/prometheus"
)

// TenantTotals are a tenant group's own counters, read by package cgroup from
// cells/<tenant>/cpu.stat, memory.current and memory.events. The kernel keeps
// them after the tenant's request cells are removed, so they are the
// authoritative totals.
type TenantTotals struct {
	Tenant        string
	CPUUsageUsec  uint64 // cpu.stat usage_usec
	CPUUserUsec   uint64 // cpu.stat user_usec
	CPUSystemUsec uint64 // cpu.stat system_usec
	ThrottledUsec uint64 // cpu.stat throttled_usec
	MemoryCurrent uint64 // memory.current, bytes
	OOM           uint64 // memory.events oom
	OOMKill       uint64 // memory.events oom_kill
	OOMGroupKill  uint64 // memory.events oom_group_kill
	MemoryMax     uint64 // memory.events max: times usage hit memory.max (not the limit)
	// Missing names the files and keys the kernel did not have (a
	// controller off, an older kernel), as cgroup.TenantStats lists them:
	// those figures are not exported, never as zeros.
	Missing []string
}

// Has reports whether t's figure of file (and key) was measured.
func (t *TenantTotals) Has(file, key string) bool { return measured(t.Missing, file, key) }

// tenantTotalsCollector reads TenantTotals at scrape time.
type tenantTotalsCollector struct {
	read func() ([]TenantTotals, error)

	up, cpuUsage, cpuUser, cpuSystem, throttled, memoryCurrent, memoryEvents *prometheus.Desc
}

// NewTenantTotalsCollector returns a collector that calls read (not nil) at
// every scrape and exports the tenant groups' totals. read may return partial
// totals with an error; those are exported and cellgate_tenant_totals_up is
// 0, so one unreadable tenant does not fail the scrape. read should log its
// own errors with the path it failed on.
func NewTenantTotalsCollector(read func() ([]TenantTotals, error)) prometheus.Collector {
	t := []string{"tenant"}
	return &tenantTotalsCollector{
		read: read,
		up: prometheus.NewDesc(namespace+"_tenant_totals_up",
			"1 if the tenant totals were read from the kernel at this scrape, 0 if reading failed.", nil, nil),
		cpuUsage: prometheus.NewDesc(namespace+"_tenant_cpu_usage_seconds_total",
			"CPU time used by the tenant's cells, from the tenant group's cpu.stat usage_usec.", t, nil),
		cpuUser: prometheus.NewDesc(namespace+"_tenant_cpu_user_seconds_total",
			"User CPU time used by the tenant's cells, from cpu.stat user_usec.", t, nil),
		cpuSystem: prometheus.NewDesc(namespace+"_tenant_cpu_system_seconds_total",
			"System CPU time used by the tenant's cells, from cpu.stat system_usec.", t, nil),
		throttled: prometheus.NewDesc(namespace+"_tenant_cpu_throttled_seconds_total",
			"Time the tenant group was throttled by its cpu.max, from cpu.stat throttled_usec.", t, nil),
		memoryCurrent: prometheus.NewDesc(namespace+"_tenant_memory_current_bytes",
			"Memory charged to the tenant group now, from memory.current.", t, nil),
		memoryEvents: prometheus.NewDesc(namespace+"_tenant_memory_events_total",
			"The tenant group's memory.events counters (max, oom, oom_kill, oom_group_kill), hierarchical.",
			[]string{"tenant", "event"}, nil),
	}
}

func (c *tenantTotalsCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{c.up, c.cpuUsage, c.cpuUser, c.cpuSystem, c.throttled, c.memoryCurrent, c.memoryEvents} {
		ch <- d
	}
}

func (c *tenantTotalsCollector) Collect(ch chan<- prometheus.Metric) {
	totals, err := c.read()
	up := 1.0
	if err != nil {
		up = 0
	}
	ch <- prometheus.MustNewConstMetric(c.up, prometheus.GaugeValue, up)
	for _, t := range totals {
		for _, f := range [...]struct {
			d         *prometheus.Desc
			vt        prometheus.ValueType
			file, key string
			v         float64
		}{
			{c.cpuUsage, prometheus.CounterValue, "cpu.stat", "usage_usec", float64(t.CPUUsageUsec) / 1e6},
			{c.cpuUser, prometheus.CounterValue, "cpu.stat", "user_usec", float64(t.CPUUserUsec) / 1e6},
			{c.cpuSystem, prometheus.CounterValue, "cpu.stat", "system_usec", float64(t.CPUSystemUsec) / 1e6},
			{c.throttled, prometheus.CounterValue, "cpu.stat", "throttled_usec", float64(t.ThrottledUsec) / 1e6},
			{c.memoryCurrent, prometheus.GaugeValue, "memory.current", "", float64(t.MemoryCurrent)},
		} {
			if t.Has(f.file, f.key) {
				ch <- prometheus.MustNewConstMetric(f.d, f.vt, f.v, t.Tenant)
			}
		}
		for _, e := range [...]struct {
			name string
			v    uint64
		}{{"max", t.MemoryMax}, {"oom", t.OOM}, {"oom_kill", t.OOMKill}, {"oom_group_kill", t.OOMGroupKill}} {
			if t.Has("memory.events", e.name) {
				ch <- prometheus.MustNewConstMetric(c.memoryEvents, prometheus.CounterValue, float64(e.v), t.Tenant, e.name)
			}
		}
	}
}

// AdmissionStats is one tenant's admission state at an instant: a
// policy.TenantStats from Admission.Stats(), converted by cmd/cellgate.
type AdmissionStats struct {
	Tenant        string
	InFlight      int   // cells running
	Queued        int   // requests waiting for admission
	ReservedBytes int64 // memory reserved by the running cells' limits
}

// admissionCollector reads AdmissionStats at scrape time.
type admissionCollector struct {
	stats func() []AdmissionStats

	inFlight, queued, reserved *prometheus.Desc
}

// NewAdmissionCollector returns a collector that calls stats (not nil) at
// every scrape and exports, per tenant, the cells in flight, the admission
// queue length and the memory reserved.
func NewAdmissionCollector(stats func() []AdmissionStats) prometheus.Collector {
	t := []string{"tenant"}
	return &admissionCollector{
		stats: stats,
		inFlight: prometheus.NewDesc(namespace+"_cells_in_flight",
			"Cells running now, by tenant.", t, nil),
		queued: prometheus.NewDesc(namespace+"_queue_length",
			"Requests waiting for admission now, by tenant.", t, nil),
		reserved: prometheus.NewDesc(namespace+"_reserved_memory_bytes",
			"Memory reserved by the running cells' limits, by tenant.", t, nil),
	}
}

func (c *admissionCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.inFlight
	ch <- c.queued
	ch <- c.reserved
}

func (c *admissionCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.stats() {
		ch <- prometheus.MustNewConstMetric(c.inFlight, prometheus.GaugeValue, float64(s.InFlight), s.Tenant)
		ch <- prometheus.MustNewConstMetric(c.queued, prometheus.GaugeValue, float64(s.Queued), s.Tenant)
		ch <- prometheus.MustNewConstMetric(c.reserved, prometheus.GaugeValue, float64(s.ReservedBytes), s.Tenant)
	}
}
