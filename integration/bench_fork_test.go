package integration

import (
	"flag"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The fork driver against the cgi driver on the same Flask hello
// (examples/wsgi/flask_hello.py; as CGI: examples/cgi/flask-hello.cgi),
// through one cellgate in one run: requests/s, p50 and p99, CPU per
// request (cellgate's own, and the tenant group's: cells plus, for fork,
// the preloader) and the cells' mean memory.peak, as ratios fork/cgi.
//
//	go test -run '^$' -bench Fork ./integration/   # on the host, as root
//	make bench                                     # also in the microVM
var (
	benchForkRequests = flag.Int("fork.requests", 300, "requests to the fork route in BenchmarkFork")
	benchCGIRequests  = flag.Int("fork.cgi-requests", 48, "requests to the cgi route in BenchmarkFork (each starts Python and imports Flask)")
)

const benchForkPolicy = `version: 1
defaults: {memory: 128Mi, cpu: 1, pids: 64, timeout: 120s}
tenants:
  - {name: fork, max_cells: 16, queue: 1000, queue_timeout: 300s}
  - {name: cgi, max_cells: 16, queue: 1000, queue_timeout: 300s}
routes:
  - {name: flask, match: {path: /flask}, tenant: fork, driver: fork, runtime: python-wsgi, app: "flask_hello:app", app_dir: "%s", memory: 64Mi}
  - {name: flask-cgi, match: {path: /flask-cgi}, tenant: cgi, program: "%s"}
`

// tenantCPU is a tenant group's cpu.stat usage_usec.
func tenantCPU(b *testing.B, g *gate, tenant string) time.Duration {
	b.Helper()
	st, err := os.ReadFile(filepath.Join(g.base, "cells", tenant, "cpu.stat"))
	if err != nil {
		b.Fatalf("read %s's cpu.stat: %v", tenant, err)
	}
	for _, line := range strings.Split(string(st), "\n") {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return time.Duration(n) * time.Microsecond
		}
	}
	b.Fatalf("no usage_usec in %s's cpu.stat", tenant)
	return 0
}

// meanPeak is the mean memory.peak of a route's cells in the access log.
func meanPeak(g *gate, route string) float64 {
	var sum, n float64
	for _, r := range g.recordsFor(route) {
		if r.Cell != nil && r.Status == 200 {
			sum += float64(r.Cell.MemoryPeak)
			n++
		}
	}
	if n == 0 {
		return 0
	}
	return sum / n
}

func BenchmarkFork(b *testing.B) {
	base, unenforced := benchSetup(b)
	examples, err := filepath.Abs(filepath.Join("..", "examples"))
	if err != nil {
		b.Fatal(err)
	}
	var extra []string
	if unenforced {
		extra = []string{"--unenforced", "memory,cpu,pids"}
	}
	policy := fmt.Sprintf(benchForkPolicy, filepath.Join(examples, "wsgi"), filepath.Join(examples, "cgi", "flask-hello.cgi"))
	g := startGate(b, gateOptions{policy: policy, base: base, args: extra})
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * *benchConc, DisableCompression: true}, Timeout: 5 * time.Minute}
	b.Cleanup(client.CloseIdleConnections)

	run := func(path, tenant string, n int) (benchStats, time.Duration) {
		t0 := tenantCPU(b, g, tenant)
		s := benchLoad(b, client, g.url+path, n, *benchConc, g.cmd.Process.Pid)
		return s, (tenantCPU(b, g, tenant) - t0) / time.Duration(n)
	}
	var fork, cgi benchStats
	var forkCPU, cgiCPU time.Duration
	for b.Loop() {
		cgi, cgiCPU = run("/flask-cgi/", "cgi", *benchCGIRequests)
		fork, forkCPU = run("/flask/", "fork", *benchForkRequests)
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	forkPeak, cgiPeak := meanPeak(g, "flask"), meanPeak(g, "flask-cgi")
	b.ReportMetric(fork.rps, "fork-req/s")
	b.ReportMetric(cgi.rps, "cgi-req/s")
	b.ReportMetric(fork.rps/cgi.rps, "fork/cgi-throughput")
	b.ReportMetric(ms(forkCPU)/ms(cgiCPU), "fork/cgi-tenant-cpu")
	b.ReportMetric(ms(fork.server)/ms(cgi.server), "fork/cgi-server-cpu")
	if cgiPeak > 0 {
		b.ReportMetric(forkPeak/cgiPeak, "fork/cgi-memory-peak")
	}
	b.Logf("Flask hello, concurrency %d: fork %.1f req/s (p50 %.1f ms, p99 %.1f ms), cgi %.1f req/s (p50 %.1f ms, p99 %.1f ms): throughput fork/cgi %.1fx; "+
		"tenant CPU per request fork %.2f ms, cgi %.2f ms (ratio %.3f); cellgate's own CPU per request fork %.2f ms, cgi %.2f ms; "+
		"mean cell memory.peak fork %.0f KiB, cgi %.0f KiB (0: not measured on this host)",
		*benchConc, fork.rps, ms(fork.p50), ms(fork.p99), cgi.rps, ms(cgi.p50), ms(cgi.p99), fork.rps/cgi.rps,
		ms(forkCPU), ms(cgiCPU), ms(forkCPU)/ms(cgiCPU), ms(fork.server), ms(cgi.server), forkPeak/1024, cgiPeak/1024)
}
