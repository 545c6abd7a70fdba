package integration

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"text/template"
	"time"
)

// Issue 4, end to end: the built `cellgate serve` on a real cgroup v2
// kernel, driven over loopback. Every test stops the server with SIGTERM
// and checks that its cgroup base is gone (startGate's cleanup).
//
// Under the microVM everything is emulated: counts are the issue's, waits
// are bounded, and no test asserts a timing: on a shared, noisy machine a
// latency ratio is a measurement (logged here, reported by the benchmarks),
// not a pass/fail condition.

// gatePolicy is the policy of the issue 4 tests: the example programs, a
// tenant for ordinary requests, one for memory hogs and one for the
// slow-reader test, so that each can be watched on its own.
const gatePolicy = `version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 60s}
tenants:
  - {name: web, memory: 1Gi, queue: 1000, queue_timeout: 120s}
  - {name: hogs, memory: 512Mi, queue: 100, queue_timeout: 120s}
  - {name: slowread, queue: 10, queue_timeout: 60s}
routes:
  - {name: echo, match: {path: /echo}, tenant: web, program: "{{.CGI}}/echo"}
  - {name: hello, match: {path: /hello}, tenant: web, program: "{{.CGI}}/hello"}
  - {name: slow, match: {path: /slow}, tenant: web, program: "{{.CGI}}/slow"}
  - {name: daemon, match: {path: /daemon}, tenant: web, program: "{{.CGI}}/daemon"}
  - {name: malformed, match: {path: /malformed}, tenant: web, program: "{{.CGI}}/malformed"}
  - {name: hog, match: {path: /hog}, tenant: hogs, program: "{{.CGI}}/memhog", memory: 64Mi}
  - {name: big, match: {path: /big}, tenant: slowread, program: "{{.CGI}}/slow"}
`

// echoReply is what examples/cgi/echo answers.
type echoReply struct {
	Method string            `json:"method"`
	Path   string            `json:"path"`
	Query  string            `json:"query"`
	Env    map[string]string `json:"env"`
	Body   string            `json:"body"`
	UID    int               `json:"uid"`
}

func decodeEcho(t *testing.T, body string) echoReply {
	t.Helper()
	var r echoReply
	if err := json.Unmarshal([]byte(body), &r); err != nil {
		t.Fatalf("echo reply %q: %v", body, err)
	}
	return r
}

// TestGateRoundTrips: a GET with a query and a POST with a body reach the
// worker as CGI meta-variables and stdin, and a Proxy header (httpoxy)
// never becomes HTTP_PROXY in the worker's environment.
func TestGateRoundTrips(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})

	status, _, body := g.get("/echo/a/b?x=1&y=two%20words", "Proxy", "http://evil.example:3128", "X-Custom", "yes")
	if status != 200 {
		t.Fatalf("GET /echo: status %d, body %q", status, body)
	}
	r := decodeEcho(t, body)
	if r.Method != "GET" || r.Path != "/echo/a/b" || r.Query != "x=1&y=two%20words" || r.Body != "" {
		t.Errorf("GET /echo reached the worker as %+v", r)
	}
	if r.Env["SCRIPT_NAME"] != "/echo" || r.Env["PATH_INFO"] != "/a/b" || r.Env["HTTP_X_CUSTOM"] != "yes" {
		t.Errorf("GET /echo: SCRIPT_NAME=%q PATH_INFO=%q HTTP_X_CUSTOM=%q", r.Env["SCRIPT_NAME"], r.Env["PATH_INFO"], r.Env["HTTP_X_CUSTOM"])
	}
	for k, v := range r.Env {
		if strings.EqualFold(k, "HTTP_PROXY") || strings.Contains(v, "evil.example") {
			t.Errorf("the Proxy header reached the worker: %s=%q", k, v)
		}
	}
	if r.UID == 0 {
		t.Errorf("the worker ran as root")
	}

	payload := strings.Repeat("body bytes, ", 5000) + "end"
	req, err := http.NewRequest("POST", g.url+"/echo?form=1", strings.NewReader(payload))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Content-Type", "text/plain")
	req.Header.Set("Proxy", "http://evil.example:3128")
	status, _, body = g.do(req)
	if status != 200 {
		t.Fatalf("POST /echo: status %d, body %q", status, body)
	}
	r = decodeEcho(t, body)
	if r.Method != "POST" || r.Query != "form=1" || r.Body != payload {
		t.Errorf("POST /echo reached the worker as method %q query %q body of %d bytes (want %d)", r.Method, r.Query, len(r.Body), len(payload))
	}
	if r.Env["CONTENT_LENGTH"] != strconv.Itoa(len(payload)) || r.Env["CONTENT_TYPE"] != "text/plain" {
		t.Errorf("POST /echo: CONTENT_LENGTH=%q CONTENT_TYPE=%q", r.Env["CONTENT_LENGTH"], r.Env["CONTENT_TYPE"])
	}
	if _, ok := r.Env["HTTP_PROXY"]; ok {
		t.Errorf("the Proxy header reached the worker: HTTP_PROXY=%q", r.Env["HTTP_PROXY"])
	}
	recs := g.waitRecords("echo", 2, 10*time.Second)
	for _, rec := range recs {
		if rec.Cell == nil || rec.Outcome != "ok" || rec.Status != 200 {
			t.Errorf("access log: %+v, want a cell, outcome ok, status 200", rec)
		}
	}
}

