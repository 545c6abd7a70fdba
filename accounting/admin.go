package accounting

import (
	"net/http"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// AdminHandler serves the admin listener, which cmd/cellgate binds to its own
// address (default 127.0.0.1:9090), never the public port:
//
//	GET /metrics  the metrics gathered from reg (Prometheus text or OpenMetrics)
//	GET /healthz  200 "ok" while the process runs
//	GET /readyz   200 "ok" when ready returns nil, else 503 with ready's error
//	GET /status   what status returns, as JSON, or as a self-refreshing HTML
//	              page for ?format=html and browsers (see Status)
//
// A collector that fails does not fail the scrape: the metrics that could be
// gathered are served.
func AdminHandler(reg prometheus.Gatherer, ready func() error, status func() Status) http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{
		ErrorHandling:     promhttp.ContinueOnError,
		EnableOpenMetrics: true,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		if err := ready(); err != nil {
			writeText(w, http.StatusServiceUnavailable, "not ready: "+err.Error())
			return
		}
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /status", statusHandler(status))
	return mux
}

// writeText writes a one-line plain-text response.
func writeText(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_, _ = w.Write([]byte(body + "\n"))
}
