package integration

import (
	"os"
	"os/exec"
	"runtime"
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

// Issue 12, item 4: the built binary's version is in `cellgate --version`,
// in SERVER_SOFTWARE and in cellgate_build_info.
func TestOpsVersion(t *testing.T) {
	out, err := exec.Command(cellgateBin(t), "--version").Output()
	if err != nil {
		t.Fatalf("cellgate --version: %v", err)
	}
	first, _, _ := strings.Cut(string(out), "\n")
	ver := strings.TrimPrefix(first, "cellgate ")
	if ver == first || ver == "" || !strings.Contains(string(out), runtime.Version()) {
		t.Fatalf("cellgate --version:\n%s", out)
	}
	g := startGate(t, gateOptions{policy: gatePolicy})
	status, _, body := g.get("/echo")
	if status != 200 {
		t.Fatalf("GET /echo: %d %q", status, body)
	}
	if got := decodeEcho(t, body).Env["SERVER_SOFTWARE"]; got != "cellgate/"+ver {
		t.Errorf("SERVER_SOFTWARE = %q, want cellgate/%s", got, ver)
	}
	if v := metric(g.metrics(), "cellgate_build_info", map[string]string{"version": ver, "goversion": runtime.Version()}); v != 1 {
		t.Errorf("cellgate_build_info{version=%q} = %v, want 1", ver, v)
	}
}