// TestGateConcurrentRequests: 300 requests, 32 at a time, each in its own
// cell, all answered.
func TestGateConcurrentRequests(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	const n, conc = 300, 32
	rs := load(g.client, n, conc, func(i int) *http.Request {
		req, _ := http.NewRequest("POST", fmt.Sprintf("%s/echo?i=%d", g.url, i), strings.NewReader(strconv.Itoa(i)))
		return req
	})
	checkAll(t, "300 concurrent requests", rs, 200)
	recs := g.waitRecords("echo", n, 30*time.Second)
	cells := 0
	for _, r := range recs {
		if r.Cell != nil && r.Outcome == "ok" {
			cells++
		}
	}
	if cells != n {
		t.Errorf("access log: %d records of a cell that ended ok, want %d", cells, n)
	}
	t.Logf("300 requests at concurrency 32: p50 %s, p99 %s", quantile(rs, .5), quantile(rs, .99))
}

// TestGateMemoryHog: a request that touches 256 MiB under a 64 MiB limit
// gets 502 and is logged as an OOM kill, while 50 concurrent ordinary
// requests all get 200.
func TestGateMemoryHog(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	const hogs, normal = 3, 50
	var wg sync.WaitGroup
	hogResults := make([]result, hogs)
	for i := range hogs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			hogResults[i] = load(g.client, 1, 1, getter(g.url+"/hog?mb=256&hold=500"))[0]
		}()
	}
	rs := load(g.client, normal, normal, getter(g.url+"/hello"))
	wg.Wait()
	checkAll(t, "50 ordinary requests beside the hogs", rs, 200)
	checkAll(t, "memory hogs", hogResults, 502)
	for _, r := range g.waitRecords("hog", hogs, 30*time.Second) {
		if r.Status != 502 || r.Outcome != "oom" || r.Cell == nil || !r.Cell.OOMKilled {
			t.Errorf("hog's access-log record: status %d outcome %q cell %+v; want 502, oom, oom_killed", r.Status, r.Outcome, r.Cell)
		}
	}
	for _, r := range g.waitRecords("hello", normal, 30*time.Second) {
		if r.Outcome != "ok" || r.Cell == nil || r.Cell.OOMKilled {
			t.Errorf("ordinary request's record: outcome %q cell %+v; want ok", r.Outcome, r.Cell)
		}
	}
}

// TestGateSlowloris: 1,000 connections that send one header byte a second
// start no cell and are not cut, and ordinary requests meanwhile all
// succeed; their p99 against the p99 measured before, in the same run, is
// logged.
func TestGateSlowloris(t *testing.T) {
	raiseNoFile(t, 8192)
	g := startGate(t, gateOptions{policy: gatePolicy, args: []string{"--header-timeout", "10m"}})
	// The ordinary traffic is one request at a time: on the VM's two
	// vCPUs more would make the baseline CPU-bound already, and the test
	// would measure its own load generator rather than the front.
	const samples, conc, lorises = 100, 1, 1000
	measure := func() []result {
		return load(g.client, samples, conc, getter(g.url+"/hello"))
	}
	measure() // warm the pool and the connections
	before := measure()
	checkAll(t, "unloaded requests", before, 200)
	p99Before := quantile(before, .99)
	recsBefore := len(g.waitRecords("hello", 2*samples, 30*time.Second))

	// The lorises come from 20 loopback addresses, 50 each, under the
	// default per-IP cap. The header timeout is longer than the test, so
	// all 1,000 stay open for the whole measurement. One goroutine feeds
	// them, one byte a second each, spread over the second, so that the
	// load generator's own CPU (emulated, in the VM) stays small.
	conns := make([]net.Conn, lorises)
	t.Cleanup(func() {
		for _, c := range conns {
			if c != nil {
				c.Close()
			}
		}
	})
	dial := make(chan int)
	var wg sync.WaitGroup
	var dialErr error
	var mu sync.Mutex
	for range 32 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range dial {
				c, err := rawConn(t.Context(), g.hostPort(), fmt.Sprintf("127.0.1.%d", 1+i%20))
				mu.Lock()
				if err != nil && dialErr == nil {
					dialErr = err
				}
				conns[i] = c
				mu.Unlock()
			}
		}()
	}
	for i := range lorises {
		dial <- i
	}
	close(dial)
	wg.Wait()
	if dialErr != nil {
		t.Fatalf("open the slowloris connections: %v", dialErr)
	}
	msg := "GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: " + strings.Repeat("a", 4096)
	ctx, cancel := context.WithCancel(t.Context())
	fed := make(chan int, 1)
	go func() {
		broken := 0
		defer func() { fed <- broken }()
		const slices = 100 // a tenth of the connections every 10 ms
		tick := time.NewTicker(time.Second / slices)
		defer tick.Stop()
		for k := 0; ; k++ {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			pos := (k / slices) % len(msg)
			for i := k % slices; i < lorises; i += slices {
				if _, err := conns[i].Write([]byte{msg[pos]}); err != nil {
					broken++
				}
			}
		}
	}()
	time.Sleep(3 * time.Second) // every loris has sent a few bytes
	during := measure()
	cancel()
	broken := <-fed
	checkAll(t, "requests during the slowloris", during, 200)
	if broken > 0 {
		t.Errorf("%d one-byte writes of the slowloris connections failed: the server closed them during the test", broken)
	}
	p99During := quantile(during, .99)
	t.Logf("hello p99 unloaded %s, beside %d slowloris connections %s (%.2fx)", p99Before, lorises, p99During, float64(p99During)/float64(p99Before))
	// Every record since the baseline is one of the measured requests:
	// no slowloris connection reached a handler, let alone a cell.
	g.waitRecords("hello", recsBefore+samples, 30*time.Second)
	time.Sleep(time.Second) // a stray record would be written by now
	recs := g.records()[recsBefore:]
	if len(recs) != samples {
		t.Errorf("access log: %d records while the slowloris ran, want exactly the %d measured requests", len(recs), samples)
	}
	for _, r := range recs {
		if r.Path != "/hello" || r.Status != 200 {
			t.Errorf("record during the slowloris: %+v", r)
		}
	}
	m := g.metrics()
	if got := metric(m, "cellgate_requests_total", map[string]string{"route": "hello"}); got != float64(3*samples) {
		t.Errorf("cellgate_requests_total{route=hello} = %v, want %d (the measured requests only)", got, 3*samples)
	}
}

