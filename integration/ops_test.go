package integration

import (
	"os"
	"os/exec"
	"path/filepath"
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

// Issue 12, item 2, against the kernel: what `cellgate check` predicts
// from mode bits for the cells' credentials is what the kernel does when
// a cell runs the program. A script under a 0700 directory is refused by
// check and by serve (file:line and the fix), and a cell cannot run it;
// once the directories are opened, check passes and the cell runs it.
func TestOpsRouteCheckMatchesKernel(t *testing.T) {
	kernel := requireKernel(t)
	dir := t.TempDir() // 0700, like its parent
	prog := filepath.Join(dir, "prog")
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho ran\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	policyPath := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(policyPath, []byte("version: 1\nroutes:\n  - {name: p, match: {path: /p}, program: prog}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	base := filepath.Join(kernel, "routecheck")
	trackBase(base)

	status, _, stderr := cli(t, nil, "check", policyPath)
	if status != 1 || !strings.Contains(stderr, policyPath+":3: routes[p].program") || !strings.Contains(stderr, "cannot reach it") {
		t.Fatalf("check with the program under a 0700 directory: exit %d\n%s", status, stderr)
	}
	status, _, stderr = cli(t, nil, "serve", "--policy", policyPath, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--cgroup-base", base)
	if status == 0 || !strings.Contains(stderr, policyPath+":3: routes[p].program") {
		t.Fatalf("serve with the program under a 0700 directory: exit %d\n%s", status, stderr)
	}
	status, stdout, stderr := cli(t, nil, "run", "--cgroup-base", base, "--", prog)
	if status == 0 || strings.Contains(stdout, "ran") {
		t.Fatalf("a cell ran a program check said it cannot reach: exit %d\n%s%s", status, stdout, stderr)
	}

	for d := dir; d != os.TempDir() && d != "/"; d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	status, _, stderr = cli(t, nil, "check", policyPath)
	if status != 0 {
		t.Fatalf("check once the directories are searchable: exit %d\n%s", status, stderr)
	}
	status, stdout, stderr = cli(t, nil, "run", "--cgroup-base", base, "--", prog)
	if status != 0 || stdout != "ran\n" {
		t.Fatalf("a cell could not run a program check accepts: exit %d\n%s%s", status, stdout, stderr)
	}
}
