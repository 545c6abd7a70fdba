package integration

import (
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// The fork driver against the cgi driver on the same Flask hello
// (examples/wsgi/flask_hello.py; as CGI: examples/cgi/flask-hello.cgi),
// through one cellgate in one run: requests/s, p50 and p99, CPU per
// request (cellgate's own, and the tenant group's: cells plus, for fork,
// the preloader) and the cells' mean memory.peak, as ratios fork/cgi; and
// the throughput of gunicorn (sync, 2 workers, --preload) on the same app,
// the warm runtime without per-request cells. (The CGI program imports the
// app from ../wsgi, outside the view of its own directory: its route has
// the host's filesystem, its other confinements on.) The fork route runs under
// the default confinement; the same app on a route with every confinement
// relaxed but its PID namespace per request (what fork routes had before
// they were confined) gives the cost of the confinement as a throughput
// ratio. And the latency breakdown of a fork request, sequential: end to
// end at the client against what the Server-Timing header says of it (the
// admission wait, the hand-off to the preloader and, within it, the
// preloader's own clone, the cell's wall time from the child's start to
// its cell being empty); the rest is cellgate's own (HTTP, routing, the
// cell from the pool, the streams, the response, the record).
//
//	go test -run '^$' -bench Fork ./integration/   # on the host, as root
//	make bench                                     # also in the microVM
var (
	benchForkRequests = flag.Int("fork.requests", 120, "requests to the fork route in BenchmarkFork")
	benchCGIRequests  = flag.Int("fork.cgi-requests", 16, "requests to the cgi route in BenchmarkFork (each starts Python and imports Flask)")
)

const benchForkPolicy = `version: 1
defaults: {memory: 128Mi, cpu: 1, pids: 64, timeout: 120s}
tenants:
  - {name: fork, max_cells: 16, queue: 1000, queue_timeout: 300s}
  - {name: cgi, max_cells: 16, queue: 1000, queue_timeout: 300s}
  - {name: open, max_cells: 16, queue: 1000, queue_timeout: 300s}
routes:
  - {name: flask, match: {path: /flask}, tenant: fork, driver: fork, runtime: python-wsgi, app: "flask_hello:app", app_dir: "%[1]s", memory: 64Mi, server_timing: true}
  - {name: flask-open, match: {path: /flask-open}, tenant: open, driver: fork, runtime: python-wsgi, app: "flask_hello:app", app_dir: "%[1]s", memory: 64Mi,
     filesystem: host, network: host, seccomp: off, host_namespaces: [ipc, uts]}
  - {name: flask-cgi, match: {path: /flask-cgi}, tenant: cgi, program: "%[2]s", filesystem: host}
`

// tenantCPU is a tenant group's cpu.stat usage_usec.
func tenantCPU(b *testing.B, g *gate, tenant string) time.Duration {
	b.Helper()
	return groupCPU(b, g.tenantDir(tenant))
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

	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	run := func(path, tenant string, n int) (benchStats, time.Duration) {
		t0 := tenantCPU(b, g, tenant)
		s := benchLoad(b, client, g.url+path, n, *benchConc, g.cmd.Process.Pid)
		return s, (tenantCPU(b, g, tenant) - t0) / time.Duration(n)
	}
	var fork, open, cgi benchStats
	var forkCPU, openCPU, cgiCPU time.Duration
	var parts handOffParts
	for b.Loop() {
		cgi, cgiCPU = run("/flask-cgi/", "cgi", *benchCGIRequests)
		fork, forkCPU = run("/flask/", "fork", *benchForkRequests)
		open, openCPU = run("/flask-open/", "open", *benchForkRequests)
		parts = forkBreakdown(b, client, g.url+"/flask/", *benchForkRequests/2)
	}
	b.ReportMetric(fork.rps/open.rps, "fork-confined/unconfined-throughput")
	b.Logf("confinement of a fork route: confined %.1f req/s (p50 %.1f ms, p99 %.1f ms), unconfined %.1f req/s (p50 %.1f ms, p99 %.1f ms): "+
		"throughput confined/unconfined %.3f; tenant CPU per request confined %.2f ms, unconfined %.2f ms",
		fork.rps, ms(fork.p50), ms(fork.p99), open.rps, ms(open.p50), ms(open.p99), fork.rps/open.rps, ms(forkCPU), ms(openCPU))
	parts.report(b)
	if gun := gunicorn(b, filepath.Join(examples, "wsgi")); gun != "" {
		gs := benchLoad(b, client, gun+"/", *benchForkRequests, *benchConc, 0)
		b.ReportMetric(fork.rps/gs.rps, "fork/gunicorn-throughput")
		b.Logf("gunicorn sync -w 2 --preload: %.1f req/s (p50 %.1f ms, p99 %.1f ms); fork/gunicorn throughput %.3f",
			gs.rps, float64(gs.p50)/1e6, float64(gs.p99)/1e6, fork.rps/gs.rps)
	}
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

// gunicorn serves the Flask hello with 2 sync workers and --preload on a
// loopback port until the benchmark ends, and returns its URL; "" when
// Debian's gunicorn is not installed (make python-deps installs it).
func gunicorn(b *testing.B, appDir string) string {
	b.Helper()
	bin := "/usr/bin/gunicorn"
	if _, err := os.Stat(bin); err != nil {
		b.Logf("no %s: no gunicorn baseline", bin)
		return ""
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	cmd := exec.Command(bin, "--preload", "-w", "2", "-k", "sync", "-b", addr, "--chdir", appDir, "--log-level", "warning", "flask_hello:app")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		cmd.Wait()
	})
	for deadline := time.Now().Add(2 * time.Minute); time.Now().Before(deadline); time.Sleep(100 * time.Millisecond) {
		if c, err := net.Dial("tcp", addr); err == nil {
			c.Close()
			return "http://" + addr
		}
	}
	b.Fatalf("gunicorn did not listen on %s", addr)
	return ""
}

// handOffParts are, per request, where a fork request's latency goes.
type handOffParts struct {
	e2e, wait, spawn, clone, cell, rest []time.Duration
}

// forkBreakdown sends n sequential requests to a fork route with
// server_timing and splits each one's latency at the client by its
// Server-Timing header: wait, spawn (of it clone, the preloader's own
// part), cell, and the rest.
func forkBreakdown(b *testing.B, client *http.Client, url string, n int) handOffParts {
	b.Helper()
	var p handOffParts
	for i := 0; i < n; i++ {
		t0 := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		e2e := time.Since(t0)
		if resp.StatusCode != 200 {
			b.Fatalf("GET %s: %d", url, resp.StatusCode)
		}
		st := serverTiming(resp.Header.Get("Server-Timing"))
		if _, ok := st["spawn"]; !ok {
			b.Fatalf("GET %s: no spawn in Server-Timing %q", url, resp.Header.Get("Server-Timing"))
		}
		p.e2e = append(p.e2e, e2e)
		p.wait = append(p.wait, st["wait"])
		p.spawn = append(p.spawn, st["spawn"])
		p.clone = append(p.clone, st["clone"])
		p.cell = append(p.cell, st["cell"])
		p.rest = append(p.rest, e2e-st["wait"]-st["spawn"]-st["cell"])
	}
	return p
}

// serverTiming parses "name;dur=MS, ..." into durations.
func serverTiming(h string) map[string]time.Duration {
	m := map[string]time.Duration{}
	for _, part := range strings.Split(h, ",") {
		name, dur, ok := strings.Cut(strings.TrimSpace(part), ";dur=")
		if !ok {
			continue
		}
		if v, err := strconv.ParseFloat(dur, 64); err == nil {
			m[name] = time.Duration(v * float64(time.Millisecond))
		}
	}
	return m
}

func (p handOffParts) report(b *testing.B) {
	q := func(d []time.Duration, f float64) float64 {
		s := slices.Clone(d)
		slices.Sort(s)
		return float64(s[min(len(s)-1, int(f*float64(len(s))))]) / float64(time.Millisecond)
	}
	if len(p.e2e) == 0 {
		return
	}
	b.ReportMetric(q(p.e2e, .5)/q(p.clone, .5), "fork-e2e/clone-p50")
	b.ReportMetric(q(p.e2e, .99)/q(p.clone, .99), "fork-e2e/clone-p99")
	b.Logf("fork request latency, %d sequential, p50 / p99 in ms: end to end %.2f / %.2f; the preloader's clone %.2f / %.2f; "+
		"the whole hand-off (clone, the socket both ways, cellgate's checks of the child) %.2f / %.2f; "+
		"the cell (the child's run and exit to the cell empty) %.2f / %.2f; admission wait %.2f / %.2f; "+
		"the rest, cellgate's own (HTTP, routing, the cell from the pool, streams, response, record) %.2f / %.2f",
		len(p.e2e), q(p.e2e, .5), q(p.e2e, .99), q(p.clone, .5), q(p.clone, .99), q(p.spawn, .5), q(p.spawn, .99),
		q(p.cell, .5), q(p.cell, .99), q(p.wait, .5), q(p.wait, .99), q(p.rest, .5), q(p.rest, .99))
}
