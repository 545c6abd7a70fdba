package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"golang.org/x/sys/unix"
)

// noisyApp, at import, forges a record of the daemon's, truncates its fd 2
// (the daemon's log, were that its stderr and a regular file), prints a
// 100 kB line and outputLines lines.
const noisyApp = `
import os, sys
sys.stderr.write('time=2024-01-01T00:00:00.000Z level=INFO msg="preloader ready" route=other pid=1\n')
sys.stderr.flush()
try:
    os.ftruncate(2, 0)
except OSError:
    pass
print("x" * 100000)
sys.stdout.flush()
for i in range(5000):
    sys.stderr.write("line %d\n" % i)
sys.stderr.flush()

def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
`

// outputLines is how many lines noisyApp writes.
const outputLines = 1 + 1 + 5000

// syncBuffer is a bytes.Buffer for a logger written from goroutines.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// A preloader's output never reaches the daemon's stderr: the stand-in (a
// regular file opened for appending, as under 2>>file, on fd 2 of the test
// process for the test's length) keeps its record and holds nothing of the
// app's, though the app ftruncates its fd 2. The app's lines reach the
// daemon's logger as records of their own, with the route, the
// preloader's pid and source=preloader, cut at outputLineMax, at most
// outputBurst at once (then outputRate a second), the rest counted.
func TestForkPreloaderOutput(t *testing.T) {
	if _, err := os.Stat(python); err != nil {
		t.Skipf("no %s: %v", python, err)
	}
	const before = "time=2024-01-01T00:00:00.000Z level=INFO msg=\"serving\" addr=127.0.0.1:8080\n"
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	f, err := os.OpenFile(logPath, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o600)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	if _, err := f.WriteString(before); err != nil {
		t.Fatal(err)
	}
	saved, err := unix.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := unix.Dup2(int(f.Fd()), 2); err != nil {
		t.Fatal(err)
	}
	restore := sync.OnceFunc(func() {
		unix.Dup2(saved, 2)
		unix.Close(saved)
	})
	t.Cleanup(restore)

	var logged syncBuffer
	prof, err := cgroup.NewProfile("", nil)
	if err != nil {
		t.Fatal(err)
	}
	r, err := New(Config{Cells: &fakeCells{}, Profile: prof, AsSelf: true, Timeout: time.Minute,
		Logger: slog.New(slog.NewJSONHandler(&logged, &slog.HandlerOptions{Level: slog.LevelDebug}))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { r.Close() })
	start := time.Now()
	p, err := startTestPreloader(t, r, noisyApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res, out, _ := forkRunEnv(t, r, p, requestEnv("/x", ""), ""); res.Cause != CauseOK || !strings.HasSuffix(out, "ok") {
		t.Fatalf("request: cause %s, output %q", res.Cause, out)
	}
	p.Close(5 * time.Second)
	elapsed := time.Since(start)
	restore()

	b, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	if string(b) != before {
		t.Errorf("the daemon's stderr holds %d bytes, want only its own record:\n%.300q", len(b), b)
	}

	pid := -1.0
	var outputs []map[string]any
	dropped := 0
	for _, line := range lines(logged.String()) {
		var rec map[string]any
		if err := json.Unmarshal([]byte(line), &rec); err != nil {
			t.Fatalf("not a record: %q: %v", line, err)
		}
		switch rec["msg"] {
		case "preloader ready":
			pid, _ = rec["pid"].(float64)
		case "preloader output":
			outputs = append(outputs, rec)
		case "preloader output over its limit: lines dropped":
			n, _ := rec["dropped_lines"].(float64)
			dropped += int(n)
		}
	}
	if len(outputs) == 0 {
		t.Fatalf("no record of the preloader's output; log:\n%.2000s", logged.String())
	}
	forged, cut := false, false
	for _, rec := range outputs {
		if rec["route"] != "test" || rec["pid"] != pid || rec["source"] != "preloader" {
			t.Errorf("record without the route, the preloader's pid %v or its source: %v", pid, rec)
		}
		out, _ := rec["output"].(string)
		forged = forged || strings.HasPrefix(out, `time=2024-01-01T00:00:00.000Z level=INFO msg="preloader ready"`)
		if strings.HasPrefix(out, "xxx") {
			cut = true
			if len(out) != outputLineMax || rec["truncated"] != true {
				t.Errorf("the long line: %d bytes, truncated %v; want %d, true", len(out), rec["truncated"], outputLineMax)
			}
		}
		if len(out) > outputLineMax {
			t.Errorf("a record of %d bytes", len(out))
		}
	}
	if !forged || !cut {
		t.Errorf("the forged line logged as a record's value: %v; the long line: %v", forged, cut)
	}
	if max := outputBurst + int(elapsed.Seconds()*outputRate) + 1; len(outputs) > max {
		t.Errorf("%d lines logged in %s, want at most %d", len(outputs), elapsed, max)
	}
	if len(outputs)+dropped != outputLines {
		t.Errorf("%d lines logged and %d counted dropped, want %d in all", len(outputs), dropped, outputLines)
	}
}

// blockingHandler counts records, each one waiting for release first.
type blockingHandler struct {
	release chan struct{}
	mu      sync.Mutex
	lines   int
	dropped int
}

func (h *blockingHandler) Enabled(context.Context, slog.Level) bool { return true }
func (h *blockingHandler) WithAttrs([]slog.Attr) slog.Handler       { return h }
func (h *blockingHandler) WithGroup(string) slog.Handler            { return h }
func (h *blockingHandler) Handle(_ context.Context, rec slog.Record) error {
	<-h.release
	h.mu.Lock()
	defer h.mu.Unlock()
	rec.Attrs(func(a slog.Attr) bool {
		switch a.Key {
		case "output":
			h.lines++
		case "dropped_lines":
			h.dropped += int(a.Value.Int64())
		}
		return true
	})
	return nil
}

// A log that does not keep up never blocks the preloader: with the
// logger stuck, 1 MiB (16 times a pipe's buffer) is written at once; the
// lines the queue cannot hold are counted as dropped.
func TestPreloadOutputSlowLog(t *testing.T) {
	rd, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	h := &blockingHandler{release: make(chan struct{})}
	o := readOutput(rd, slog.New(h))
	const n = 1 << 14
	line := strings.Repeat("y", 63) + "\n"
	for i := 0; i < n; i++ {
		if _, err := w.WriteString(line); err != nil {
			t.Fatal(err)
		}
	}
	w.Close()
	close(h.release)
	<-o.done
	if h.lines > outputQueue+1 || h.lines+h.dropped != n {
		t.Errorf("%d lines logged, %d dropped: want at most %d logged, %d in all", h.lines, h.dropped, outputQueue+1, n)
	}
}
