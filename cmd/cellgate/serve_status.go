package main

import (
	"net"
	"slices"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
)

// statusFunc returns the admin listener's /status source: the requests in
// flight from the front end, each running cell's live memory and CPU read
// from its cgroup now, the tenants' budgets used vs total from admission
// and the current policy, their groups' memory, and the pool.
func (d *daemon) statusFunc(srv *proxy.Server, started time.Time) func() accounting.Status {
	return func() accounting.Status {
		now := time.Now()
		s := accounting.Status{Time: now, Version: buildVersion().Version, Started: started, Ready: true}
		if err := d.readiness(); err != nil {
			s.Ready, s.NotReady = false, err.Error()
		}
		fl := srv.InFlight()
		s.InFlight = len(fl)
		if len(fl) > accounting.MaxStatusRequests {
			fl = fl[:accounting.MaxStatusRequests]
		}
		s.Requests = make([]accounting.StatusRequest, 0, len(fl))
		for _, r := range fl {
			s.Requests = append(s.Requests, statusRequest(r, now))
		}
		var totals func() ([]accounting.TenantTotals, error)
		if d.tree != nil && slices.Contains(d.tree.Features().Enabled, "memory") {
			totals = d.tenantTotals
		}
		d.statusBudgets(&s, totals)
		if d.pool != nil {
			ps := d.pool.Stats()
			s.Pool = &accounting.StatusPool{Idle: d.pool.IdleCells(), Hits: ps.Hits, Misses: ps.Misses,
				CreateErrors: ps.CreateErrors, Removed: ps.Removed, RemoveErrors: ps.RemoveErrors}
		}
		return s
	}
}

// statusRequest is one request in flight, with its cell's live figures
// when a cell runs (a cell that ended in between has none).
func statusRequest(r proxy.InFlight, now time.Time) accounting.StatusRequest {
	out := accounting.StatusRequest{
		RequestID: r.RequestID, Method: r.Method, Host: r.Host, Path: r.Path, Client: r.Client,
		Route: r.Route, Tenant: r.Tenant, State: r.State,
		AgeUsec: now.Sub(r.Arrived).Microseconds(), QueueWaitUsec: r.QueueWait.Microseconds(),
	}
	if r.CellPath == "" {
		return out
	}
	live, err := cgroup.ReadLive(r.CellPath)
	if err != nil {
		return out
	}
	age := now.Sub(r.CellStarted).Microseconds()
	cpu := live.CPUUsageUsec - min(live.CPUUsageUsec, r.CellCPUBefore) // a reused group's, less its earlier requests'
	out.CellAgeUsec, out.MemoryCurrent, out.CPUUsageUsec = &age, live.MemoryCurrent, &cpu
	return out
}

// statusBudgets fills the global and per-tenant budgets: admission's
// figures and the budgets it holds requests to (a tenant a reload dropped,
// still admitting the requests a replaced policy routed to it, under its
// last budget, is draining). totals reads the tenant
// groups' memory (nil: not measured, the memory controller being off);
// a tenant whose group could not be read has none, the others keep
// theirs.
func (d *daemon) statusBudgets(s *accounting.Status, totals func() ([]accounting.TenantTotals, error)) {
	pol := d.current.Load().policy
	as := d.admission.Stats()
	s.Global = accounting.StatusGlobal{InFlight: as.InFlight, Reserved: as.Reserved, Queued: as.Queued,
		MaxCells: positive(as.Global.MaxCells), MemoryBudget: positive64(as.Global.Memory)}
	memNow := map[string]uint64{}
	if totals != nil {
		read, _ := totals() // partial when a group could not be read (logged by tenantTotals)
		for _, t := range read {
			if t.Has("memory.current", "") {
				memNow[t.Tenant] = t.MemoryCurrent
			}
		}
	}
	for _, t := range as.Tenants {
		b := t.Budget
		st := accounting.StatusTenant{Name: t.Name, InFlight: t.InFlight, Reserved: t.Reserved, Queued: t.Queued,
			Draining: t.Draining || !slices.ContainsFunc(pol.Tenants, func(p *policy.Tenant) bool { return p.Name == t.Name }),
			MaxCells: positive(b.MaxCells), MemoryBudget: positive64(b.Memory), QueueMax: b.Queue}
		if m, ok := memNow[t.Name]; ok {
			st.MemoryCurrent = &m
		}
		s.Tenants = append(s.Tenants, st)
	}
}

// positive is n, or nil (not limited) when it is 0 or less.
func positive(n int) *int {
	if n <= 0 {
		return nil
	}
	return &n
}

func positive64(n int64) *int64 {
	if n <= 0 {
		return nil
	}
	return &n
}

// adminExposed reports whether the admin listener's bound address is
// reachable from other hosts: a TCP address but a loopback one (a
// wildcard included). A Unix socket (socket activation's ListenStream=
// of a path) is reached by local processes alone, as its file's mode
// allows. The admin listener has no authentication.
func adminExposed(addr net.Addr) bool {
	switch a := addr.(type) {
	case *net.UnixAddr:
		return false
	case *net.TCPAddr:
		return !a.IP.IsLoopback()
	}
	return true
}
