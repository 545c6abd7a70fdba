package integration

import (
	"bufio"
	"flag"
	"fmt"
	"net"
	"net/http"
	"net/http/cgi"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// cellgate serve against the CGI servers people run without a sandbox, on
// the same host, the same programs (the static Go hello of examples/cgi and
// the /bin/sh hello.sh beside it) and the same bounded closed-loop load
// (concurrency 16, after a warm-up of each): cellgate with every
// confinement on (the default, resident cells), the same with each
// request's group one an earlier request used (groups: reused), the same
// with a cell set up per request (--resident-cells 0), cellgate with
// every confinement relaxed by
// its policy key, cellgate without cells (--isolation none: plain fork and
// exec, the front's own cost), Go's net/http/cgi, and nginx with
// fcgiwrap. Rounds
// interleave the servers; each figure is the median of the rounds. Reported as ratios to
// net/http/cgi: requests/s, p50, p99, and CPU per request of the whole
// server (for cellgate its own process plus its tenant group's cpu.stat,
// which holds every cell and init; for the others their cgroup's cpu.stat),
// and the whole machine's busy CPU per request (/proc/stat, read a moment
// after each run: the kernel's work a run defers to kworkers, such as a
// removed group's or a network namespace's end, is no server's own;
// the load generator's is in every server's figure alike).
// The differences between the cellgate lines price the front (plain
// against net/http/cgi), the cell with its init (unconfined against
// plain) and the confinement (default against unconfined), and what
// resident cells save (default against fresh), and what a group per
// request costs (default against reused); from
// cellgate's access log, where its time goes: the request's time in
// the server outside the cell (taking and setting up the cell, the
// hand-off, copying the response, reading the accounting), the cell's wall
// time (init start, the program, until the cell is empty) and the cell's
// CPU.
//
//	make bench                                            # in the microVM
//	go test -run '^$' -bench CGIServers ./integration/    # on the host, as root
//
// nginx and fcgiwrap are Debian's (make bench installs them); without them
// that server is left out with a log line.

var (
	serversRequests = flag.Int("servers.requests", 100, "requests per server, program and round in BenchmarkCGIServers (the microVM emulates its CPU: 100 x 3 rounds x 8 take minutes there)")
	serversConc     = flag.Int("servers.conc", 16, "concurrent requests in BenchmarkCGIServers")
	serversRounds   = flag.Int("servers.rounds", 3, "interleaved rounds of BenchmarkCGIServers; each figure is the median")
)

// serversPolicy serves both programs in one tenant (its cpu.stat is the
// cells' CPU). %[1]s is the hello.sh path, %[2]s the confinement keys of
// each route ("" for the default, every confinement on).
const serversPolicy = `version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 60s}
tenants:
  - {name: bench, queue: 1000, queue_timeout: 300s}
routes:
  - {name: hello, match: {path: /hello}, tenant: bench, program: "{{.CGI}}/hello"%[2]s}
  - {name: sh, match: {path: /hello.sh}, tenant: bench, program: %[1]q%[2]s}
`

// unconfinedKeys relax every confinement a cgi route has by default, each
// with its own key (examples/policy.yaml).
const unconfinedKeys = `, network: host, filesystem: host, seccomp: off, host_namespaces: [pid, ipc, uts]`

// cgiServer is one server under test: its base URL and how to read the
// CPU time it (and everything it started) has used so far.
type cgiServer struct {
	name string
	url  string
	cpu  func() time.Duration
	gate *gate // cellgate's, for its access log
}

// BenchmarkCGIServers: see the comment at the top of the file.
func BenchmarkCGIServers(b *testing.B) {
	base, unenforced := benchSetup(b)
	hello := filepath.Join(cgiDir(b), "hello")
	sh, err := filepath.Abs(filepath.Join("..", "examples", "cgi", "hello.sh"))
	if err != nil {
		b.Fatal(err)
	}
	var extra []string
	if unenforced {
		extra = []string{"--unenforced", "memory,cpu,pids"}
	}
	cellgate := func(name, keys, suffix string, args ...string) cgiServer {
		g := startGate(b, gateOptions{policy: fmt.Sprintf(serversPolicy, sh, keys), base: base + suffix, args: append(args, extra...)})
		pid := g.cmd.Process.Pid
		return cgiServer{name: name, url: g.url, gate: g, cpu: func() time.Duration {
			self, children := cpuTimes(b, pid)
			if slices.Contains(args, "--isolation") { // none: its workers are its reaped children
				return self + children
			}
			return self + tenantCPU(b, g, "bench")
		}}
	}
	peers := newPeerGroups(b, base+"-peers")
	servers := []cgiServer{
		cellgate("cellgate", "", ""),
		cellgate("cellgate-reused", ", groups: reused", "-reused"),
		cellgate("cellgate-fresh", "", "-fresh", "--resident-cells", "0"),
		cellgate("cellgate-unconfined", unconfinedKeys, "-unconfined"),
		cellgate("cellgate-plain", "", "-plain", "--isolation", "none"),
		goCGI(b, peers, hello, sh),
	}
	if s, ok := nginxFcgiwrap(b, peers, hello, sh); ok {
		servers = append(servers, s)
	}
	programs := []struct{ name, path string }{{"hello", "/hello"}, {"sh", "/hello.sh"}}
	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: 2 * *serversConc, DisableCompression: true}, Timeout: 5 * time.Minute}
	b.Cleanup(client.CloseIdleConnections)

	n := *serversRequests
	type key struct{ server, program string }
	runs := map[key][]benchStats{}
	for b.Loop() {
		for _, p := range programs {
			for _, s := range servers {
				checkAll(b, "warm-up "+s.name+p.path, load(client, *serversConc, *serversConc, getter(s.url+p.path)), http.StatusOK)
			}
		}
		for range max(1, *serversRounds) {
			for _, p := range programs {
				for _, s := range servers {
					m0, err := busyTicks()
					if err != nil {
						b.Fatal(err)
					}
					c0, start := s.cpu(), time.Now()
					rs := load(client, n, *serversConc, getter(s.url+p.path))
					elapsed, c1 := time.Since(start), s.cpu()
					// What the run left to the kernel (a removed
					// group's, a network namespace's end) is done
					// within a moment of its last answer.
					time.Sleep(settleKernel)
					m1, err := busyTicks()
					if err != nil {
						b.Fatal(err)
					}
					if s.gate != nil {
						checkAll(b, s.name+p.path, rs, http.StatusOK)
					} else if bad := failed(rs); bad > 0 {
						// A peer's failure is the peer's: said, not fatal.
						b.Logf("%s%s: %d of %d requests did not get 200", s.name, p.path, bad, n)
					}
					runs[key{s.name, p.name}] = append(runs[key{s.name, p.name}], benchStats{
						rps: float64(n) / elapsed.Seconds(), p50: quantile(rs, .5), p99: quantile(rs, .99),
						server:  (c1 - c0) / time.Duration(n),
						machine: time.Duration(m1-m0) * time.Second / clockTicks / time.Duration(n),
					})
				}
			}
		}
	}
	ms := func(d time.Duration) float64 { return float64(d) / float64(time.Millisecond) }
	var report strings.Builder
	fmt.Fprintf(&report, "%d requests x %d rounds (medians), concurrency %d", n, max(1, *serversRounds), *serversConc)
	if unenforced {
		report.WriteString(", unenforced host (no memory/cpu/pids controllers)")
	}
	for _, p := range programs {
		ref := medianStats(runs[key{"net/http/cgi", p.name}])
		fmt.Fprintf(&report, "\n%s program, ratios to net/http/cgi (%.0f req/s, p50 %.2f ms, p99 %.2f ms, CPU %.2f ms/req, machine %.2f ms/req):",
			p.name, ref.rps, ms(ref.p50), ms(ref.p99), ms(ref.server), ms(ref.machine))
		for _, s := range servers {
			m := medianStats(runs[key{s.name, p.name}])
			fmt.Fprintf(&report, "\n  %-20s %7.0f req/s  throughput %.3f  p50 %.3f  p99 %.3f  CPU/req %.2f ms (%.3f)  machine/req %.2f ms (%.3f)",
				s.name, m.rps, m.rps/ref.rps, ms(m.p50)/ms(ref.p50), ms(m.p99)/ms(ref.p99), ms(m.server), ms(m.server)/ms(ref.server),
				ms(m.machine), ms(m.machine)/ms(ref.machine))
			if s.name != "net/http/cgi" {
				unit := strings.NewReplacer("/", "", "+", "-").Replace(s.name) + "-" + p.name
				b.ReportMetric(m.rps/ref.rps, unit+"/gocgi-throughput")
				b.ReportMetric(ms(m.server)/ms(ref.server), unit+"/gocgi-cpu")
				b.ReportMetric(ms(m.machine)/ms(ref.machine), unit+"/gocgi-machine-cpu")
			}
		}
	}
	report.WriteString("\nwhere cellgate's time goes (access log means over every request of the run, microseconds):")
	for _, s := range servers {
		if s.gate == nil || s.name == "cellgate-plain" {
			continue
		}
		for _, p := range programs {
			ph := phases(s.gate.recordsFor(p.name))
			fmt.Fprintf(&report, "\n  %-20s %-5s request %6.0f = outside the cell %6.0f + cell wall %6.0f (cell CPU %5.0f); admission wait %4.0f",
				s.name, p.name, ph.duration, ph.duration-ph.wall, ph.wall, ph.cpu, ph.wait)
		}
	}
	// Why a confined request started an init: a warm or resident cell
	// missed, and why resident cells ended (each end a later miss).
	for _, s := range servers {
		if s.gate == nil || s.name == "cellgate-plain" {
			continue
		}
		m := s.gate.metrics()
		fmt.Fprintf(&report, "\n  %-20s warm or resident cell found %.0f, started %.0f; resident cells ended:", s.name,
			metric(m, "cellgate_warm_cells_total", map[string]string{"result": "hit"}), metric(m, "cellgate_warm_cells_total", map[string]string{"result": "miss"}))
		for _, why := range sandbox.ResidentEndReasons() {
			fmt.Fprintf(&report, " %s %.0f", why, metric(m, "cellgate_resident_ended_total", map[string]string{"reason": why.String()}))
		}
	}
	// On stdout, not b.Log: go test keeps only the first 10 lines of a
	// benchmark's log without -v.
	fmt.Println("BenchmarkCGIServers: " + report.String())
}

