package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"os"
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

// normalP99 runs a closed-loop client of /hello on one keep-alive
// connection for d and returns its p99 latency.
func normalP99(b *testing.B, ts *testServer, d time.Duration) time.Duration {
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
	return lat[len(lat)*99/100]
}

// osThreads is the process's number of OS threads.
func osThreads(b *testing.B) int {
	f, err := os.Open("/proc/self/status")
	if err != nil {
		b.Fatal(err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), "Threads:"); ok {
			n, _ := strconv.Atoi(strings.TrimSpace(v))
			return n
		}
	}
	b.Fatal("no Threads line in /proc/self/status")
	return 0
}
