package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

// BenchmarkSlowReaders measures what slow readers of large responses do to
// a normal client: attackers each ask for a large response, read the first
// megabyte and stall; a closed-loop client asks for a small response before
// the attack (the baseline), during it, and after the attackers have gone.
// It reports the normal client's p99 during and after as ratios of the
// baseline, the process's OS threads in each phase, and the spool bytes
// held during the attack. Run once: go test -run X -bench SlowReaders
// -benchtime 1x ./proxy/
func BenchmarkSlowReaders(b *testing.B) {
	const (
		attackers = 50
		size      = 16 << 20
		readFirst = 1 << 20
		phase     = 3 * time.Second
	)
	chunk := make([]byte, 1<<20)
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		if spec.Path == "/hello" {
			io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nhello")
			return sandbox.Result{Cause: sandbox.CauseOK}, nil
		}
		io.WriteString(spec.Stdout, "Content-Type: application/octet-stream\n\n")
		for i := 0; i < size/len(chunk); i++ {
			if _, err := spec.Stdout.Write(chunk); err != nil {
				return sandbox.Result{}, err
			}
		}
		return sandbox.Result{Cause: sandbox.CauseOK}, nil
	})
	ts := startServer(b, Config{MaxConnsPerIP: -1}, Deps{Runner: runner},
		route("hello", "/hello", "/hello"), route("big", "/big", "/big"))
	for b.Loop() {
		base := normalP99(b, ts, phase)
		threadsBase := osThreads(b)

		var wg sync.WaitGroup
		stalled := make(chan struct{}, attackers)
		release := make(chan struct{})
		for range attackers {
			wg.Add(1)
			go func() {
				defer wg.Done()
				c, err := net.Dial("tcp", ts.Addr)
				if err != nil {
					b.Error(err)
					stalled <- struct{}{}
					return
				}
				defer c.Close()
				io.WriteString(c, "GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
				io.CopyN(io.Discard, c, readFirst)
				stalled <- struct{}{}
				<-release
			}()
		}
		for range attackers {
			<-stalled
		}
		during := normalP99(b, ts, phase)
		threadsDuring := osThreads(b)
		spool := ts.SpoolStats()
		close(release)
		wg.Wait()
		after := normalP99(b, ts, phase)
		threadsAfter := osThreads(b)

		b.ReportMetric(float64(during)/float64(base), "p99-during/base")
		b.ReportMetric(float64(after)/float64(base), "p99-after/base")
		b.ReportMetric(float64(threadsBase), "threads-base")
		b.ReportMetric(float64(threadsDuring), "threads-during")
		b.ReportMetric(float64(threadsAfter), "threads-after")
		b.ReportMetric(float64(spool.Disk)/(1<<20), "spool-MiB-during")
	}
}

// normalP99 is normalLoad's p99.
func normalP99(b *testing.B, ts *testServer, d time.Duration) time.Duration {
	_, p99 := normalLoad(b, ts, d)
	return p99
}

// osThreads is the process's number of OS threads.
func osThreads(b *testing.B) int { return int(procStatus(b, "Threads:")) }

// procStatus is the number after key in /proc/self/status (kB for sizes).
func procStatus(b *testing.B, key string) int64 {
	b.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), key); ok {
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			return n
		}
	}
	b.Fatalf("no %s line in /proc/self/status", key)
	return 0
}

// BenchmarkSlowloris measures what 5,000 slowloris connections (a head
// begun and one more byte a second, the header timeout raised so that they
// stay) do to a closed-loop normal client: its throughput and p99 during
// the attack as ratios of the same client's before it, and the process's
// RSS and heap growth per held connection. The attacker runs in the same
// process (one goroutine feeds all the connections). Run once: go test
// -run X -bench Slowloris -benchtime 1x ./proxy/
func BenchmarkSlowloris(b *testing.B) {
	const (
		lorises = 5000
		phase   = 3 * time.Second
	)
	hello := cgiOutput("Content-Type: text/plain\n\nhello", sandbox.CauseOK)
	ts := startServer(b, Config{MaxConnsPerIP: -1, ReadHeaderTimeout: 10 * time.Minute}, Deps{Runner: hello},
		route("hello", "/hello", "/hello"))
	for b.Loop() {
		baseN, baseP99 := normalLoad(b, ts, phase)
		rssBase, heapBase := memory(b)

		conns := make([]net.Conn, 0, lorises)
		for range lorises {
			c, err := net.Dial("tcp", ts.Addr)
			if err != nil {
				b.Fatalf("loris %d: %v", len(conns), err)
			}
			io.WriteString(c, "GET /hello HTTP/1.1\r\nHost: x\r\nX-A: ")
			conns = append(conns, c)
		}
		stop := make(chan struct{})
		fed := make(chan struct{})
		go func() { // one byte a second on each, spread over the second
			defer close(fed)
			tick := time.NewTicker(time.Second / 100)
			defer tick.Stop()
			for i := 0; ; i = (i + lorises/100) % lorises {
				select {
				case <-stop:
					return
				case <-tick.C:
				}
				for _, c := range conns[i : i+lorises/100] {
					c.Write([]byte{'a'})
				}
			}
		}()
		for ts.ConnStats().Open < lorises {
			time.Sleep(10 * time.Millisecond)
		}
		n, p99 := normalLoad(b, ts, phase)
		rss, heap := memory(b)
		close(stop)
		<-fed
		for _, c := range conns {
			c.Close()
		}

		b.ReportMetric(float64(n)/float64(baseN), "throughput/base")
		b.ReportMetric(float64(p99)/float64(baseP99), "p99/base")
		b.ReportMetric(float64(rss-rssBase)/lorises, "RSS-B/loris")
		b.ReportMetric(float64(heap-heapBase)/lorises, "heap-B/loris")
		b.ReportMetric(float64(rss)/(1<<20), "RSS-MiB")
	}
}

// normalLoad runs a closed-loop client of /hello on one keep-alive
// connection for d and returns the requests done and their p99 latency.
func normalLoad(b *testing.B, ts *testServer, d time.Duration) (int, time.Duration) {
	b.Helper()
	tr := &http.Transport{}
	defer tr.CloseIdleConnections()
	c := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var lat []time.Duration
	for end := time.Now().Add(d); time.Now().Before(end); {
		t0 := time.Now()
		resp, err := c.Get(ts.URL + "/hello")
		if err != nil {
			b.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		lat = append(lat, time.Since(t0))
	}
	slices.Sort(lat)
	return len(lat), lat[len(lat)*99/100]
}

// memory returns the process's resident set and the Go heap in use, in
// bytes, after a GC.
func memory(b *testing.B) (rss, heap int64) {
	runtime.GC()
	var ms runtime.MemStats
	runtime.ReadMemStats(&ms)
	return procStatus(b, "VmRSS:") << 10, int64(ms.HeapInuse)
}
