package integration

import (
	"bufio"
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
	"sync"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// The front end under attack (issue 9), in one run each: a closed-loop
// normal client of the hello CGI before, during and after an attack on
// `cellgate serve` (the built binary), reported as ratios of its own
// unloaded figures. The attacker is this test binary started again as a
// separate process in a cgroup of its own, so that its CPU is read from
// its own cpu.stat, and it is reported beside the ratios (on the VM's two
// CPUs the attacker's own CPU is taken from what serve and the cells
// could have had); the normal client (this process) reports its CPU too.
// The machine's load drifts, so the normal client's unloaded figures are
// measured before the attack and again after it, and the ratios are of
// their mean. In the microVM (make bench):
//
//	make build examples vmrun && CELLGATE_REQUIRE_KERNEL_TESTS=1 \
//	  CELLGATE_BIN=$PWD/bin/cellgate go test -count=1 -run '^$' \
//	  -bench 'GateSlowloris|GateSlowReaders' -benchtime 1x -timeout 25m \
//	  -exec "$PWD/bin/vmrun -mem 2G -smp 2 -timeout 25m" ./integration/
//
// -attack.profile=true takes a CPU profile of serve during the attack
// (serve --admin-pprof) and logs its top functions.

var (
	attackPhase = flag.Duration("attack.phase", 10*time.Second, "length of each measured phase of BenchmarkGateSlowloris and BenchmarkGateSlowReaders")
	// The VM's temporary directory, where the spool files go, is a tmpfs
	// within its 2 GiB: 50 responses of the 64 MiB (3.2 GiB) cannot
	// be held there, and the spool budget would refuse most of them before
	// any reader stalled. 12 MiB each (600 MiB) are held whole.
	attackReadSize = flag.Int("attack.readsize", 12<<20, "response size of BenchmarkGateSlowReaders' slow readers")
	attackBefore   = flag.String("attack.before", "", "earlier cellgate binaries (comma-separated) to measure first, in the same run (reported under their file names)")
	attackProfile  = flag.Bool("attack.profile", false, "take a CPU profile of serve during the attack and log its top functions (needs go on PATH)")
)

// earlierBuilds are -attack.before's binaries.
func earlierBuilds() []string {
	if *attackBefore == "" {
		return nil
	}
	return strings.Split(*attackBefore, ",")
}

// attackLife is how long an attacker keeps its connections after it is
// ready, unless stopped before: the measured phase with room to spare
// for the benchmark's waits and the profile.
func attackLife() time.Duration { return 3**attackPhase + 3*time.Minute }

// Attacker roles of the test binary (runCellHelper).
const (
	roleLoris      = "loris"
	roleSlowReader = "slowreader"
)

// BenchmarkGateSlowloris: 5,000 connections each holding a request head
// open, one more byte a second (the header timeout raised so that they
// stay), beside a closed-loop client of /hello on one keep-alive
// connection. Reported: the client's throughput and p99 during the attack
// as ratios of its own without it (the mean of before and after), serve's RSS and threads with and
// without the attack, serve's CPU per normal request in both phases, the
// CPU of the attacker and of the client as shares of one CPU, and the
// head bytes a second the attacker managed (5,000 is the plan). With
// -attack.before=BINARY,... the same is measured first with each of those
// serve binaries (earlier builds), in the same run, and reported under
// their file names.
func BenchmarkGateSlowloris(b *testing.B) {
	for b.Loop() {
		for _, bin := range earlierBuilds() {
			lorisRun(b, bin).report(b, filepath.Base(bin)+"-")
		}
		lorisRun(b, cellgateBin(b)).report(b, "")
	}
}

// lorisFigures are one BenchmarkGateSlowloris run's.
type lorisFigures struct {
	base, during, after phaseStats
	lorises             int
	headRate            float64 // bytes a second the lorises sent
}

func lorisRun(b *testing.B, bin string) lorisFigures {
	const lorises = 5000
	raiseNoFile(b, 3*lorises)
	args := []string{"--header-timeout", "10m", "--max-conns", strconv.Itoa(2 * lorises), "--max-conns-per-ip", "-1"}
	if *attackProfile {
		args = append(args, "--admin-pprof")
	}
	g := startGate(b, gateOptions{policy: benchPolicy, args: args, bin: bin})
	defer g.stop()
	closedLoop(b, g.client, g.url+"/hello", *attackPhase/4) // warm the pool and the connection
	base := measurePhase(b, g, "")

	att := startAttacker(b, roleLoris, g.hostPort(), strconv.Itoa(lorises), attackLife().String())
	waitMetric(b, g, "cellgate_connections_open", lorises, 2*time.Minute)
	time.Sleep(2 * time.Second) // every loris has sent a byte more
	profile := startProfile(b, g)
	during := measurePhase(b, g, att.group)
	prof := profile()
	if open := metric(g.metrics(), "cellgate_connections_open", nil); open < lorises {
		b.Errorf("%v connections open at the end of the attack, want all %d lorises still held", open, lorises)
	}
	att.stop(b)
	after := measurePhase(b, g, "")
	var writes int
	var secs float64
	if _, err := fmt.Sscanf(att.summary, "%d writes in %gs", &writes, &secs); err != nil || secs == 0 {
		b.Errorf("the loris attacker's summary %q: %v", att.summary, err)
	}
	logProfile(b, g, prof)
	b.Logf("%s, %d lorises: normal client %.2f req/s (p99 %s) unloaded, %.2f req/s (p99 %s) during, %.2f req/s (p99 %s) after; serve RSS %.1f MiB -> %.1f MiB, threads %d -> %d, CPU %.0f%% -> %.0f%% of one CPU; attacker %.0f%% (%.0f head bytes/s), client %.0f%% -> %.0f%%",
		filepath.Base(bin), lorises, base.rps, base.p99, during.rps, during.p99, after.rps, after.p99, float64(base.rss)/(1<<20), float64(during.rss)/(1<<20),
		base.threads, during.threads, 100*base.serveShare, 100*during.serveShare, 100*during.attackerCPU, float64(writes)/secs, 100*base.clientCPU, 100*during.clientCPU)
	return lorisFigures{base: base, during: during, after: after, lorises: lorises, headRate: float64(writes) / secs}
}

func (f lorisFigures) report(b *testing.B, prefix string) {
	base, during := f.base, f.during
	unloaded := (base.rps + f.after.rps) / 2
	unloadedP99 := float64(base.p99+f.after.p99) / 2
	b.ReportMetric(during.rps/unloaded, prefix+"throughput/base")
	b.ReportMetric(float64(during.p99)/unloadedP99, prefix+"p99/base")
	b.ReportMetric(f.after.rps/base.rps, prefix+"unloaded-drift")
	b.ReportMetric(float64(during.rss)/(1<<20), prefix+"serve-RSS-MiB")
	b.ReportMetric(float64(during.rss-base.rss)/float64(f.lorises), prefix+"serve-RSS-B/loris")
	b.ReportMetric(float64(during.threads), prefix+"serve-threads")
	b.ReportMetric(during.serveCPU/base.serveCPU, prefix+"serve-CPU/req/base")
	b.ReportMetric(100*during.serveShare, prefix+"serve-CPU-%")
	b.ReportMetric(100*during.attackerCPU, prefix+"attacker-CPU-%")
	b.ReportMetric(f.headRate, prefix+"attacker-B/s")
	b.ReportMetric(100*during.clientCPU, prefix+"client-CPU-%")
}

// BenchmarkGateSlowReaders: 50 clients each ask for a large response
// (-attack.readsize), read the first 2.5 MiB and stall, beside the
// closed-loop client of /hello. Reported: the client's p99 during the
// attack, in the first 5 s after the attackers closed their connections
// and in the 5 s after that, as ratios of its p99 before; serve's threads
// and RSS in each phase, and what the access log says of the large
// responses. -attack.before as for BenchmarkGateSlowloris.
func BenchmarkGateSlowReaders(b *testing.B) {
	for b.Loop() {
		for _, bin := range earlierBuilds() {
			readersRun(b, bin).report(b, filepath.Base(bin)+"-")
		}
		readersRun(b, cellgateBin(b)).report(b, "")
	}
}

// readersFigures are one BenchmarkGateSlowReaders run's.
type readersFigures struct {
	base, during, after, later phaseStats
	spoolDisk                  float64
}

func readersRun(b *testing.B, bin string) readersFigures {
	const (
		readers   = 50
		readFirst = 5 << 19
	)
	size := *attackReadSize
	raiseNoFile(b, 4096)
	args := []string{"--max-conns-per-ip", "-1", "--max-response", "100Mi", "--spool-disk", "900Mi"}
	if *attackProfile {
		args = append(args, "--admin-pprof")
	}
	g := startGate(b, gateOptions{policy: benchPolicy + bigRoute, args: args, bin: bin})
	defer g.stop()
	closedLoop(b, g.client, g.url+"/hello", *attackPhase/4)
	base := measurePhase(b, g, "")

	threads := startThreadSampler(b, g.cmd.Process.Pid)
	att := startAttacker(b, roleSlowReader, g.hostPort(), strconv.Itoa(readers), strconv.Itoa(size), strconv.Itoa(readFirst), attackLife().String())
	profile := startProfile(b, g)
	during := measurePhase(b, g, att.group)
	prof := profile()
	spoolDisk := metric(g.metrics(), "cellgate_spool_bytes", map[string]string{"where": "disk"})
	att.stop(b)
	after := measurePhaseFor(b, g, "", 5*time.Second)
	b.Logf("%s: serve's threads during the attack and in the 5 s after: %s", filepath.Base(bin), threads())
	later := measurePhaseFor(b, g, "", 5*time.Second)
	outcomes := map[string]int{}
	for _, r := range g.waitRecords("big", readers, 2*time.Minute) {
		outcomes[fmt.Sprintf("%d %s", r.Status, r.Outcome)]++
	}
	logProfile(b, g, prof)
	b.Logf("%s, %d slow readers of %d MiB: normal p99 %s unloaded, %s during, %s in the 5 s after, %s in the 5 s after that; serve threads %d, %d, %d, %d; spool files %.0f MiB during; attacker: %s; large responses (status outcome: count): %v",
		filepath.Base(bin), readers, size>>20, base.p99, during.p99, after.p99, later.p99, base.threads, during.threads, after.threads, later.threads, spoolDisk/(1<<20), att.summary, outcomes)
	return readersFigures{base: base, during: during, after: after, later: later, spoolDisk: spoolDisk}
}

func (f readersFigures) report(b *testing.B, prefix string) {
	p99 := func(p phaseStats) float64 { return float64(p.p99) / float64(f.base.p99) }
	b.ReportMetric(float64(f.during.p99)/float64(f.base.p99+f.later.p99)*2, prefix+"p99-during/base-and-after5-10s")
	b.ReportMetric(p99(f.during), prefix+"p99-during/base")
	b.ReportMetric(p99(f.after), prefix+"p99-after0-5s/base")
	b.ReportMetric(p99(f.later), prefix+"p99-after5-10s/base")
	b.ReportMetric(f.during.rps/f.base.rps, prefix+"throughput-during/base")
	b.ReportMetric(float64(f.base.threads), prefix+"threads-base")
	b.ReportMetric(float64(f.during.threads), prefix+"threads-during")
	b.ReportMetric(float64(f.later.threads), prefix+"threads-after")
	b.ReportMetric(float64(f.during.rss)/(1<<20), prefix+"serve-RSS-MiB-during")
	b.ReportMetric(f.spoolDisk/(1<<20), prefix+"spool-disk-MiB-during")
	b.ReportMetric(100*f.during.attackerCPU, prefix+"attacker-CPU-%")
	b.ReportMetric(100*f.during.serveShare, prefix+"serve-CPU-%-during")
}

// bigRoute adds the large responses of BenchmarkGateSlowReaders to
// benchPolicy.
const bigRoute = `  - {name: big, match: {path: /big}, program: "{{.CGI}}/slow", timeout: 600s}
`

// phaseStats are one measured phase of the normal client.
type phaseStats struct {
	rps     float64
	p99     time.Duration
	rss     int64 // serve's resident set at the end, bytes
	threads int   // serve's OS threads at the end
	// serveCPU is serve's CPU time per normal request, serveShare the
	// same over the phase as a share of one CPU; attackerCPU and
	// clientCPU are the attacker's group's and this process's CPU as
	// shares of one CPU.
	serveCPU                           float64
	serveShare, attackerCPU, clientCPU float64
}

// measurePhase runs the closed-loop client for -attack.phase and reads
// serve's, the attacker's (its cgroup; "" for none) and its own CPU around
// it.
func measurePhase(b *testing.B, g *gate, attacker string) phaseStats {
	return measurePhaseFor(b, g, attacker, *attackPhase)
}

func measurePhaseFor(b *testing.B, g *gate, attacker string, d time.Duration) phaseStats {
	b.Helper()
	pid := g.cmd.Process.Pid
	serve0, _ := cpuTimes(b, pid)
	att0 := groupCPU(b, attacker)
	self0 := selfCPU(b)
	start := time.Now()
	lat := closedLoop(b, g.client, g.url+"/hello", d)
	elapsed := time.Since(start)
	serve1, _ := cpuTimes(b, pid)
	att1 := groupCPU(b, attacker)
	self1 := selfCPU(b)
	slices.Sort(lat)
	share := func(cpu time.Duration) float64 { return float64(cpu) / float64(elapsed) }
	return phaseStats{
		rps:         float64(len(lat)) / elapsed.Seconds(),
		p99:         lat[(len(lat)*99+99)/100-1],
		rss:         procStatusOf(b, pid, "VmRSS:") << 10,
		threads:     int(procStatusOf(b, pid, "Threads:")),
		serveCPU:    float64(serve1-serve0) / float64(len(lat)),
		serveShare:  share(serve1 - serve0),
		attackerCPU: share(att1 - att0),
		clientCPU:   share(self1 - self0),
	}
}

// closedLoop requests url one at a time for d and returns the latencies;
// anything but a 200 fails the benchmark.
func closedLoop(b *testing.B, client *http.Client, url string, d time.Duration) []time.Duration {
	b.Helper()
	var lat []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		t0 := time.Now()
		resp, err := client.Get(url)
		if err != nil {
			b.Fatalf("normal client: GET %s: %v", url, err)
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			b.Fatalf("normal client: GET %s: status %d, body: %v", url, resp.StatusCode, err)
		}
		lat = append(lat, time.Since(t0))
	}
	if len(lat) == 0 {
		b.Fatalf("normal client: no request finished in %s", d)
	}
	return lat
}