// failed counts the results that are not a 200.
func failed(rs []result) int {
	n := 0
	for _, r := range rs {
		if r.err != nil || r.status != http.StatusOK {
			n++
		}
	}
	return n
}

// medianStats is the median of each figure over the rounds.
func medianStats(rs []benchStats) benchStats {
	med := func(f func(benchStats) float64) float64 {
		v := make([]float64, len(rs))
		for i, r := range rs {
			v[i] = f(r)
		}
		slices.Sort(v)
		if len(v) == 0 {
			return 0
		}
		return v[len(v)/2]
	}
	return benchStats{
		rps:     med(func(s benchStats) float64 { return s.rps }),
		p50:     time.Duration(med(func(s benchStats) float64 { return float64(s.p50) })),
		p99:     time.Duration(med(func(s benchStats) float64 { return float64(s.p99) })),
		server:  time.Duration(med(func(s benchStats) float64 { return float64(s.server) })),
		machine: time.Duration(med(func(s benchStats) float64 { return float64(s.machine) })),
	}
}

// phaseMeans are means of access-log figures, in microseconds.
type phaseMeans struct{ duration, wall, cpu, wait float64 }

func phases(recs []accessRecord) phaseMeans {
	var m phaseMeans
	n := 0.0
	for _, r := range recs {
		if r.Cell == nil || r.Status != http.StatusOK {
			continue
		}
		m.duration += float64(r.Duration)
		m.wall += float64(r.Cell.WallUsec)
		m.cpu += float64(r.Cell.CPUUsageUsec)
		m.wait += float64(r.WaitUsec)
		n++
	}
	if n > 0 {
		m = phaseMeans{m.duration / n, m.wall / n, m.cpu / n, m.wait / n}
	}
	return m
}

