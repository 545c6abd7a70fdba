package main

import (
	"bytes"
	"log/slog"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// TestNewStrayReaper: serve reaps strays only as pid 1, and exports how
// many it reaped.
func TestNewStrayReaper(t *testing.T) {
	for _, tc := range []struct {
		name string
		pid  int
		want bool
	}{
		{name: "pid 1", pid: 1, want: true},
		{name: "any other pid", pid: 4242},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var buf bytes.Buffer
			s := newStrayReaper(slog.New(slog.NewTextHandler(&buf, nil)), tc.pid)
			if (s != nil) != tc.want {
				t.Fatalf("newStrayReaper(pid %d) = %v, want a reaper: %v; log: %s", tc.pid, s, tc.want, buf.String())
			}
			if s == nil {
				return
			}
			if got := testutil.ToFloat64(strayCounter(s)); got != 0 {
				t.Errorf("cellgate_stray_zombies_reaped_total = %v before any scan, want 0", got)
			}
		})
	}
}