// procStatusOf is the number after key in /proc/PID/status (kB for
// sizes).
func procStatusOf(b *testing.B, pid int, key string) int64 {
	b.Helper()
	st, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		b.Fatalf("read serve's status: %v", err)
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, key); ok {
			n, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			if err != nil {
				b.Fatalf("/proc/%d/status %s%q: %v", pid, key, v, err)
			}
			return n
		}
	}
	b.Fatalf("no %s line in /proc/%d/status", key, pid)
	return 0
}

// groupCPU is a cgroup's usage_usec from its cpu.stat (0 for "").
func groupCPU(b *testing.B, dir string) time.Duration {
	b.Helper()
	if dir == "" {
		return 0
	}
	st, err := os.ReadFile(filepath.Join(dir, "cpu.stat"))
	if err != nil {
		b.Fatalf("read the attacker's CPU: %v", err)
	}
	for line := range strings.Lines(string(st)) {
		if v, ok := strings.CutPrefix(line, "usage_usec "); ok {
			n, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			if err != nil {
				b.Fatalf("%s/cpu.stat usage_usec %q: %v", dir, v, err)
			}
			return time.Duration(n) * time.Microsecond
		}
	}
	b.Fatalf("no usage_usec in %s/cpu.stat", dir)
	return 0
}

