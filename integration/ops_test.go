package integration

import (
	"os"
	"strings"
	"syscall"
	"testing"
	"time"
)

// Issue 12, item 3: after logrotate renames the access log, SIGUSR1 makes
// serve write to a new file at the path; the rotated file keeps what was
// written before.
func TestOpsLogReopenOnSIGUSR1(t *testing.T) {
	g := startGate(t, gateOptions{policy: gatePolicy})
	if status, _, body := g.get("/hello"); status != 200 {
		t.Fatalf("GET /hello: %d %q", status, body)
	}
	g.waitRecords("hello", 1, time.Minute)
	rotated := g.accessLog + ".1"
	if err := os.Rename(g.accessLog, rotated); err != nil {
		t.Fatal(err)
	}
	g.signal(syscall.SIGUSR1)
	g.waitLog("log files reopened", 1, time.Minute)
	if status, _, body := g.get("/hello?after=rotate"); status != 200 {
		t.Fatalf("GET /hello after SIGUSR1: %d %q", status, body)
	}
	rs := g.waitRecords("hello", 1, time.Minute)
	if len(rs) != 1 {
		t.Errorf("the new access log has %d hello records, want 1", len(rs))
	}
	old, err := os.ReadFile(rotated)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(old), `"route":"hello"`); n != 1 {
		t.Errorf("the rotated access log has %d hello records, want 1:\n%s", n, old)
	}
}
