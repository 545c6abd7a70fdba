package integration

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"
)

// The cost of a cell, end to end: the static hello CGI program served by
// cellgate with cells, by the same server with --isolation=none (plain
// fork/exec), and by a trivial in-process Go handler (the upper bound of
// the front itself), each driven over loopback by the same bounded load
// generator in one run, reported as requests/s, p50 and p99, and ratios.
//
//	make bench                      # on the host and in the microVM
//	go test -run '^$' -bench Gate ./integration/   # on the host, as root
//
// On a host whose cgroup v2 has no memory, cpu and pids controllers (these
// development machines: /sys/fs/cgroup/unified) the cells run unenforced
// (--unenforced=memory,cpu,pids) under a uniquely named base on the cgroup2
// mount: creating, spawning into, killing and removing cells is measured,
// enforcing limits is not. In the microVM they run with every controller.

var (
	benchRequests = flag.Int("gate.requests", 0, "requests per server in BenchmarkGate (0: 1000 on an unenforced host, 300 with controllers, which here means the emulated VM)")
	benchConc     = flag.Int("gate.conc", 8, "concurrent requests in BenchmarkGate")
	benchRounds   = flag.Int("gate.rounds", 2, "rounds of BenchmarkGate, interleaving the servers; each server's best round counts")
)

// benchPolicy serves the static hello program in the implicit default
// tenant: no budget, no queue, so admission never holds a request back.
const benchPolicy = `version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 60s}
routes:
  - {name: hello, match: {path: /hello}, program: "{{.CGI}}/hello"}
`

// benchSetup finds the cellgate binary and the cgroup base for a
// benchmark: requireKernel's group where the controllers are delegated,
// otherwise (root on a host with cgroup2 but without the controllers) a
// fresh base on the cgroup2 mount with the controllers unenforced.
func benchSetup(b *testing.B) (base string, unenforced bool) {
	b.Helper()
	if os.Getenv("CELLGATE_BIN") == "" {
		// make bench's native pass does not set it; the binary is built.
		p, err := filepath.Abs("../bin/cellgate")
		if err == nil {
			if _, err = os.Stat(p); err == nil {
				os.Setenv("CELLGATE_BIN", p)
			}
		}
		if err != nil {
			b.Skipf("no cellgate binary (CELLGATE_BIN unset, %v): run make bench", err)
		}
	}
	if os.Geteuid() != 0 {
		b.Skipf("BenchmarkGate needs root for cells (euid %d)", os.Geteuid())
	}
	mnt, err := cgroup2Mount()
	if err != nil {
		b.Skipf("no cgroup v2: %v", err)
	}
	self, err := ownGroup()
	if err != nil {
		b.Skipf("own cgroup: %v", err)
	}
	ctrl, err := os.ReadFile(filepath.Join(mnt, self, "cgroup.subtree_control"))
	if err == nil && strings.Contains(string(ctrl), "memory") && strings.Contains(string(ctrl), "cpu") && strings.Contains(string(ctrl), "pids") {
		return filepath.Join(requireKernel(b), "bench"), false
	}
	if required() {
		requireKernel(b) // fails: the kernel tests were asked for
	}
	return filepath.Join(mnt, fmt.Sprintf("cellgate-bench-%d-%d", os.Getpid(), testSeq.Add(1))), true
}

// benchStats is one server's figures.
type benchStats struct {
	rps      float64
	p50, p99 time.Duration
	// server and workers are the CPU time per request of the server
	// process itself and of the workers it reaped (0 for in-process).
	server, workers time.Duration
	// machine is the whole machine's busy CPU time per request
	// (/proc/stat: every process and the kernel's deferred work in
	// kworkers, which no server's own figures show); BenchmarkCGIServers
	// only.
	machine time.Duration
}

// benchLoad drives url with n requests, conc at a time, after a warm-up,
// and fails the benchmark on any status but 200. pid is the server's
// process, whose CPU time is read around the run (0: none).
func benchLoad(b *testing.B, client *http.Client, url string, n, conc, pid int) benchStats {
	b.Helper()
	checkAll(b, "warm-up "+url, load(client, 4*conc, conc, getter(url)), 200)
	self0, kids0 := cpuTimes(b, pid)
	start := time.Now()
	rs := load(client, n, conc, getter(url))
	elapsed := time.Since(start)
	self1, kids1 := cpuTimes(b, pid)
	checkAll(b, url, rs, 200)
	return benchStats{
		rps: float64(n) / elapsed.Seconds(), p50: quantile(rs, .5), p99: quantile(rs, .99),
		server: (self1 - self0) / time.Duration(n), workers: (kids1 - kids0) / time.Duration(n),
	}
}

