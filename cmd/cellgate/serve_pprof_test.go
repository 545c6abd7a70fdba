package main

import (
	"net/http"
	"net/http/httptest"
	"testing"
)

// TestAdminHandlerPprof: the profiles are on the admin listener only with
// --admin-pprof, and the admin handler's own paths answer either way.
func TestAdminHandlerPprof(t *testing.T) {
	own := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/metrics" {
			http.NotFound(w, r)
			return
		}
		w.Write([]byte("metrics"))
	})
	for _, tc := range []struct {
		name  string
		pprof bool
		path  string
		want  int
	}{
		{"off: no profiles", false, "/debug/pprof/", 404},
		{"off: metrics", false, "/metrics", 200},
		{"on: profile index", true, "/debug/pprof/", 200},
		{"on: goroutine profile", true, "/debug/pprof/goroutine?debug=1", 200},
		{"on: metrics", true, "/metrics", 200},
		// A longer profile would hold an admin connection that long.
		{"on: a day's delta profile", true, "/debug/pprof/heap?seconds=86400", 400},
		{"on: a day's CPU profile", true, "/debug/pprof/profile?seconds=86400", 400},
		{"on: a day's trace", true, "/debug/pprof/trace?seconds=86400", 400},
		{"on: other paths still the admin handler's", true, "/nothing", 404},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest("GET", tc.path, nil)
			req.Host = "127.0.0.1:9090"
			adminHandler(own, tc.pprof, nil).ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("GET %s with --admin-pprof=%v: %d, want %d", tc.path, tc.pprof, rec.Code, tc.want)
			}
		})
	}
}