// peerGroups are cgroups of the servers compared with cellgate, one per
// server, so that each one's CPU (its own, its workers' and every process
// it started) is one cpu.stat.
type peerGroups struct {
	b   *testing.B
	dir string
}

func newPeerGroups(b *testing.B, dir string) *peerGroups {
	b.Helper()
	if err := os.Mkdir(dir, 0o755); err != nil {
		b.Fatalf("mkdir %s: %v", dir, err)
	}
	b.Cleanup(func() { removeTree(b, dir) })
	return &peerGroups{b: b, dir: dir}
}

// start starts cmd in a new group name, and stops it (SIGTERM, then the
// group's cgroup.kill) when the benchmark ends.
func (p *peerGroups) start(name string, cmd *exec.Cmd) func() time.Duration {
	p.b.Helper()
	dir := filepath.Join(p.dir, name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		p.b.Fatalf("mkdir %s: %v", dir, err)
	}
	fd, err := syscall.Open(dir, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
	if err != nil {
		p.b.Fatalf("open %s: %v", dir, err)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
	err = cmd.Start()
	syscall.Close(fd)
	if err != nil {
		p.b.Fatalf("start %s: %v", cmd.Path, err)
	}
	p.b.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
			<-done
		}
		os.WriteFile(filepath.Join(dir, "cgroup.kill"), []byte("1"), 0)
	})
	return func() time.Duration { return groupCPU(p.b, dir) }
}