// cpuTimes reads a process's own CPU time (utime+stime) and that of its
// reaped children (cutime+cstime) from /proc/PID/stat.
func cpuTimes(b *testing.B, pid int) (self, children time.Duration) {
	b.Helper()
	if pid == 0 {
		return 0, 0
	}
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		b.Fatalf("read the server's CPU time: %v", err)
	}
	s := string(st)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+1:])
	// After the comm: state(3) ppid(4) ... utime(14) stime(15) cutime(16)
	// cstime(17), counted from 1 with pid and comm as fields 1 and 2.
	tick := func(i int) time.Duration {
		v, err := strconv.ParseInt(f[i-3], 10, 64)
		if err != nil {
			b.Fatalf("/proc/%d/stat field %d %q: %v", pid, i, f[i-3], err)
		}
		return time.Duration(v) * time.Second / clockTicks
	}
	return tick(14) + tick(15), tick(16) + tick(17)
}

// clockTicks is USER_HZ, the unit of /proc/PID/stat's times: 100 on Linux
// on every architecture Go supports.
const clockTicks = 100

// inProcess serves a trivial handler answering what the hello program
// answers, on loopback, until the benchmark ends.
func inProcess(b *testing.B) string {
	b.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		w.Write([]byte("hello from a cell\n"))
	})}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	b.Cleanup(func() {
		srv.Close()
		if err := <-done; !errors.Is(err, http.ErrServerClosed) {
			b.Errorf("in-process server: %v", err)
		}
	})
	return "http://" + ln.Addr().String()
}

// BenchmarkGate reports, in one run: requests/s, p50 and p99 (ms) of the
// hello CGI with cells, with plain exec and of an in-process handler, and
// the ratios cells/plain and cells/in-process.
func BenchmarkGate(b *testing.B) {
	base, unenforced := benchSetup(b)
	n := *benchRequests
	if n <= 0 {
		n = 300
		if unenforced {
			n = 1000
		}
	}
	var extra []string
	if unenforced {
		extra = []string{"--unenforced", "memory,cpu,pids"}
	}
	cells := startGate(b, gateOptions{policy: benchPolicy, base: base, args: extra})
	plain := startGate(b, gateOptions{policy: benchPolicy, base: base + "-plain", args: []string{"--isolation", "none"}})
	inproc := inProcess(b)
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * *benchConc, DisableCompression: true}, Timeout: 2 * time.Minute}
	b.Cleanup(client.CloseIdleConnections)

	best := func(cur, next benchStats) benchStats {
		if next.rps > cur.rps {
			return next
		}
		return cur
	}
	var sc, sp, si benchStats
	for b.Loop() {
		for range max(1, *benchRounds) {
			sp = best(sp, benchLoad(b, client, plain.url+"/hello", n, *benchConc, plain.cmd.Process.Pid))
			sc = best(sc, benchLoad(b, client, cells.url+"/hello", n, *benchConc, cells.cmd.Process.Pid))
			si = best(si, benchLoad(b, client, inproc+"/hello", n, *benchConc, 0))
		}
	}
	m := cells.metrics()
	hits := metric(m, "cellgate_pool_gets_total", map[string]string{"result": "hit"})
	misses := metric(m, "cellgate_pool_gets_total", map[string]string{"result": "miss"})
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(sc.rps, "cells-req/s")
	b.ReportMetric(sp.rps, "plain-req/s")
	b.ReportMetric(si.rps, "inproc-req/s")
	b.ReportMetric(ms(sc.p50), "cells-p50-ms")
	b.ReportMetric(ms(sc.p99), "cells-p99-ms")
	b.ReportMetric(ms(sp.p50), "plain-p50-ms")
	b.ReportMetric(ms(sp.p99), "plain-p99-ms")
	b.ReportMetric(ms(si.p50), "inproc-p50-ms")
	b.ReportMetric(ms(si.p99), "inproc-p99-ms")
	b.ReportMetric(sc.rps/sp.rps, "cells/plain-throughput")
	b.ReportMetric(sc.rps/si.rps, "cells/inproc-throughput")
	b.ReportMetric(ms(sc.p99)/ms(sp.p99), "cells/plain-p99")
	b.ReportMetric(ms(sc.server), "cells-server-cpu-ms/req")
	b.ReportMetric(ms(sc.workers), "cells-worker-cpu-ms/req")
	b.ReportMetric(ms(sp.server), "plain-server-cpu-ms/req")
	b.ReportMetric(ms(sp.workers), "plain-worker-cpu-ms/req")
	b.ReportMetric(hits/(hits+misses), "cells-pool-hit-ratio")
	mode := "controllers enforced"
	if unenforced {
		mode = "unenforced host (no memory/cpu/pids controllers)"
	}
	b.Logf("%s; %d requests x %d rounds, concurrency %d: cells %.0f req/s (p50 %.1f ms, p99 %.1f ms), plain exec %.0f req/s (p50 %.1f, p99 %.1f), in-process %.0f req/s; cells/plain throughput %.3f; CPU per request: cells server %.2f ms + workers %.2f ms, plain server %.2f ms + workers %.2f ms; pre-created cells %.0f of %.0f",
		mode, n, *benchRounds, *benchConc, sc.rps, ms(sc.p50), ms(sc.p99), sp.rps, ms(sp.p50), ms(sp.p99), si.rps, sc.rps/sp.rps,
		ms(sc.server), ms(sc.workers), ms(sp.server), ms(sp.workers), hits, hits+misses)
}