// TestGateSlowBody: a client that sends its body at one byte a second gets
// 408 and no cell runs for it.
func TestGateSlowBody(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy, args: []string{"--body-rate-grace", "2s", "--body-min-rate", "1Ki"}})
	c, err := rawConn(t.Context(), g.hostPort(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, "POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	got := make(chan string, 1)
	go func() {
		b, _ := io.ReadAll(c)
		got <- string(b)
	}()
	var resp string
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	deadline := time.After(60 * time.Second)
send:
	for {
		select {
		case resp = <-got:
			break send
		case <-tick.C:
			c.Write([]byte("x"))
		case <-deadline:
			t.Fatalf("no response to a body sent at 1 byte/s within 60s")
		}
	}
	if !strings.HasPrefix(resp, "HTTP/1.1 408") {
		t.Errorf("slow body: response %q, want 408", firstLine(resp))
	}
	recs := g.waitRecords("echo", 1, 10*time.Second)
	if r := recs[0]; r.Status != 408 || r.Outcome != "client_timeout" || r.Cell != nil {
		t.Errorf("slow body's record: status %d outcome %q cell %+v; want 408, client_timeout, no cell", r.Status, r.Outcome, r.Cell)
	}
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	return strings.TrimSpace(line)
}

// TestGateSlowReader: a client reading a 4 MiB response at one byte a
// second does not hold the cell: the worker is gone from cgroupfs while the
// response is still being sent.
func TestGateSlowReader(t *testing.T) {
	// No cells set up ahead: the test watches the tenant's group empty,
	// and an idle warm cell's init would keep it populated.
	g := startGate(t, gateOptions{policy: gatePolicy, args: []string{"--warm-cells", "0", "--resident-cells", "0"}})
	c, err := rawConn(t.Context(), g.hostPort(), "")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if tc, ok := c.(*net.TCPConn); ok {
		tc.SetReadBuffer(4096) // keep the kernel from buffering the response for us
	}
	if _, err := io.WriteString(c, "GET /big?ms=0&bytes=4194304 HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		t.Fatal(err)
	}
	tenant := g.tenantDir("slowread")
	buf := make([]byte, 1)
	read, sawCell, ended := 0, false, false
	deadline := time.Now().Add(60 * time.Second)
	for !ended && time.Now().Before(deadline) {
		if populated(t, tenant) {
			sawCell = true
		} else if read > 0 {
			ended = true // the response has begun and the tenant has no process left
			break
		}
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		read += n
		if err != nil && !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("read the response after %d bytes: %v", read, err)
		}
		time.Sleep(time.Second)
	}
	t.Logf("read %d bytes at 1 byte/s; worker seen running: %v; cell ended: %v", read, sawCell, ended)
	if !ended {
		t.Fatalf("the cell of a response read at 1 byte/s was still populated after 60s (%d bytes read)", read)
	}
	if read >= 4<<20 {
		t.Fatalf("the whole response was read before the check")
	}
	// The response is still being sent: the rest keeps coming.
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(make([]byte, 4096)); n == 0 {
		t.Errorf("after the cell ended, no more of the response: %v", err)
	}
}