// goCGI serves hello and hello.sh with Go's net/http/cgi, in the test
// binary's "gocgi" role (runGoCGI) as a server process of its own.
func goCGI(b *testing.B, peers *peerGroups, hello, sh string) cgiServer {
	b.Helper()
	cmd := exec.Command(os.Args[0], hello, sh)
	cmd.Env = append(os.Environ(), cellHelperEnv+"=gocgi")
	cmd.Stderr = os.Stderr
	out, err := cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	cpu := peers.start("gocgi", cmd)
	line, err := bufio.NewReader(out).ReadString('\n')
	addr, ok := strings.CutPrefix(strings.TrimSpace(line), "listening ")
	if err != nil || !ok {
		b.Fatalf("net/http/cgi server: first line %q, %v", line, err)
	}
	return cgiServer{name: "net/http/cgi", url: "http://" + addr, cpu: cpu}
}

// runGoCGI is the "gocgi" role: net/http/cgi serving args[0] at /hello and
// args[1] at /hello.sh on a loopback port it prints, until SIGTERM.
func runGoCGI(args []string) int {
	if len(args) != 2 {
		fmt.Fprintln(os.Stderr, "gocgi: want HELLO HELLO.SH")
		return 2
	}
	mux := http.NewServeMux()
	mux.Handle("/hello", &cgi.Handler{Path: args[0]})
	mux.Handle("/hello.sh", &cgi.Handler{Path: args[1]})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "gocgi:", err)
		return 1
	}
	fmt.Printf("listening %s\n", ln.Addr())
	err = http.Serve(ln, mux)
	fmt.Fprintln(os.Stderr, "gocgi:", err)
	return 1
}

