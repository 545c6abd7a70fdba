package accounting

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

func testStatus() Status {
	mem, cpu, age := uint64(3<<20), uint64(1500), int64(2_000_000)
	budget, maxCells := int64(1<<30), 4
	return Status{
		Time: time.Date(2026, 12, 1, 10, 0, 0, 0, time.UTC), Version: "v1.2.3", Ready: true, InFlight: 2,
		Requests: []StatusRequest{
			{RequestID: "r1", Method: "GET", Host: "a.example", Path: "/<script>alert(1)</script>", Route: "api", Tenant: "acme",
				State: "running", AgeUsec: 2_500_000, QueueWaitUsec: 100, CellAgeUsec: &age, MemoryCurrent: &mem, CPUUsageUsec: &cpu},
			{RequestID: "r2", Method: "POST", Path: "/up", State: "reading", AgeUsec: 10},
		},
		Global:  StatusGlobal{InFlight: 1, Reserved: 64 << 20},
		Tenants: []StatusTenant{{Name: "acme", InFlight: 1, MaxCells: &maxCells, Reserved: 64 << 20, MemoryBudget: &budget, Queued: 0, QueueMax: 10}},
		Pool:    &StatusPool{Idle: 4, Hits: 10, Misses: 1},
	}
}

func TestStatusHandler(t *testing.T) {
	srv := httptest.NewServer(AdminHandler(prometheus.NewRegistry(), func() error { return nil }, testStatus))
	t.Cleanup(srv.Close)
	get := func(path, accept string) (*http.Response, string) {
		t.Helper()
		req, _ := http.NewRequest("GET", srv.URL+path, nil)
		if accept != "" {
			req.Header.Set("Accept", accept)
		}
		resp, err := srv.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp, string(b)
	}

	t.Run("json", func(t *testing.T) {
		resp, body := get("/status", "")
		if ct := resp.Header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var got map[string]any
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("%v: %s", err, body)
		}
		reqs := got["requests"].([]any)
		r1, r2 := reqs[0].(map[string]any), reqs[1].(map[string]any)
		if r1["memory_current_bytes"] != float64(3<<20) || r1["cpu_usage_usec"] != float64(1500) || r1["tenant"] != "acme" {
			t.Errorf("running request: %v", r1)
		}
		for _, k := range []string{"memory_current_bytes", "cpu_usage_usec", "cell_age_usec"} {
			if v, ok := r2[k]; !ok || v != nil {
				t.Errorf("request without a cell: %s = %v (present %v), want null", k, v, ok)
			}
		}
		g := got["global"].(map[string]any)
		if v, ok := g["memory_budget_bytes"]; !ok || v != nil {
			t.Errorf("unlimited global budget = %v, want null", v)
		}
	})
	for _, tt := range []struct{ name, path, accept string }{
		{"html by format", "/status?format=html", ""},
		{"html for a browser", "/status", "text/html,application/xhtml+xml"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, body := get(tt.path, tt.accept)
			if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/html") {
				t.Errorf("Content-Type %q", ct)
			}
			if csp := resp.Header.Get("Content-Security-Policy"); !strings.Contains(csp, "default-src 'none'") {
				t.Errorf("Content-Security-Policy %q", csp)
			}
			for _, want := range []string{`<meta http-equiv="refresh" content="2">`, "r1", "acme", "3.0 MiB", "1.5 ms", "2.50 s", "1.0 GiB", "n/a", "&lt;script&gt;"} {
				if !strings.Contains(body, want) {
					t.Errorf("page lacks %q:\n%s", want, body)
				}
			}
			if strings.Contains(body, "<script>") || strings.Contains(body, "src=") || strings.Contains(body, "http://") || strings.Contains(body, "https://") {
				t.Errorf("page has a script or an external reference:\n%s", body)
			}
		})
	}
}