// TestGateMalformedOutput: a worker whose output is not a CGI response
// gets the client a 502, never the garbage.
func TestGateMalformedOutput(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	for _, kind := range []string{"noheader", "status", "truncated"} {
		status, _, body := g.get("/malformed?kind=" + kind)
		if status != 502 {
			t.Errorf("malformed output %s: status %d, want 502", kind, status)
		}
		if strings.Contains(body, "this is not a CGI header") || strings.Contains(body, "bad status") {
			t.Errorf("malformed output %s reached the client: %q", kind, body)
		}
	}
	for _, r := range g.waitRecords("malformed", 3, 10*time.Second) {
		if r.Status != 502 || r.Cell == nil {
			t.Errorf("malformed output's record: status %d outcome %q cell %v; want 502 with a cell", r.Status, r.Outcome, r.Cell != nil)
		}
	}
}

// TestGateDaemonKilled: a worker that double-forks a daemon and exits:
// once the response is in, the daemon is dead. The pid the worker reports
// is the daemon's in the cell's PID namespace, so the host is searched
// for the daemon's command line instead.
func TestGateDaemonKilled(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	status, _, body := g.get("/daemon?s=600")
	if status != 200 {
		t.Fatalf("GET /daemon: status %d, body %q", status, body)
	}
	f := strings.Fields(body)
	if len(f) != 3 || f[0] != "daemon" || f[1] != "pid" {
		t.Fatalf("GET /daemon: body %q, want \"daemon pid N\"", body)
	}
	ents, err := os.ReadDir("/proc")
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil || !strings.Contains(string(b), "cellgate-example-daemon-sleep") {
			continue
		}
		pid, _ := strconv.Atoi(e.Name())
		if state := procState(pid); state != "" && state != "Z" && state != "X" {
			t.Errorf("the worker's daemon (pid %d, %q) is alive (state %s) after the response", pid, b, state)
		}
	}
}

// procState is the state letter of a process, "" when it does not exist.
func procState(pid int) string {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return ""
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 || i+3 > len(s) {
		return ""
	}
	return s[i+2 : i+3]
}

// TestGateSIGTERMInFlight: SIGTERM while requests run: they complete, the
// server exits 0, and nothing is left in cgroupfs. Each request sleeps
// 12 s: four times the 3 s within which all eight always ran (the
// requests' length before, in the emulated microVM under the race
// detector too), and a fifth of serve's --drain-timeout (60 s), which
// lets them finish.
func TestGateSIGTERMInFlight(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	const n = 8
	done := make(chan []result, 1)
	go func() { done <- load(g.client, n, n, getter(g.url+"/slow?ms=12000")) }()
	deadline := time.Now().Add(60 * time.Second)
	for metric(g.metrics(), "cellgate_cells_in_flight", map[string]string{"tenant": "web"}) < n {
		if time.Now().After(deadline) {
			t.Fatalf("%d requests not in flight after 60s", n)
		}
		time.Sleep(20 * time.Millisecond)
	}
	// None has ended: the drain is what each of them must outlast.
	if recs := g.recordsFor("slow"); len(recs) > 0 {
		t.Fatalf("%d of the requests ended before SIGTERM", len(recs))
	}
	g.signal(syscall.SIGTERM)
	rs := <-done
	checkAll(t, "requests in flight at SIGTERM", rs, 200)
	select {
	case <-g.exited:
	case <-time.After(2 * time.Minute):
		t.Fatalf("cellgate serve still running 2 minutes after SIGTERM")
	}
	if g.err != nil {
		t.Errorf("cellgate serve after SIGTERM: %v", g.err)
	}
	if _, err := os.Stat(g.base); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup base %s still there after SIGTERM", g.base)
	}
	recs := g.recordsFor("slow")
	if len(recs) != n {
		t.Errorf("access log: %d records of the requests in flight, want %d", len(recs), n)
	}
	for _, r := range recs {
		if r.Status != 200 || r.Outcome != "ok" {
			t.Errorf("request in flight at SIGTERM: status %d outcome %q", r.Status, r.Outcome)
		}
	}
}

// The end-to-end harness: the built binary started as `cellgate serve` on a
// private cgroup base, a policy written for the test, an access-log file,
// loopback ports chosen by the kernel, and a bounded load generator.

// gateOptions configure startGate.
type gateOptions struct {
	// policy is the policy file's text, a text/template: {{.CGI}} is the
	// directory of the example CGI programs (bin/cgi), {{.Dir}} the
	// policy file's own.
	policy string
	// base is the cgroup base ("" = <requireKernel's group>/gate).
	base string
	// args are more serve flags.
	args []string
	// bin is the cellgate binary ("" = CELLGATE_BIN's).
	bin string
	// init starts serve as pid 1 of a PID namespace of its own, with a
	// /proc of that namespace (as a container's entrypoint; runAsInit).
	init bool
	// openDir makes the policy file's directory (and the test's temporary
	// one above it) searchable by all before serve starts: a fork route
	// that mounts it has its preloader, a uid of the range, open it then.
	openDir bool
}