// nginxConf serves both programs through fcgiwrap on a unix socket, on
// loopback only, as root (fcgiwrap runs the programs as its own user),
// with every path under the prefix the test made.
const nginxConf = `daemon off;
master_process on;
worker_processes auto;
user root;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path %[1]s/body;
  proxy_temp_path %[1]s/proxy;
  fastcgi_temp_path %[1]s/fastcgi;
  uwsgi_temp_path %[1]s/uwsgi;
  scgi_temp_path %[1]s/scgi;
  server {
    listen %[2]s;
    location = /hello { fastcgi_pass unix:%[1]s/fcgiwrap.sock; fastcgi_param SCRIPT_FILENAME %[3]s; include %[1]s/params; }
    location = /hello.sh { fastcgi_pass unix:%[1]s/fcgiwrap.sock; fastcgi_param SCRIPT_FILENAME %[4]s; include %[1]s/params; }
  }
}
`

// fastcgiParams are the CGI variables nginx passes (Debian's
// fastcgi_params, less what the programs do not read).
const fastcgiParams = `fastcgi_param QUERY_STRING $query_string;
fastcgi_param REQUEST_METHOD $request_method;
fastcgi_param CONTENT_TYPE $content_type;
fastcgi_param CONTENT_LENGTH $content_length;
fastcgi_param SCRIPT_NAME $fastcgi_script_name;
fastcgi_param REQUEST_URI $request_uri;
fastcgi_param SERVER_PROTOCOL $server_protocol;
fastcgi_param GATEWAY_INTERFACE CGI/1.1;
fastcgi_param SERVER_SOFTWARE nginx;
fastcgi_param REMOTE_ADDR $remote_addr;
fastcgi_param REMOTE_PORT $remote_port;
fastcgi_param SERVER_ADDR $server_addr;
fastcgi_param SERVER_PORT $server_port;
fastcgi_param SERVER_NAME $server_name;
`

// nginxFcgiwrap starts fcgiwrap (16 workers, as many as the load's
// concurrency) and nginx in front of it, both in one group; false when
// Debian's nginx or fcgiwrap is not installed.
func nginxFcgiwrap(b *testing.B, peers *peerGroups, hello, sh string) (cgiServer, bool) {
	b.Helper()
	nginx, fcgiwrap := "/usr/sbin/nginx", "/usr/sbin/fcgiwrap"
	for _, p := range []string{nginx, fcgiwrap} {
		if _, err := os.Stat(p); err != nil {
			b.Logf("no %s (make bench installs nginx and fcgiwrap): no nginx + fcgiwrap baseline", p)
			return cgiServer{}, false
		}
	}
	dir := b.TempDir()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close()
	if err := os.WriteFile(filepath.Join(dir, "params"), []byte(fastcgiParams), 0o644); err != nil {
		b.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(fmt.Sprintf(nginxConf, dir, addr, hello, sh)), 0o644); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() {
		if log, _ := os.ReadFile(filepath.Join(dir, "error.log")); len(log) > 0 {
			b.Logf("nginx's error log:\n%s", log)
		}
	})
	sock := filepath.Join(dir, "fcgiwrap.sock")
	fw := exec.Command(fcgiwrap, "-c", strconv.Itoa(*serversConc), "-s", "unix:"+sock)
	fw.Stderr = os.Stderr
	fwCPU := peers.start("fcgiwrap", fw)
	ng := exec.Command(nginx, "-p", dir, "-c", filepath.Join(dir, "nginx.conf"), "-e", filepath.Join(dir, "error.log"))
	ng.Stderr = os.Stderr
	ngCPU := peers.start("nginx", ng)
	for deadline := time.Now().Add(2 * time.Minute); ; time.Sleep(100 * time.Millisecond) {
		_, errSock := os.Stat(sock)
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		if err == nil && errSock == nil {
			break
		}
		if time.Now().After(deadline) {
			log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
			b.Fatalf("nginx on %s and fcgiwrap on %s not ready after 2 minutes (%v, %v); nginx's log:\n%s", addr, sock, err, errSock, log)
		}
	}
	return cgiServer{name: "nginx+fcgiwrap", url: "http://" + addr, cpu: func() time.Duration { return fwCPU() + ngCPU() }}, true
}
