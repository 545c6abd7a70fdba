package accounting

import (
	"errors"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func TestAdminHandler(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := NewMetrics(reg)
	if err != nil {
		t.Fatalf("NewMetrics: %v", err)
	}
	m.ObserveRequest(cellRecord())
	reg.MustRegister(NewAdmissionCollector(func() []AdmissionStats {
		return []AdmissionStats{{Tenant: "acme", InFlight: 2, Queued: 1, ReservedBytes: 1 << 20}}
	}))
	reg.MustRegister(NewTenantTotalsCollector(func() ([]TenantTotals, error) {
		return nil, errors.New("open cells: permission denied")
	}))

	var notReady error = errors.New("cgroup pool empty")
	srv := httptest.NewServer(AdminHandler(reg, func() error { return notReady }, func() Status { return Status{} }))
	t.Cleanup(srv.Close)

	get := func(t *testing.T, method, path string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(method, srv.URL+path, nil)
		if err != nil {
			t.Fatalf("new request %s %s: %v", method, path, err)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatalf("%s %s: %v", method, path, err)
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			t.Fatalf("read %s %s: %v", method, path, err)
		}
		return resp.StatusCode, string(body)
	}

	t.Run("healthz", func(t *testing.T) {
		if code, body := get(t, "GET", "/healthz"); code != 200 || body != "ok\n" {
			t.Errorf("GET /healthz = %d %q, want 200 \"ok\\n\"", code, body)
		}
	})
	t.Run("readyz not ready", func(t *testing.T) {
		code, body := get(t, "GET", "/readyz")
		if code != 503 || body != "not ready: cgroup pool empty\n" {
			t.Errorf("GET /readyz = %d %q, want 503 with the reason", code, body)
		}
	})
	t.Run("readyz ready", func(t *testing.T) {
		notReady = nil
		t.Cleanup(func() { notReady = errors.New("cgroup pool empty") })
		if code, body := get(t, "GET", "/readyz"); code != 200 || body != "ok\n" {
			t.Errorf("GET /readyz = %d %q, want 200 \"ok\\n\"", code, body)
		}
	})
	t.Run("wrong method", func(t *testing.T) {
		if code, _ := get(t, "POST", "/healthz"); code != http.StatusMethodNotAllowed {
			t.Errorf("POST /healthz = %d, want 405", code)
		}
	})
	t.Run("unknown path", func(t *testing.T) {
		if code, _ := get(t, "GET", "/debug/pprof/"); code != http.StatusNotFound {
			t.Errorf("GET /debug/pprof/ = %d, want 404", code)
		}
	})
	t.Run("metrics", func(t *testing.T) {
		const want = `
# HELP cellgate_requests_total Requests completed, by tenant, route, HTTP status and outcome; each cell a local redirect (a CGI Location of a path) ran before the last counts as one of outcome local_redirect.
# TYPE cellgate_requests_total counter
cellgate_requests_total{outcome="ok",route="api",status="200",tenant="acme"} 1
# HELP cellgate_cells_in_flight Cells running now, by tenant.
# TYPE cellgate_cells_in_flight gauge
cellgate_cells_in_flight{tenant="acme"} 2
# HELP cellgate_tenant_totals_up 1 if the tenant totals were read from the kernel at this scrape, 0 if reading failed.
# TYPE cellgate_tenant_totals_up gauge
cellgate_tenant_totals_up 0
`
		err := testutil.ScrapeAndCompare(srv.URL+"/metrics", strings.NewReader(want),
			"cellgate_requests_total", "cellgate_cells_in_flight", "cellgate_tenant_totals_up")
		if err != nil {
			t.Error(err)
		}
		_, body := get(t, "GET", "/metrics")
		if !strings.Contains(body, "cellgate_cell_memory_peak_bytes_bucket{") {
			t.Errorf("GET /metrics lacks the memory peak histogram:\n%s", body)
		}
	})
}