// gate is one running `cellgate serve`.
type gate struct {
	t          testing.TB
	cmd        *exec.Cmd
	url        string // http://127.0.0.1:PORT
	admin      string // http://127.0.0.1:PORT
	base       string // the cgroup base
	policyPath string
	accessLog  string
	client     *http.Client

	mu     sync.Mutex
	stderr bytes.Buffer
	exited chan struct{}
	err    error // cmd.Wait's, once exited is closed
}

// cgiDir returns the directory of the example CGI programs, built by make
// examples beside the cellgate binary.
func cgiDir(t testing.TB) string {
	t.Helper()
	dir := filepath.Join(filepath.Dir(cellgateBin(t)), "cgi")
	for _, p := range []string{"hello", "echo", "memhog", "spin", "slow", "daemon", "malformed"} {
		if _, err := os.Stat(filepath.Join(dir, p)); err != nil {
			skipOrFail(t, "example CGI program missing: %v (run make examples)", err)
		}
	}
	return dir
}

// writePolicy renders a policy template into the file path.
func writePolicy(t testing.TB, path, text string) {
	t.Helper()
	tmpl, err := template.New("policy").Option("missingkey=error").Parse(text)
	if err != nil {
		t.Fatalf("policy template: %v", err)
	}
	var buf bytes.Buffer
	if err := tmpl.Execute(&buf, map[string]string{"CGI": cgiDir(t), "Dir": filepath.Dir(path)}); err != nil {
		t.Fatalf("policy template: %v", err)
	}
	if err := os.WriteFile(path, buf.Bytes(), 0o644); err != nil {
		t.Fatalf("write policy: %v", err)
	}
}

// servingRE matches serve's start-up line with the bound addresses.
var servingRE = regexp.MustCompile(`msg=serving listen=(\S+) admin=(\S+)`)

// startGate starts cellgate serve on loopback ports the kernel picks and
// returns once it serves. The test's cleanup stops it with SIGTERM (unless
// the test did) and checks that it exited 0 and left nothing in cgroupfs.
func startGate(t testing.TB, o gateOptions) *gate {
	t.Helper()
	g, addrs := launchGate(t, o)
	select {
	case a := <-addrs:
		g.url, g.admin = "http://"+a[0], "http://"+a[1]
	case <-g.exited:
		t.Fatalf("cellgate serve exited during start-up (%v):\n%s", g.err, g.log())
	case <-time.After(2 * time.Minute):
		t.Fatalf("cellgate serve did not start serving in 2 minutes:\n%s", g.log())
	}
	g.client = &http.Client{
		Transport: &http.Transport{MaxIdleConnsPerHost: 64, DisableCompression: true},
		Timeout:   2 * time.Minute,
	}
	t.Cleanup(g.client.CloseIdleConnections)
	return g
}

// launchGate starts cellgate serve as startGate does, and returns at once,
// with where its listen and admin addresses come once it serves (a test
// of its start-up reads its log and signals it before then). The cleanup
// is startGate's.
func launchGate(t testing.TB, o gateOptions) (*gate, <-chan []string) {
	t.Helper()
	bin := o.bin
	if bin == "" {
		bin = cellgateBin(t)
	}
	base := o.base
	if base == "" {
		base = filepath.Join(requireKernel(t), "gate")
	}
	trackBase(base)
	dir := t.TempDir()
	if o.openDir {
		for _, d := range []string{filepath.Dir(dir), dir} {
			if err := os.Chmod(d, 0o755); err != nil {
				t.Fatal(err)
			}
		}
	}
	g := &gate{
		t:          t,
		base:       base,
		policyPath: filepath.Join(dir, "policy.yaml"),
		accessLog:  filepath.Join(dir, "access.log"),
		exited:     make(chan struct{}),
	}
	writePolicy(t, g.policyPath, o.policy)
	args := append([]string{"serve",
		"--policy", g.policyPath,
		"--listen", "127.0.0.1:0",
		"--admin", "127.0.0.1:0",
		"--cgroup-base", base,
		"--access-log", g.accessLog,
		"--drain-timeout", "60s",
	}, o.args...)
	g.cmd = exec.Command(bin, args...)
	g.cmd.Env = os.Environ()
	if o.init {
		g.cmd = exec.Command(os.Args[0], append([]string{bin}, args...)...)
		g.cmd.Env = append(os.Environ(), cellHelperEnv+"="+roleInit)
		g.cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWPID | syscall.CLONE_NEWNS}
	}
	g.cmd.Stdout = io.Discard
	stderr, err := g.cmd.StderrPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := g.cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	addrs := make(chan []string, 1)
	go func() {
		sc := bufio.NewScanner(stderr)
		for sc.Scan() {
			line := sc.Text()
			g.mu.Lock()
			g.stderr.WriteString(line + "\n")
			g.mu.Unlock()
			if m := servingRE.FindStringSubmatch(line); m != nil {
				addrs <- m[1:]
			}
		}
		g.err = g.cmd.Wait()
		close(g.exited)
	}()
	t.Cleanup(func() {
		g.stop()
		if t.Failed() {
			t.Logf("cellgate serve's log:\n%s", g.log())
		}
	})
	return g, addrs
}

