package accounting

import (
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	dto "github.com/prometheus/client_model/go"
)

func newTestMetrics(t testing.TB) (*Metrics, *prometheus.Registry) {
	t.Helper()
	reg := prometheus.NewPedanticRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatalf("NewMetrics: %v", err)
	}
	return m, reg
}

func TestObserveRequest(t *testing.T) {
	m, reg := newTestMetrics(t)

	ok := cellRecord() // acme/api, 200 ok, 4.1 ms CPU, 32 MiB, 700 µs throttled, 200 µs wait
	m.ObserveRequest(ok)
	m.ObserveRequest(ok)

	oom := cellRecord()
	oom.Status, oom.Outcome = 502, OutcomeOOM
	oom.Usage.OOMKill, oom.Usage.OOMGroupKill = 2, 1
	oom.Usage.MemoryPeak = 64 << 20
	oom.Usage.ThrottledUsec = 0
	m.ObserveRequest(oom)

	noPeak := cellRecord()
	noPeak.Route = "static"
	noPeak.Usage.MemoryPeak = 0
	noPeak.Usage.Missing = []string{"memory.peak"}
	m.ObserveRequest(noPeak)

	m.ObserveRequest(Record{Status: 404, Outcome: OutcomeNoRoute, QueueWait: time.Hour})
	m.ObserveRequest(Record{Tenant: "acme", Route: "api", Status: 503, Outcome: OutcomeQueueTimeout, QueueWait: 5 * time.Second})
	m.ObserveRequest(Record{Tenant: "acme", Route: "api", Status: 503, Outcome: OutcomeQueueFull})
	// A client that gave up while queued: its wait counts too.
	m.ObserveRequest(Record{Tenant: "acme", Route: "api", Status: 499, Outcome: OutcomeClientGone, QueueWait: 2 * time.Second, Queued: true})
	m.ObserveRequest(Record{Tenant: "acme", Route: "api", Status: 0, Outcome: "made_up"})
	m.ObserveRequest(Record{Tenant: "acme", Route: "api", Status: 1000, Outcome: OutcomeInternal})

	const counters = `
# HELP cellgate_requests_total Requests completed, by tenant, route, HTTP status and outcome; each cell a local redirect (a CGI Location of a path) ran before the last counts as one of outcome local_redirect.
# TYPE cellgate_requests_total counter
cellgate_requests_total{outcome="no_route",route="",status="404",tenant=""} 1
cellgate_requests_total{outcome="ok",route="api",status="200",tenant="acme"} 2
cellgate_requests_total{outcome="ok",route="static",status="200",tenant="acme"} 1
cellgate_requests_total{outcome="oom",route="api",status="502",tenant="acme"} 1
cellgate_requests_total{outcome="queue_timeout",route="api",status="503",tenant="acme"} 1
cellgate_requests_total{outcome="queue_full",route="api",status="503",tenant="acme"} 1
cellgate_requests_total{outcome="client_gone",route="api",status="499",tenant="acme"} 1
cellgate_requests_total{outcome="other",route="api",status="other",tenant="acme"} 1
cellgate_requests_total{outcome="internal",route="api",status="other",tenant="acme"} 1
# HELP cellgate_cell_oom_kills_total Request cells in which the kernel OOM-killed the worker.
# TYPE cellgate_cell_oom_kills_total counter
cellgate_cell_oom_kills_total{route="api",tenant="acme"} 1
cellgate_cell_oom_kills_total{route="static",tenant="acme"} 0
# HELP cellgate_cell_cpu_throttled_seconds_total Time request cells spent throttled by cpu.max, from cpu.stat throttled_usec.
# TYPE cellgate_cell_cpu_throttled_seconds_total counter
cellgate_cell_cpu_throttled_seconds_total{route="api",tenant="acme"} 0.0014
cellgate_cell_cpu_throttled_seconds_total{route="static",tenant="acme"} 0.0007
`
	if err := testutil.GatherAndCompare(reg, strings.NewReader(counters),
		"cellgate_requests_total", "cellgate_cell_oom_kills_total", "cellgate_cell_cpu_throttled_seconds_total"); err != nil {
		t.Error(err)
	}

	hists := []struct {
		name   string
		labels map[string]string
		count  uint64
		sum    float64
	}{
		// Four cells of 200 µs (ok twice, oom, static), the 5 s queue
		// timeout and the 2 s a client waited before it left; not the
		// no-route or queue-full requests, which never waited for a cell.
		{"cellgate_queue_wait_seconds", map[string]string{"tenant": "acme"}, 6, 4*0.0002 + 5 + 2},
		{"cellgate_cell_cpu_seconds", map[string]string{"tenant": "acme", "route": "api"}, 3, 3 * 0.0041},
		{"cellgate_cell_cpu_seconds", map[string]string{"tenant": "acme", "route": "static"}, 1, 0.0041},
		{"cellgate_cell_wall_seconds", map[string]string{"tenant": "acme", "route": "api"}, 3, 3 * 0.0123},
		{"cellgate_cell_memory_peak_bytes", map[string]string{"tenant": "acme", "route": "api"}, 3, 2*(32<<20) + 64<<20},
		{"cellgate_cell_memory_peak_bytes", map[string]string{"tenant": "acme", "route": "static"}, 0, 0},
	}
	for _, h := range hists {
		count, sum := histogram(t, reg, h.name, h.labels)
		if count != h.count || !near(sum, h.sum) {
			t.Errorf("%s%v: count %d sum %g, want count %d sum %g", h.name, h.labels, count, sum, h.count, h.sum)
		}
	}
	if n := testutil.CollectAndCount(m.queueWait, "cellgate_queue_wait_seconds"); n != 1 {
		t.Errorf("queue wait series = %d, want 1 (tenant acme only)", n)
	}
	problems, err := testutil.GatherAndLint(reg)
	if err != nil {
		t.Fatalf("lint: %v", err)
	}
	for _, p := range problems {
		t.Errorf("lint: %s: %s", p.Metric, p.Text)
	}
}