// benchRootPolicy serves the hello program twice: under a uid of the
// range, and run as root (root of a user namespace of its own).
const benchRootPolicy = `version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 60s}
routes:
  - {name: hello, match: {path: /hello}, program: "{{.CGI}}/hello"}
  - {name: root, match: {path: /root}, program: "{{.CGI}}/hello", user: root, allow_root: true}
`

// BenchmarkGateRoot reports, in one run, what a route run as root costs
// against the same program run under a uid of the range, through serve:
// sequential requests, the two routes alternating in rounds (-gate.rounds,
// at least 5 here), the whole machine's busy CPU per request (/proc/stat,
// read a moment after each route's run) and the p50 of each; the medians
// of the rounds, as ratios (root/hello-machine-cpu, root/hello-p50). A
// route run as root keeps its resident cells as any route (its program is
// root of a user namespace that owns none of the cell's namespaces):
// before it did, each of its requests ended one and the next started
// another, about 2x the CPU and 1.2x the p50.
func BenchmarkGateRoot(b *testing.B) {
	base, unenforced := benchSetup(b)
	var extra []string
	if unenforced {
		extra = []string{"--unenforced", "memory,cpu,pids"}
	}
	g := startGate(b, gateOptions{policy: benchRootPolicy, base: base, args: extra})
	client := &http.Client{Transport: &http.Transport{DisableCompression: true}, Timeout: 2 * time.Minute}
	b.Cleanup(client.CloseIdleConnections)
	const n = 40 // requests per route and round
	routes := []string{"/hello", "/root"}
	runs := map[string][]benchStats{}
	for b.Loop() {
		for _, p := range routes {
			checkAll(b, "warm-up "+p, load(client, 20, 1, getter(g.url+p)), http.StatusOK)
		}
		for range max(5, *benchRounds) {
			for _, p := range routes {
				m0, err := busyTicks()
				if err != nil {
					b.Fatal(err)
				}
				rs := load(client, n, 1, getter(g.url+p))
				time.Sleep(settleKernel)
				m1, err := busyTicks()
				if err != nil {
					b.Fatal(err)
				}
				checkAll(b, p, rs, http.StatusOK)
				runs[p] = append(runs[p], benchStats{p50: quantile(rs, .5), machine: time.Duration(m1-m0) * time.Second / clockTicks / n})
			}
		}
	}
	hello, root := medianStats(runs["/hello"]), medianStats(runs["/root"])
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	b.ReportMetric(ms(root.machine)/ms(hello.machine), "root/hello-machine-cpu")
	b.ReportMetric(ms(root.p50)/ms(hello.p50), "root/hello-p50")
	ended := metric(g.metrics(), "cellgate_resident_ended_total", map[string]string{"reason": "root"})
	b.Logf("%d rounds of %d sequential requests per route: hello p50 %.2f ms, machine %.2f ms/req; root p50 %.2f ms (%.3f), machine %.2f ms/req (%.3f); resident cells ended for a program run as the host's root: %.0f",
		len(runs["/hello"]), n, ms(hello.p50), ms(hello.machine), ms(root.p50), ms(root.p50)/ms(hello.p50), ms(root.machine), ms(root.machine)/ms(hello.machine), ended)
}
