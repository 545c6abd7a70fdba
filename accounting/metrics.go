package accounting

import (
	"fmt"
	"strconv"
	"sync"

	"github.com/prometheus/client_golang/prometheus"
)

// Metric names and labels are cellgate's public interface to dashboards and
// alerts: change them only on purpose. Label values stay bounded: tenant and
// route come from the policy, status is an HTTP status code (anything outside
// 100-599 is "other"), outcome is one of the Outcome constants.
const namespace = "cellgate"

// Buckets of the per-request histograms.
var (
	// queueWaitBuckets span 0.5 ms to 30 s (admission timeouts are seconds).
	queueWaitBuckets = []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30}
	// cpuBuckets span 1 ms to 60 s of CPU time per request.
	cpuBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}
	// wallBuckets span 1 ms to 5 min of cell wall time.
	wallBuckets = []float64{.001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300}
	// memoryBuckets are powers of two from 1 MiB to 8 GiB.
	memoryBuckets = prometheus.ExponentialBuckets(1<<20, 2, 14)
)

// Metrics holds the per-request metrics. Build it once with NewMetrics;
// ObserveRequest is safe for concurrent use.
type Metrics struct {
	requests     *prometheus.CounterVec   // tenant, route, status, outcome
	queueWait    *prometheus.HistogramVec // tenant
	cpuSeconds   *prometheus.HistogramVec // tenant, route
	wallSeconds  *prometheus.HistogramVec // tenant, route
	memoryPeak   *prometheus.HistogramVec // tenant, route
	oomKills     *prometheus.CounterVec   // tenant, route
	throttled    *prometheus.CounterVec   // tenant, route
	statusLabels [600]string              // "100".."599"; the rest unused

	// cells caches the per-(tenant, route) children so that observing a
	// request does not hash label values for every metric. Both labels come
	// from the policy, so the map stays small.
	cells sync.Map // routeKey -> *routeMetrics
}

type routeKey struct{ tenant, route string }

type routeMetrics struct {
	queueWait   prometheus.Observer
	cpuSeconds  prometheus.Observer
	wallSeconds prometheus.Observer
	memoryPeak  prometheus.Observer
	oomKills    prometheus.Counter
	throttled   prometheus.Counter
}

// NewMetrics creates the per-request metrics and registers them on reg,
// which should be cellgate's own registry (prometheus.NewRegistry()), never
// the global default. The gauges of cells in flight and queue length come
// from NewAdmissionCollector, and the tenant totals from
// NewTenantTotalsCollector; register those on the same registry.
func NewMetrics(reg prometheus.Registerer) (*Metrics, error) {
	tr := []string{"tenant", "route"}
	m := &Metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "requests_total",
			Help: "Requests completed, by tenant, route, HTTP status and outcome; each cell a local redirect (a CGI Location of a path) ran before the last counts as one of outcome local_redirect.",
		}, []string{"tenant", "route", "status", "outcome"}),
		queueWait: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "queue_wait_seconds",
			Help:    "Time from a request being ready to its admission, or to the end of its wait (a timeout, its client gone, no cell to be had).",
			Buckets: queueWaitBuckets,
		}, []string{"tenant"}),
		cpuSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cell_cpu_seconds",
			Help:    "CPU time (user and system) used by one request's cell, from cpu.stat.",
			Buckets: cpuBuckets,
		}, tr),
		wallSeconds: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cell_wall_seconds",
			Help:    "Wall time of one request's cell, from the worker's start to the cell being empty.",
			Buckets: wallBuckets,
		}, tr),
		memoryPeak: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Namespace: namespace, Name: "cell_memory_peak_bytes",
			Help:    "Peak memory of one request's cell, from memory.peak.",
			Buckets: memoryBuckets,
		}, tr),
		oomKills: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "cell_oom_kills_total",
			Help: "Request cells in which the kernel OOM-killed the worker.",
		}, tr),
		throttled: prometheus.NewCounterVec(prometheus.CounterOpts{
			Namespace: namespace, Name: "cell_cpu_throttled_seconds_total",
			Help: "Time request cells spent throttled by cpu.max, from cpu.stat throttled_usec.",
		}, tr),
	}
	for code := 100; code < len(m.statusLabels); code++ {
		m.statusLabels[code] = strconv.Itoa(code)
	}
	for _, c := range []prometheus.Collector{m.requests, m.queueWait, m.cpuSeconds, m.wallSeconds, m.memoryPeak, m.oomKills, m.throttled} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register request metrics: %w", err)
		}
	}
	return m, nil
}

// ObserveRequest records one finished request: the request counter always;
// the queue wait when the request waited for admission (r.Queued), however
// that ended, or reached a cell; the cell's CPU time, wall time, memory peak, OOM kill and throttled
// time when a cell ran (r.Cell). A memory peak the kernel did not report
// (zero) is not observed.
func (m *Metrics) ObserveRequest(r Record) {
	outcome := r.Outcome
	if !outcome.known() {
		outcome = OutcomeOther
	}
	m.requests.WithLabelValues(r.Tenant, r.Route, m.status(r.Status), string(outcome)).Inc()
	if !r.Cell && !r.Queued && r.Outcome != OutcomeQueueTimeout {
		return
	}
	rm := m.route(r.Tenant, r.Route)
	rm.queueWait.Observe(r.QueueWait.Seconds())
	if !r.Cell {
		return
	}
	rm.cpuSeconds.Observe(float64(r.Usage.CPUUsageUsec) / 1e6)
	rm.wallSeconds.Observe(r.Wall.Seconds())
	if r.Usage.MemoryPeak > 0 {
		rm.memoryPeak.Observe(float64(r.Usage.MemoryPeak))
	}
	if r.Usage.OOMKilled() {
		rm.oomKills.Inc()
	}
	if r.Usage.ThrottledUsec > 0 {
		rm.throttled.Add(float64(r.Usage.ThrottledUsec) / 1e6)
	}
}

// status is the label value of an HTTP status code.
func (m *Metrics) status(code int) string {
	if code < 100 || code >= len(m.statusLabels) {
		return "other"
	}
	return m.statusLabels[code]
}

// route returns the cached children for tenant and route.
func (m *Metrics) route(tenant, route string) *routeMetrics {
	k := routeKey{tenant, route}
	if v, ok := m.cells.Load(k); ok {
		return v.(*routeMetrics)
	}
	rm := &routeMetrics{
		queueWait:   m.queueWait.WithLabelValues(tenant),
		cpuSeconds:  m.cpuSeconds.WithLabelValues(tenant, route),
		wallSeconds: m.wallSeconds.WithLabelValues(tenant, route),
		memoryPeak:  m.memoryPeak.WithLabelValues(tenant, route),
		oomKills:    m.oomKills.WithLabelValues(tenant, route),
		throttled:   m.throttled.WithLabelValues(tenant, route),
	}
	v, _ := m.cells.LoadOrStore(k, rm)
	return v.(*routeMetrics)
}