func TestNewMetricsRegistersOnce(t *testing.T) {
	reg := prometheus.NewRegistry()
	if _, err := NewMetrics(reg); err != nil {
		t.Fatalf("first NewMetrics: %v", err)
	}
	if _, err := NewMetrics(reg); err == nil {
		t.Fatal("second NewMetrics on the same registry succeeded, want a registration error")
	}
}

// histogram returns the sample count and sum of the series of name with
// exactly labels, or zeros when there is no such series.
func histogram(t testing.TB, g prometheus.Gatherer, name string, labels map[string]string) (uint64, float64) {
	t.Helper()
	mfs, err := g.Gather()
	if err != nil {
		t.Fatalf("gather: %v", err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if hasLabels(m, labels) {
				return m.GetHistogram().GetSampleCount(), m.GetHistogram().GetSampleSum()
			}
		}
	}
	return 0, 0
}

func hasLabels(m *dto.Metric, want map[string]string) bool {
	if len(m.GetLabel()) != len(want) {
		return false
	}
	for _, l := range m.GetLabel() {
		if v, ok := want[l.GetName()]; !ok || v != l.GetValue() {
			return false
		}
	}
	return true
}

func near(a, b float64) bool {
	d := a - b
	if d < 0 {
		d = -d
	}
	return d <= 1e-9*(1+b)
}

func TestObserveRequestConcurrent(t *testing.T) {
	m, _ := newTestMetrics(t)
	const goroutines, each = 8, 100
	done := make(chan struct{})
	for g := range goroutines {
		go func() {
			defer func() { done <- struct{}{} }()
			r := cellRecord()
			if g%2 == 1 {
				r.Route = "static"
			}
			for range each {
				m.ObserveRequest(r)
			}
		}()
	}
	for range goroutines {
		<-done
	}
	for _, route := range []string{"api", "static"} {
		got := testutil.ToFloat64(m.requests.WithLabelValues("acme", route, "200", "ok"))
		if got != goroutines/2*each {
			t.Errorf("requests for route %s = %g, want %d", route, got, goroutines/2*each)
		}
	}
	if n := testutil.CollectAndCount(m.cpuSeconds); n != 2 {
		t.Errorf("cpu histogram series = %d, want 2", n)
	}
}

func TestOutcomeLabel(t *testing.T) {
	tests := []struct {
		outcome Outcome
		want    string
	}{
		{OutcomeOK, "ok"},
		{OutcomeDeadline, "deadline"},
		{OutcomeBadRequest, "bad_request"},
		{OutcomeExpectationFailed, "expectation_failed"},
		{OutcomeMethodNotAllowed, "method_not_allowed"},
		{OutcomeNoCell, "no_cell"},
		{OutcomeShutdown, "shutdown"},
		{OutcomeNoTenant, "no_tenant"},
		{OutcomeOverBudget, "over_budget"},
		{Outcome("bad_request"), "bad_request"}, // proxy's own constant of the same value
		{Outcome("teapot"), "other"},
		{Outcome(""), "other"},
	}
	for _, tt := range tests {
		t.Run(string(tt.outcome), func(t *testing.T) {
			m, _ := newTestMetrics(t)
			m.ObserveRequest(Record{Tenant: "acme", Route: "api", Status: 503, Outcome: tt.outcome})
			if got := testutil.ToFloat64(m.requests.WithLabelValues("acme", "api", "503", tt.want)); got != 1 {
				t.Errorf("requests{outcome=%q} = %g, want 1", tt.want, got)
			}
			if n := testutil.CollectAndCount(m.requests); n != 1 {
				t.Errorf("request series = %d, want 1", n)
			}
		})
	}
}
