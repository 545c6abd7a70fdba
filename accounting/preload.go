package accounting

import "github.com/prometheus/client_golang/prometheus"

// PreloaderStats are the counters of a route's preloaders (the fork
// driver), summed over the route's preloaders of every policy snapshot
// the daemon has run.
type PreloaderStats struct {
	Route    string
	Restarts uint64 // preloaders that died or broke and were restarted
	Recycles uint64 // preloaders replaced after recycle_after requests
	Retries  uint64 // requests run again after their preloader died in the hand-off
	Ready    int    // preloaders ready now
}

type preloaderCollector struct {
	stats                              func() []PreloaderStats
	restarts, recycles, retries, ready *prometheus.Desc
}

// NewPreloaderCollector exports the preloaders' counters, by route, read
// from stats at scrape time.
func NewPreloaderCollector(stats func() []PreloaderStats) prometheus.Collector {
	r := []string{"route"}
	return &preloaderCollector{
		stats: stats,
		restarts: prometheus.NewDesc(namespace+"_preloader_restarts_total",
			"Preloaders that died (or broke their protocol) and were restarted, by route.", r, nil),
		recycles: prometheus.NewDesc(namespace+"_preloader_recycles_total",
			"Preloaders replaced after recycle_after requests, by route.", r, nil),
		retries: prometheus.NewDesc(namespace+"_preloader_retries_total",
			"Requests run again on a fresh cell because their preloader died while it was handing them their process, by route.", r, nil),
		ready: prometheus.NewDesc(namespace+"_preloaders_ready",
			"Preloaders ready to serve now, by route.", r, nil),
	}
}

func (c *preloaderCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.restarts
	ch <- c.recycles
	ch <- c.retries
	ch <- c.ready
}

func (c *preloaderCollector) Collect(ch chan<- prometheus.Metric) {
	for _, s := range c.stats() {
		ch <- prometheus.MustNewConstMetric(c.restarts, prometheus.CounterValue, float64(s.Restarts), s.Route)
		ch <- prometheus.MustNewConstMetric(c.recycles, prometheus.CounterValue, float64(s.Recycles), s.Route)
		ch <- prometheus.MustNewConstMetric(c.retries, prometheus.CounterValue, float64(s.Retries), s.Route)
		ch <- prometheus.MustNewConstMetric(c.ready, prometheus.GaugeValue, float64(s.Ready), s.Route)
	}
}