// log is serve's stderr so far.
func (g *gate) log() string {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.stderr.String()
}

// waitLog waits until serve's log has n lines containing substr.
func (g *gate) waitLog(substr string, n int, timeout time.Duration) {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for strings.Count(g.log(), substr) < n {
		if time.Now().After(deadline) {
			g.t.Fatalf("serve's log has %d lines with %q after %s, want %d:\n%s", strings.Count(g.log(), substr), substr, timeout, n, g.log())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// signal sends sig to serve.
func (g *gate) signal(sig syscall.Signal) {
	g.t.Helper()
	if err := g.cmd.Process.Signal(sig); err != nil {
		g.t.Fatalf("signal %v to cellgate serve: %v", sig, err)
	}
}

// TestGateExitFailsOnLeftovers: serve whose cgroup tree cannot be removed
// at its stop (a group below a tenant's that the kernel will not rmdir:
// a mount point here, a process in uninterruptible sleep in the field)
// says so and exits 1, as README promises for "cells or groups left
// behind". Before, the teardown's error went to a variable of its own and
// serve exited 0 without a word.
func TestGateExitFailsOnLeftovers(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	if status, _, body := g.get("/hello"); status != 200 {
		t.Fatalf("GET /hello: %d %q", status, body)
	}
	stuck := filepath.Join(g.tenantDir("web"), "stuck")
	if err := os.Mkdir(stuck, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := syscall.Mount("tmpfs", stuck, "tmpfs", 0, "size=4k"); err != nil {
		t.Fatalf("mount a tmpfs on %s: %v", stuck, err)
	}
	g.signal(syscall.SIGTERM)
	select {
	case <-g.exited:
	case <-time.After(2 * time.Minute):
		t.Fatal("cellgate serve still running 2 minutes after SIGTERM")
	}
	var ee *exec.ExitError
	if !errors.As(g.err, &ee) || ee.ExitCode() != 1 || !strings.Contains(g.log(), g.tenantDir("web")+":") {
		t.Errorf("cellgate serve with %s left: %v, want exit status 1 and a log naming the group left\n%s", stuck, g.err, g.log())
	}
	// Clean up as an operator would: the mount gone, the groups removed.
	g.err = nil
	if err := syscall.Unmount(stuck, 0); err != nil {
		t.Fatal(err)
	}
	var dirs []string
	filepath.WalkDir(g.base, func(p string, d os.DirEntry, err error) error {
		if err == nil && d.IsDir() {
			dirs = append(dirs, p)
		}
		return nil
	})
	for _, d := range slices.Backward(dirs) {
		if err := os.Remove(d); err != nil {
			t.Errorf("remove what serve left: %v", err)
		}
	}
}

// stop sends SIGTERM (once), waits for serve to exit, and checks that it
// exited 0 and that its cgroup base is gone: every cell, tenant group and
// the base removed.
func (g *gate) stop() {
	g.t.Helper()
	select {
	case <-g.exited:
	default:
		g.cmd.Process.Signal(syscall.SIGTERM)
	}
	select {
	case <-g.exited:
	case <-time.After(2 * time.Minute):
		g.cmd.Process.Kill()
		<-g.exited
		g.t.Errorf("cellgate serve did not exit within 2 minutes of SIGTERM")
	}
	if g.err != nil {
		g.t.Errorf("cellgate serve: %v", g.err)
	}
	if _, err := os.Stat(g.base); !errors.Is(err, os.ErrNotExist) {
		var left []string
		filepath.WalkDir(g.base, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				left = append(left, p)
			}
			return nil
		})
		g.t.Errorf("cgroupfs after cellgate serve exited: %s still there (%d groups: %q)", g.base, len(left), left)
	}
}

// get sends a GET and returns the status and body.
func (g *gate) get(path string, header ...string) (int, http.Header, string) {
	g.t.Helper()
	status, h, body, err := g.tryGet(path, header...)
	if err != nil {
		g.t.Fatal(err)
	}
	return status, h, body
}

func (g *gate) do(req *http.Request) (int, http.Header, string) {
	g.t.Helper()
	status, h, body, err := g.tryDo(req)
	if err != nil {
		g.t.Fatal(err)
	}
	return status, h, body
}

// reply is one request's answer, as a goroutine other than the test's
// hands it back: only the test's goroutine may fail the test.
type reply struct {
	status int
	header http.Header
	body   string
	err    error
}

// tryGet is get for any goroutine: a failure is returned, not reported.
func (g *gate) tryGet(path string, header ...string) (int, http.Header, string, error) {
	req, err := http.NewRequest("GET", g.url+path, nil)
	if err != nil {
		return 0, nil, "", err
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	return g.tryDo(req)
}

// tryDo is do for any goroutine: a failure is returned, not reported.
func (g *gate) tryDo(req *http.Request) (int, http.Header, string, error) {
	resp, err := g.client.Do(req)
	if err != nil {
		return 0, nil, "", fmt.Errorf("%s %s: %w", req.Method, req.URL, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return 0, nil, "", fmt.Errorf("%s %s: read body: %w", req.Method, req.URL, err)
	}
	return resp.StatusCode, resp.Header, string(body), nil
}

// getReply is tryGet's answer as one value, for a channel.
func (g *gate) getReply(path string, header ...string) reply {
	var r reply
	r.status, r.header, r.body, r.err = g.tryGet(path, header...)
	return r
}

// metrics returns the admin listener's /metrics text.
func (g *gate) metrics() string {
	g.t.Helper()
	resp, err := g.client.Get(g.admin + "/metrics")
	if err != nil {
		g.t.Fatalf("GET /metrics: %v", err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		g.t.Fatalf("GET /metrics: %d %v", resp.StatusCode, err)
	}
	return string(b)
}

// metric returns the value of the sample whose name and labels (in any
// order) match, or -1 when there is none.
func metric(text, name string, labels map[string]string) float64 {
	for _, line := range strings.Split(text, "\n") {
		if !strings.HasPrefix(line, name) || strings.HasPrefix(line, "#") {
			continue
		}
		rest := line[len(name):]
		lbl, val := "", rest
		if strings.HasPrefix(rest, "{") {
			end := strings.IndexByte(rest, '}')
			if end < 0 {
				continue
			}
			lbl, val = rest[1:end], rest[end+1:]
		} else if !strings.HasPrefix(rest, " ") {
			continue // a longer metric name
		}
		ok := true
		for k, v := range labels {
			if !strings.Contains(","+lbl+",", ","+k+"=\""+v+"\",") {
				ok = false
			}
		}
		if !ok {
			continue
		}
		var f float64
		if _, err := fmt.Sscan(strings.TrimSpace(val), &f); err == nil {
			return f
		}
	}
	return -1
}

// accessRecord is one access-log line (the keys the tests read).
type accessRecord struct {
	Time      time.Time `json:"time"`
	RequestID string    `json:"request_id"`
	Method    string    `json:"method"`
	Path      string    `json:"path"`
	Status    int       `json:"status"`
	Route     string    `json:"route"`
	Tenant    string    `json:"tenant"`
	Outcome   string    `json:"outcome"`
	WaitUsec  int64     `json:"wait_usec"`
	Duration  int64     `json:"duration_usec"`
	Cell      *struct {
		WallUsec     int64    `json:"wall_usec"`
		CPUUsageUsec int64    `json:"cpu_usage_usec"`
		MemoryPeak   uint64   `json:"memory_peak_bytes"`
		OOMKilled    bool     `json:"oom_killed"`
		PidsPeak     *uint64  `json:"pids_peak"`
		ExitCode     int      `json:"exit_code"`
		Missing      []string `json:"missing"`
	} `json:"cell"`
}

// records reads the access log so far.
func (g *gate) records() []accessRecord {
	g.t.Helper()
	b, err := os.ReadFile(g.accessLog)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		g.t.Fatalf("read access log: %v", err)
	}
	// serve may be appending a record right now: only lines that end in a
	// newline are complete.
	if i := bytes.LastIndexByte(b, '\n'); i >= 0 {
		b = b[:i+1]
	} else {
		b = nil
	}
	var out []accessRecord
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSpace(line)) == 0 {
			continue
		}
		var r accessRecord
		if err := json.Unmarshal(line, &r); err != nil {
			g.t.Fatalf("access log line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

// recordsFor returns the access-log records of a route.
func (g *gate) recordsFor(route string) []accessRecord {
	g.t.Helper()
	var out []accessRecord
	for _, r := range g.records() {
		if r.Route == route {
			out = append(out, r)
		}
	}
	return out
}

// waitRecords waits until the access log has n records of route.
func (g *gate) waitRecords(route string, n int, timeout time.Duration) []accessRecord {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		rs := g.recordsFor(route)
		if len(rs) >= n {
			return rs
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("access log has %d records of route %s after %s, want %d", len(rs), route, timeout, n)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// tenantDir is a tenant's group in serve's tree.
func (g *gate) tenantDir(tenant string) string { return filepath.Join(g.base, "cells", tenant) }

// populated reads a group's cgroup.events populated flag.
func populated(t testing.TB, dir string) bool {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.events"))
	if err != nil {
		t.Fatalf("read cgroup.events: %v", err)
	}
	return strings.Contains(string(b), "populated 1")
}

// result is one request of a load run.
type result struct {
	status  int
	latency time.Duration
	err     error
}

// load sends n requests made by mk with at most conc in flight, and
// returns their results in request order. It stops by itself: every
// request has the client's timeout.
func load(client *http.Client, n, conc int, mk func(i int) *http.Request) []result {
	out := make([]result, n)
	next := make(chan int)
	var wg sync.WaitGroup
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range next {
				req := mk(i)
				start := time.Now()
				resp, err := client.Do(req)
				if err == nil {
					_, err = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					out[i].status = resp.StatusCode
				}
				out[i].latency, out[i].err = time.Since(start), err
			}
		}()
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	return out
}

// getter returns a load request maker for GET url.
func getter(url string) func(int) *http.Request {
	return func(int) *http.Request {
		req, err := http.NewRequest("GET", url, nil)
		if err != nil {
			panic(err)
		}
		return req
	}
}

// checkAll fails the test unless every result has status want.
func checkAll(t testing.TB, what string, rs []result, want int) {
	t.Helper()
	bad := 0
	for i, r := range rs {
		if r.err != nil || r.status != want {
			if bad < 5 {
				t.Errorf("%s: request %d: status %d, err %v; want %d", what, i, r.status, r.err, want)
			}
			bad++
		}
	}
	if bad > 0 {
		t.Errorf("%s: %d of %d requests did not get %d", what, bad, len(rs), want)
	}
}

// quantile is the q-quantile (0..1) of the results' latencies, nearest
// rank.
func quantile(rs []result, q float64) time.Duration {
	if len(rs) == 0 {
		return 0
	}
	l := make([]time.Duration, len(rs))
	for i, r := range rs {
		l[i] = r.latency
	}
	slices.Sort(l)
	idx := int(q*float64(len(l))+0.999999) - 1
	return l[max(0, min(idx, len(l)-1))]
}

// rawRequest opens a connection from the local address laddr ("" = any)
// and writes s.
func rawConn(ctx context.Context, addr, laddr string) (net.Conn, error) {
	d := net.Dialer{Timeout: 10 * time.Second}
	if laddr != "" {
		d.LocalAddr = &net.TCPAddr{IP: net.ParseIP(laddr)}
	}
	return d.DialContext(ctx, "tcp", addr)
}

// hostPort is the gate's public host:port.
func (g *gate) hostPort() string { return strings.TrimPrefix(g.url, "http://") }

// raiseNoFile raises the soft RLIMIT_NOFILE to at least n (up to the hard
// limit) for this process and the servers it starts.
func raiseNoFile(t testing.TB, n uint64) {
	t.Helper()
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("getrlimit: %v", err)
	}
	if rl.Cur >= n {
		return
	}
	old := rl
	rl.Cur = min(n, rl.Max)
	if rl.Cur < n && os.Geteuid() == 0 {
		rl.Max, rl.Cur = n, n
	}
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		t.Fatalf("setrlimit NOFILE %d: %v", n, err)
	}
	t.Cleanup(func() { syscall.Setrlimit(syscall.RLIMIT_NOFILE, &old) })
}

// TestGateDrainTimeoutKillsCells: SIGTERM with a request that outlasts the
// drain timeout: its cell is killed when the timeout passes, the request
// is logged as ended by the shutdown, and the server exits 0 with nothing
// left in cgroupfs.
func TestGateDrainTimeoutKillsCells(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy, args: []string{"--drain-timeout", "2s"}})
	done := make(chan result, 1)
	go func() { done <- load(g.client, 1, 1, getter(g.url+"/slow?ms=300000"))[0] }()
	g.waitMetric("cellgate_cells_in_flight", map[string]string{"tenant": "web"}, 1, time.Minute)
	g.signal(syscall.SIGTERM)
	select {
	case r := <-done:
		if r.err == nil && r.status == 200 {
			t.Errorf("a request longer than the drain timeout got 200")
		}
	case <-time.After(2 * time.Minute):
		t.Fatalf("the request in flight did not end within 2 minutes of SIGTERM with a 2s drain timeout")
	}
	select {
	case <-g.exited:
	case <-time.After(2 * time.Minute):
		t.Fatalf("cellgate serve still running 2 minutes after SIGTERM")
	}
	if g.err != nil {
		t.Errorf("cellgate serve after SIGTERM: %v", g.err)
	}
	recs := g.recordsFor("slow")
	if len(recs) != 1 {
		t.Fatalf("access log: %d records of the request in flight, want 1", len(recs))
	}
	if r := recs[0]; (r.Outcome != "killed" && r.Outcome != "shutdown") || r.Cell == nil {
		t.Errorf("the request cut off by the drain timeout: outcome %q status %d cell %v; want killed or shutdown, with its cell", r.Outcome, r.Status, r.Cell != nil)
	}
}