// selfCPU is this process's user and system CPU time.
func selfCPU(b *testing.B) time.Duration {
	b.Helper()
	var ru unix.Rusage
	if err := unix.Getrusage(unix.RUSAGE_SELF, &ru); err != nil {
		b.Fatalf("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// waitMetric waits until serve's metric name (no labels) is at least want.
func waitMetric(b *testing.B, g *gate, name string, want float64, timeout time.Duration) {
	b.Helper()
	deadline := time.Now().Add(timeout)
	for {
		got := metric(g.metrics(), name, nil)
		if got >= want {
			return
		}
		if time.Now().After(deadline) {
			b.Fatalf("%s = %v after %s, want %v", name, got, timeout, want)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// attacker is the test binary running an attack role in a cgroup of its
// own, under requireKernel's group.
type attacker struct {
	cmd     *exec.Cmd
	stdin   io.WriteCloser
	group   string
	out     chan string // its stdout lines
	summary string      // its last line, once stopped
}

// startAttacker starts the role with args in a fresh cgroup and waits
// until it says "ready". The role ends by itself after the duration its
// arguments give (counted from "ready"), or when its stdin closes (stop).
func startAttacker(b *testing.B, role string, args ...string) *attacker {
	b.Helper()
	group := filepath.Join(requireKernel(b), "attacker")
	if err := os.Mkdir(group, 0o755); err != nil {
		b.Fatalf("mkdir the attacker's group: %v", err)
	}
	dir, err := os.Open(group)
	if err != nil {
		b.Fatal(err)
	}
	defer dir.Close()
	exe, err := os.Executable()
	if err != nil {
		b.Fatal(err)
	}
	a := &attacker{group: group, out: make(chan string, 16)}
	a.cmd = exec.Command(exe, args...)
	a.cmd.Env = append(os.Environ(), cellHelperEnv+"="+role)
	a.cmd.Stderr = os.Stderr
	a.cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: int(dir.Fd())}
	if a.stdin, err = a.cmd.StdinPipe(); err != nil {
		b.Fatal(err)
	}
	stdout, err := a.cmd.StdoutPipe()
	if err != nil {
		b.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		b.Fatalf("start the %s attacker: %v", role, err)
	}
	go func() {
		defer close(a.out)
		sc := bufio.NewScanner(stdout)
		for sc.Scan() {
			a.out <- sc.Text()
		}
	}()
	b.Cleanup(func() { a.stop(b) })
	select {
	case line, ok := <-a.out:
		if !ok || !strings.HasPrefix(line, "ready") {
			a.stop(b)
			b.Fatalf("the %s attacker did not start: %q", role, line)
		}
	case <-time.After(5 * time.Minute):
		a.stop(b)
		b.Fatalf("the %s attacker was not ready in 5 minutes", role)
	}
	return a
}

// stop ends the attacker (its stdin closed), waits for it and removes its
// group. It may be called more than once.
func (a *attacker) stop(b *testing.B) {
	if a.cmd == nil {
		return
	}
	a.stdin.Close()
	done := make(chan struct{})
	go func() {
		for line := range a.out {
			a.summary = line
		}
		close(done)
	}()
	select {
	case <-done:
	case <-time.After(time.Minute):
		a.cmd.Process.Kill()
		<-done
	}
	if err := a.cmd.Wait(); err != nil {
		b.Errorf("attacker: %v (%s)", err, a.summary)
	}
	removeTree(b, a.group)
	a.cmd = nil
}

// runLoris is the slowloris attacker: it opens n connections to addr, has
// each send the start of a request head, says "ready", and then sends one
// more head byte a second on each until stdin closes or the duration
// (args: addr, n, duration) is over. It exits 1 when the server closed any
// of them.
func runLoris(args []string) int {
	if len(args) != 3 {
		fmt.Fprintln(os.Stderr, "loris: want addr n duration")
		return 2
	}
	addr := args[0]
	n, _ := strconv.Atoi(args[1])
	d, _ := time.ParseDuration(args[2])
	conns, err := dialAll(addr, n, "GET /hello HTTP/1.1\r\nHost: x\r\nX-Slow: ")
	if err != nil {
		fmt.Fprintln(os.Stderr, "loris:", err)
		return 1
	}
	defer closeAll(conns)
	fmt.Println("ready")
	end := time.After(d)
	stdinClosed := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(stdinClosed) }()
	const slices = 100 // a hundredth of the connections every 10 ms
	tick := time.NewTicker(time.Second / slices)
	defer tick.Stop()
	broken, writes, start := 0, 0, time.Now()
	for k := 0; ; k++ {
		select {
		case <-stdinClosed:
		case <-end:
		case <-tick.C:
			for i := k % slices; i < n; i += slices {
				if _, err := conns[i].Write([]byte{'a'}); err != nil {
					broken++
				}
				writes++
			}
			continue
		}
		break
	}
	fmt.Printf("%d writes in %.3fs to %d connections, %d failed\n", writes, time.Since(start).Seconds(), n, broken)
	if broken > 0 {
		return 1
	}
	return 0
}

// runSlowReader is the slow-reader attacker: n connections each ask addr
// for a response of size bytes, read the first readFirst bytes and then
// nothing; it says "ready" once all have, and closes them when stdin
// closes or the duration (args: addr, n, size, readFirst, duration) is
// over.
func runSlowReader(args []string) int {
	if len(args) != 5 {
		fmt.Fprintln(os.Stderr, "slowreader: want addr n size readFirst duration")
		return 2
	}
	addr := args[0]
	n, _ := strconv.Atoi(args[1])
	size, _ := strconv.Atoi(args[2])
	readFirst, _ := strconv.ParseInt(args[3], 10, 64)
	d, _ := time.ParseDuration(args[4])
	conns, err := dialAll(addr, n, fmt.Sprintf("GET /big?ms=0&bytes=%d HTTP/1.1\r\nHost: x\r\n\r\n", size))
	if err != nil {
		fmt.Fprintln(os.Stderr, "slowreader:", err)
		return 1
	}
	defer closeAll(conns)
	var wg sync.WaitGroup
	var mu sync.Mutex
	short := 0
	for _, c := range conns {
		wg.Go(func() {
			c.SetReadDeadline(time.Now().Add(4 * time.Minute))
			if _, err := io.CopyN(io.Discard, c, readFirst); err != nil {
				mu.Lock()
				short++ // refused (spool budget) or cut
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	fmt.Println("ready")
	end := time.After(d)
	select {
	case <-end:
	case <-waitStdin():
	}
	fmt.Printf("%d readers stalled after %d bytes, %d got less (refused or cut)\n", n, readFirst, short)
	return 0
}

// waitStdin is closed when stdin reaches its end.
func waitStdin() <-chan struct{} {
	c := make(chan struct{})
	go func() { io.Copy(io.Discard, os.Stdin); close(c) }()
	return c
}

// dialAll opens n connections to addr, 32 at a time, and writes first on
// each. A small receive buffer keeps the kernel from reading for a
// stalled client.
func dialAll(addr string, n int, first string) ([]net.Conn, error) {
	conns := make([]net.Conn, n)
	next := make(chan int)
	errs := make(chan error, n)
	var wg sync.WaitGroup
	for range 32 {
		wg.Go(func() {
			for i := range next {
				c, err := net.DialTimeout("tcp", addr, 30*time.Second)
				if err == nil {
					c.(*net.TCPConn).SetReadBuffer(16 << 10)
					_, err = io.WriteString(c, first)
				}
				if err != nil {
					errs <- fmt.Errorf("connection %d: %w", i, err)
				}
				conns[i] = c
			}
		})
	}
	for i := range n {
		next <- i
	}
	close(next)
	wg.Wait()
	close(errs)
	if err := <-errs; err != nil {
		closeAll(conns)
		return nil, err
	}
	return conns, nil
}

func closeAll(conns []net.Conn) {
	for _, c := range conns {
		if c != nil {
			c.Close()
		}
	}
}

// startProfile starts a CPU profile of serve over the attack phase when
// -attack.profile is set; the function it returns waits for the profile
// (nil without the flag).
func startProfile(b *testing.B, g *gate) func() []byte {
	var prof []byte
	done := make(chan struct{})
	if !*attackProfile {
		close(done)
		return func() []byte { return nil }
	}
	go func() {
		defer close(done)
		prof = fetchProfile(b, g, *attackPhase)
	}()
	return func() []byte { <-done; return prof }
}

// fetchProfile takes a CPU profile of serve for d (serve --admin-pprof).
func fetchProfile(b *testing.B, g *gate, d time.Duration) []byte {
	return fetchPprof(b, g, fmt.Sprintf("profile?seconds=%d", int(d.Seconds())))
}

// fetchPprof gets /debug/pprof/<what> from serve's admin listener.
func fetchPprof(b *testing.B, g *gate, what string) []byte {
	resp, err := g.client.Get(g.admin + "/debug/pprof/" + what)
	if err != nil {
		b.Errorf("profile %s of serve: %v", what, err)
		return nil
	}
	defer resp.Body.Close()
	p, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != 200 {
		b.Errorf("profile %s of serve: status %d, %v", what, resp.StatusCode, err)
		return nil
	}
	return p
}

// logProfile logs the top functions of a CPU profile of serve, of its
// heap in use now, and of where its OS threads were created.
func logProfile(b *testing.B, g *gate, prof []byte) {
	if prof == nil {
		return
	}
	heap := fetchPprof(b, g, "heap?gc=1")
	threads := fetchPprof(b, g, "threadcreate")
	dir := b.TempDir()
	cpuFile, heapFile, threadFile := filepath.Join(dir, "cpu.pprof"), filepath.Join(dir, "heap.pprof"), filepath.Join(dir, "threads.pprof")
	for f, p := range map[string][]byte{cpuFile: prof, heapFile: heap, threadFile: threads} {
		if err := os.WriteFile(f, p, 0o644); err != nil {
			b.Fatal(err)
		}
	}
	for _, args := range [][]string{
		{"tool", "pprof", "-top", "-nodecount=30", cellgateBin(b), cpuFile},
		{"tool", "pprof", "-top", "-cum", "-nodecount=40", cellgateBin(b), cpuFile},
		{"tool", "pprof", "-top", "-sample_index=inuse_space", "-nodecount=25", cellgateBin(b), heapFile},
		{"tool", "pprof", "-top", "-cum", "-nodecount=25", cellgateBin(b), threadFile},
	} {
		out, err := exec.Command("go", args...).CombinedOutput()
		if err != nil {
			b.Logf("go %s: %v\n%s", strings.Join(args, " "), err, out)
			return
		}
		b.Logf("serve's profile (go %s):\n%s", strings.Join(args[2:len(args)-2], " "), out)
	}
}
