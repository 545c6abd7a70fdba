package integration

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// underSystemd skips (or fails, when CELLGATE_REQUIRE_SYSTEMD=1 says the
// run is the microVM's systemd mode, vmrun -systemd) unless systemd is pid
// 1: the tests below install and drive cellgate's units there.
func underSystemd(t *testing.T) {
	t.Helper()
	comm, _ := os.ReadFile("/proc/1/comm")
	if strings.TrimSpace(string(comm)) == "systemd" {
		return
	}
	msg := fmt.Sprintf("pid 1 is %q, not systemd (make integration-systemd boots the microVM with vmrun -systemd)", strings.TrimSpace(string(comm)))
	if os.Getenv("CELLGATE_REQUIRE_SYSTEMD") == "1" {
		t.Fatal("CELLGATE_REQUIRE_SYSTEMD=1 but " + msg)
	}
	t.Skip(msg)
}

// systemctl runs systemctl and returns its status and output.
func systemctl(t *testing.T, args ...string) (int, string) {
	t.Helper()
	// Bounded: a start, stop or reload that hangs fails the test with
	// what the guest was doing, not the suite at its own timeout.
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	out, err := exec.CommandContext(ctx, "systemctl", args...).CombinedOutput()
	if ctx.Err() != nil {
		t.Fatalf("systemctl %s: no answer in 2 minutes\n%s", strings.Join(args, " "), guestState(guestProcs, []string{"journalctl", "--no-pager", "-n", "60"}))
	}
	if ee, ok := err.(*exec.ExitError); ok {
		return ee.ExitCode(), string(out)
	}
	if err != nil {
		t.Fatalf("systemctl %s: %v", strings.Join(args, " "), err)
	}
	return 0, string(out)
}

// mustSystemctl runs systemctl and fails the test with the unit's journal
// when it fails.
func mustSystemctl(t *testing.T, args ...string) string {
	t.Helper()
	code, out := systemctl(t, args...)
	if code != 0 {
		t.Fatalf("systemctl %s: status %d\n%s\n%s", strings.Join(args, " "), code, out, guestState(unitJournal))
	}
	return out
}

// unitJournal is the command of the service's last journal lines.
var unitJournal = []string{"journalctl", "--no-pager", "-n", "40", "-u", "cellgate.service"}

// guestState runs each command given, each bounded (a wedged journald or
// service manager must not hang the suite past its own timeout with
// nothing said), and returns their outputs, for a failure's message.
func guestState(cmds ...[]string) string {
	var b strings.Builder
	for _, c := range cmds {
		out, _ := exec.Command("timeout", append([]string{"10"}, c...)...).CombinedOutput()
		fmt.Fprintf(&b, "$ %s\n%s\n", strings.Join(c, " "), out)
	}
	return b.String()
}

// guestProcs is the command listing the guest's processes.
var guestProcs = []string{"ps", "-eo", "pid,ppid,stat,wchan:30,args"}

// unitProperty is one property of a unit (systemctl show -p NAME --value).
func unitProperty(t *testing.T, unit, name string) string {
	t.Helper()
	return strings.TrimSpace(mustSystemctl(t, "show", "-p", name, "--value", unit))
}

// systemdCGI is where installUnits puts the example programs, as README's
// recipe does: not the checkout, which the unit's PrivateTmp and
// ProtectHome hide from the service when it lies under /tmp or /home.
const systemdCGI = "/usr/local/share/cellgate/bin/cgi"

// systemdWSGI is where installUnits puts the WSGI example that the fork
// route of systemdPolicy imports.
const systemdWSGI = "/usr/local/share/cellgate/examples/wsgi"

const systemdPolicy = `version: 1
global: {memory: 512Mi}
tenants:
  - {name: web, memory: 384Mi, max_cells: 32, queue: 256, queue_timeout: 60s}
routes:
  - {name: hello, match: {path: /hello}, tenant: web, program: "` + systemdCGI + `/hello", memory: 16Mi}
  - {name: slow, match: {path: /slow}, tenant: web, program: "` + systemdCGI + `/slow", memory: 16Mi, timeout: 60s}
  - {name: slowsh, match: {path: /slowsh}, tenant: web, program: "` + systemdCGI + `/slowsh", memory: 16Mi, timeout: 60s}
  - {name: oomsh, match: {path: /oomsh}, tenant: web, program: "` + systemdCGI + `/oomsh", memory: 16Mi}
  - {name: tmpdirsh, match: {path: /tmpdirsh}, tenant: web, program: "` + systemdCGI + `/tmpdirsh", memory: 16Mi}
  - {name: wsgi, match: {path: /wsgi}, tenant: web, driver: fork, runtime: python-wsgi, app: "hello:app", app_dir: "` + systemdWSGI + `", preload_memory: 96Mi, memory: 32Mi}
`

// tmpdirScript leaves in its cell's /tmp a directory closed to others
// (as Python's mkdtemp makes), holding a file.
const tmpdirScript = "#!/bin/sh\nmkdir -m 700 /tmp/d.$$ && echo x > /tmp/d.$$/f\nprintf 'Content-Type: text/plain\\n\\n'\necho ok\n"

// oomScript tries to lower its oom_score_adj to the unit's OOMScoreAdjust=
// and prints what it has.
const oomScript = "#!/bin/sh\necho -500 > /proc/self/oom_score_adj 2>/dev/null\nprintf 'Content-Type: text/plain\\n\\n'\ncat /proc/self/oom_score_adj\n"

// slowScript is a slow program that, as most do (a shell, sleep), dies of
// a signal it does not handle: SIGUSR1 among them, which Go programs
// ignore. It sleeps 8 s, so that it still runs when a test that saw it
// start signals, however slow the machine.
const slowScript = "#!/bin/sh\nsleep 8\nprintf 'Content-Type: text/plain\\n\\nslept\\n'\n"

// installUnits puts cellgate where deploy/systemd's units expect it: the
// binary in /usr/local/bin, the policy named in /etc/default/cellgate,
// the units in /etc/systemd/system (the guest's root is a throw-away
// overlay).
func installUnits(t *testing.T) string {
	t.Helper()
	// cellgate and, beside it, the confined cells' init (the shared root's
	// copies, if any, stay below the overlay).
	for _, name := range []string{"cellgate", "cellgate-init"} {
		dst := "/usr/local/bin/" + name
		os.Remove(dst)
		if err := copyFile(filepath.Join(filepath.Dir(cellgateBin(t)), name), dst, 0o755); err != nil {
			t.Fatalf("install %s: %v", name, err)
		}
	}
	if err := os.MkdirAll(systemdCGI, 0o755); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"hello", "slow"} {
		os.Remove(filepath.Join(systemdCGI, name)) // installed by an earlier test
		if err := copyFile(filepath.Join(cgiDir(t), name), filepath.Join(systemdCGI, name), 0o755); err != nil {
			t.Fatalf("install %s: %v", name, err)
		}
	}
	for name, script := range map[string]string{"slowsh": slowScript, "oomsh": oomScript, "tmpdirsh": tmpdirScript} {
		if err := os.WriteFile(filepath.Join(systemdCGI, name), []byte(script), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		skipOrFail(t, "the fork route needs /usr/bin/python3 (make python-deps): %v", err)
	}
	if err := os.MkdirAll(systemdWSGI, 0o755); err != nil {
		t.Fatal(err)
	}
	os.Remove(filepath.Join(systemdWSGI, "hello.py")) // installed by an earlier test
	if err := copyFile("../examples/wsgi/hello.py", filepath.Join(systemdWSGI, "hello.py"), 0o644); err != nil {
		t.Fatalf("install the WSGI example: %v", err)
	}
	if err := os.MkdirAll("/etc/cellgate", 0o755); err != nil {
		t.Fatal(err)
	}
	policy := "/etc/cellgate/policy.yaml"
	writePolicy(t, policy, systemdPolicy)
	env := "CELLGATE_POLICY=" + policy + "\nCELLGATE_DRAIN_TIMEOUT=30s\n"
	if err := os.WriteFile("/etc/default/cellgate", []byte(env), 0o644); err != nil {
		t.Fatal(err)
	}
	units, err := filepath.Glob("../deploy/systemd/cellgate*")
	if err != nil || len(units) != 3 {
		t.Fatalf("units in deploy/systemd: %v %v", units, err)
	}
	for _, u := range units {
		b, err := os.ReadFile(u)
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join("/etc/systemd/system", filepath.Base(u)), b, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	mustSystemctl(t, "daemon-reload")
	t.Cleanup(func() {
		systemctl(t, "stop", "cellgate.service", "cellgate.socket", "cellgate-admin.socket")
	})
	return policy
}

// get does one request on a new connection (no keep-alive: a connection
// the old process closes while idle is not a lost request, and the client
// would retry it silently).
func get(url string) (int, string, error) {
	c := &http.Client{Timeout: 2 * time.Minute, Transport: &http.Transport{DisableKeepAlives: true}}
	resp, err := c.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}

func mustGet(t *testing.T, url string, want int) string {
	t.Helper()
	code, body, err := get(url)
	if err != nil || code != want {
		t.Fatalf("GET %s: %d %q %v, want %d\n%s", url, code, body, err, want,
			guestState(unitJournal, []string{"systemctl", "status", "--no-pager", "cellgate.service", "cellgate.socket"}, guestProcs))
	}
	return body
}

// TestSystemdService drives deploy/systemd's units under the guest's
// systemd: socket activation starts the service, which reports READY and
// its STATUS; its cells live in its delegated group; reload applies a
// valid policy and refuses an invalid one; a restart under load loses no
// request; README.md's log rotation leaves a request in flight be; stop
// drains a request in flight and leaves no cell behind.
func TestSystemdService(t *testing.T) {
	underSystemd(t)
	policy := installUnits(t)
	const url = "http://127.0.0.1:8080"

	mustSystemctl(t, "start", "cellgate.socket", "cellgate-admin.socket")
	t.Log("sockets listening; first request")
	if s := unitProperty(t, "cellgate.service", "ActiveState"); s != "inactive" {
		t.Fatalf("cellgate.service is %s before the first connection, want inactive (socket activation)", s)
	}
	if body := mustGet(t, url+"/hello", 200); !strings.Contains(body, "hello from a cell") {
		t.Fatalf("GET /hello: %q", body)
	}
	if s := unitProperty(t, "cellgate.service", "ActiveState"); s != "active" {
		t.Fatalf("cellgate.service is %s after the first request, want active", s)
	}
	if s := unitProperty(t, "cellgate.service", "StatusText"); !strings.HasPrefix(s, "serving: ") {
		t.Errorf("StatusText %q, want serving: N cells in flight...", s)
	}
	mustGet(t, "http://127.0.0.1:9090/readyz", 200)
	// A fork route under the unit's sandboxing: its preloader caps the user
	// namespaces of its own (/proc/sys writable), and each request's child
	// mounts a /proc of its own (the kernel allows it only where the
	// preloader's view holds a fully visible one). With
	// ProtectKernelTunables= serve did not start (TestSystemdSandboxLeftOut).
	if body := mustGet(t, url+"/wsgi", 200); !strings.Contains(body, "hello") {
		t.Fatalf("GET /wsgi: %q", body)
	}

	t.Run("cells in the delegated group", func(t *testing.T) {
		group := filepath.Join("/sys/fs/cgroup", unitProperty(t, "cellgate.service", "ControlGroup"))
		pid := unitProperty(t, "cellgate.service", "MainPID")
		procs := readTrim(t, filepath.Join(group, "supervisor", "cgroup.procs"))
		if !onlyCellgate(procs, pid) {
			t.Errorf("%s/supervisor holds %q, want cellgate's main pid %s and at most its init spawner", group, procs, pid)
		}
		if _, err := os.Stat(filepath.Join(group, "cells", "web")); err != nil {
			t.Errorf("tenant group not under the service's group: %v", err)
		}
		if d := unitProperty(t, "cellgate.service", "Delegate"); d != "yes" {
			t.Errorf("Delegate=%s", d)
		}
	})

	// Under the unit's sandboxing (ProtectKernelTunables= makes /proc/sys
	// read-only but for /proc/sys/user) cells still find network
	// namespaces made ahead: the pool did not fill there once, and every
	// cell made its own.
	t.Run("network namespaces made ahead", func(t *testing.T) {
		deadline := time.Now().Add(time.Minute)
		for {
			mustGet(t, url+"/hello", 200)
			metrics := mustGet(t, "http://127.0.0.1:9090/metrics", 200)
			if strings.Contains(metrics, `cellgate_netns_ahead_total{result="hit"} `) && !strings.Contains(metrics, `cellgate_netns_ahead_total{result="hit"} 0`+"\n") {
				break
			}
			if time.Now().After(deadline) {
				j, _ := exec.Command("journalctl", "--no-pager", "-n", "40", "-u", "cellgate.service").CombinedOutput()
				t.Fatalf("no cell found a network namespace made ahead within a minute of requests\njournal:\n%s", j)
			}
			time.Sleep(200 * time.Millisecond)
		}
	})

	t.Run("reload", func(t *testing.T) {
		writePolicy(t, policy, systemdPolicy+`  - {name: hi, match: {path: /hi}, tenant: web, program: "`+systemdCGI+`/hello", memory: 16Mi}
`)
		mustSystemctl(t, "reload", "cellgate.service")
		mustGet(t, url+"/hi", 200)
		if err := os.WriteFile(policy, []byte("version: 1\nroutes: [{name: x, nonsense: 1}]\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		if code, out := systemctl(t, "reload", "cellgate.service"); code == 0 {
			t.Errorf("systemctl reload with an invalid policy succeeded:\n%s", out)
		}
		mustGet(t, url+"/hi", 200)
		if s := unitProperty(t, "cellgate.service", "ActiveState"); s != "active" {
			t.Errorf("after a refused reload cellgate.service is %s, want active", s)
		}
		writePolicy(t, policy, systemdPolicy)
		mustSystemctl(t, "reload", "cellgate.service")
	})

	t.Run("restart under load", func(t *testing.T) {
		before := unitProperty(t, "cellgate.service", "MainPID")
		var (
			stop     atomic.Bool
			ok, fail atomic.Int64
			wg       sync.WaitGroup
			errsMu   sync.Mutex
			errs     []string
		)
		for range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for !stop.Load() {
					code, _, err := get(url + "/slow?ms=100")
					if err != nil || code != 200 {
						fail.Add(1)
						errsMu.Lock()
						errs = append(errs, fmt.Sprintf("%d %v", code, err))
						errsMu.Unlock()
						time.Sleep(100 * time.Millisecond) // a refused port must not spin the guest
						continue
					}
					ok.Add(1)
				}
			}()
		}
		waitFor := func(what string, cond func() bool) {
			t.Helper()
			deadline := time.Now().Add(2 * time.Minute)
			for !cond() {
				if time.Now().After(deadline) {
					stop.Store(true)
					wg.Wait()
					t.Fatalf("%s: not within 2 minutes (%d requests answered, %d failed: %v)", what, ok.Load(), fail.Load(), errs)
				}
				time.Sleep(50 * time.Millisecond)
			}
		}
		waitFor("8 requests answered before the restart", func() bool { return ok.Load() >= 8 })
		t.Logf("restarting with %d requests answered", ok.Load())
		mustSystemctl(t, "restart", "cellgate.service")
		after := unitProperty(t, "cellgate.service", "MainPID")
		n := ok.Load()
		waitFor("8 requests answered after the restart", func() bool { return ok.Load() >= n+8 })
		stop.Store(true)
		wg.Wait()
		t.Logf("%d requests answered, %d failed, across the restart", ok.Load(), fail.Load())
		if after == before {
			t.Errorf("MainPID %s before and after the restart: it did not restart", before)
		}
		if fail.Load() > 0 {
			t.Errorf("%d of %d requests failed across the restart: %v", fail.Load(), fail.Load()+ok.Load(), errs)
		}
	})

	t.Run("OOM score", func(t *testing.T) {
		// A cell's program is the OOM killer's first choice and cannot
		// lower its score to cellgate's (OOMScoreAdjust=-500).
		if got := strings.TrimSpace(mustGet(t, url+"/oomsh", 200)); got != "1000" {
			t.Errorf("a cell's program lowered its oom_score_adj to %s, want it kept at 1000", got)
		}
	})

	t.Run("resident cell wiped", func(t *testing.T) {
		// The init empties its cell's tmpfs after each request, with the
		// unit's capabilities only: a directory the program closed to
		// others (0700, its own uid) is wiped too, and the resident cell
		// serves the next request. Without CAP_DAC_OVERRIDE and
		// CAP_FOWNER the init could not open it: every such request
		// ended its cell as unclean.
		unclean := func() string {
			for _, line := range strings.Split(mustGet(t, "http://127.0.0.1:9090/metrics", 200), "\n") {
				if v, ok := strings.CutPrefix(line, `cellgate_resident_ended_total{reason="unclean"} `); ok {
					return v
				}
			}
			t.Fatal("no cellgate_resident_ended_total{reason=\"unclean\"} in the metrics")
			return ""
		}
		before := unclean()
		for range 3 {
			if got := strings.TrimSpace(mustGet(t, url+"/tmpdirsh", 200)); got != "ok" {
				t.Fatalf("GET /tmpdirsh: %q", got)
			}
		}
		if after := unclean(); after != before {
			j, _ := exec.Command("journalctl", "--no-pager", "-n", "20", "-u", "cellgate.service").CombinedOutput()
			t.Errorf("resident cells ended as unclean: %s before three requests leaving a 0700 directory in /tmp, %s after\njournal:\n%s", before, after, j)
		}
	})

	t.Run("log rotation", func(t *testing.T) {
		// README.md's logrotate recipe, as written there: its postrotate
		// command signals cellgate alone; a request in flight (a shell
		// script, which SIGUSR1 would end) is not signalled and ends
		// well, and the service goes on.
		cmd := readmePostrotate(t)
		pid := unitProperty(t, "cellgate.service", "MainPID")
		done := make(chan error, 1)
		go func() {
			code, _, err := get(url + "/slowsh")
			if err == nil && code != 200 {
				err = fmt.Errorf("status %d", code)
			}
			done <- err
		}()
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(unitProperty(t, "cellgate.service", "StatusText"), "serving: 1 cells in flight") {
			if time.Now().After(deadline) {
				t.Fatalf("the slow request's cell never showed in StatusText %q", unitProperty(t, "cellgate.service", "StatusText"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case err := <-done:
			t.Fatalf("the request ended (%v) before the log rotation: nothing was in flight to show", err)
		default:
		}
		if out, err := exec.Command("sh", "-c", cmd).CombinedOutput(); err != nil {
			t.Fatalf("README's postrotate %q: %v\n%s", cmd, err, out)
		}
		select {
		case err := <-done:
			if err != nil {
				j, _ := exec.Command("journalctl", "--no-pager", "-n", "20", "-u", "cellgate.service").CombinedOutput()
				t.Errorf("the request in flight at the log rotation: %v, want 200\njournal:\n%s", err, j)
			}
		case <-time.After(2 * time.Minute):
			t.Fatal("the request in flight at the log rotation got no answer within 2 minutes")
		}
		if now := unitProperty(t, "cellgate.service", "MainPID"); now != pid || unitProperty(t, "cellgate.service", "ActiveState") != "active" {
			t.Errorf("after the log rotation cellgate.service is %s with pid %s (%s before)", unitProperty(t, "cellgate.service", "ActiveState"), now, pid)
		}
		mustGet(t, url+"/hello", 200)
	})

	t.Run("stop drains", func(t *testing.T) {
		group := filepath.Join("/sys/fs/cgroup", unitProperty(t, "cellgate.service", "ControlGroup"))
		type result struct {
			code int
			err  error
		}
		// 8 s: still running when the stop comes, however slow the
		// machine, and ending within the drain (CELLGATE_DRAIN_TIMEOUT
		// 30s).
		done := make(chan result, 1)
		go func() {
			code, _, err := get(url + "/slow?ms=8000")
			done <- result{code, err}
		}()
		// Wait until its cell runs.
		deadline := time.Now().Add(time.Minute)
		for !strings.Contains(unitProperty(t, "cellgate.service", "StatusText"), "serving: 1 cells in flight") {
			if time.Now().After(deadline) {
				t.Fatalf("the slow request's cell never showed in StatusText %q", unitProperty(t, "cellgate.service", "StatusText"))
			}
			time.Sleep(100 * time.Millisecond)
		}
		select {
		case r := <-done:
			t.Fatalf("the request ended (%d %v) before the stop: nothing was in flight to drain", r.code, r.err)
		default:
		}
		t.Log("stopping with one request in flight")
		mustSystemctl(t, "stop", "cellgate.socket", "cellgate-admin.socket", "cellgate.service")
		var r result
		select {
		case r = <-done:
		case <-time.After(2 * time.Minute):
			t.Fatal("the request in flight at stop got no answer within 2 minutes")
		}
		if r.err != nil || r.code != 200 {
			t.Errorf("the request in flight at stop: %d %v, want 200", r.code, r.err)
		}
		if s := unitProperty(t, "cellgate.service", "ActiveState"); s != "inactive" {
			t.Errorf("after stop cellgate.service is %s (result %s)", s, unitProperty(t, "cellgate.service", "Result"))
		}
		if _, err := os.Stat(filepath.Join(group, "cells")); !os.IsNotExist(err) {
			t.Errorf("cells/ left in %s after stop: %v", group, err)
		}
		if _, err := os.Stat(group); !os.IsNotExist(err) {
			ents, _ := os.ReadDir(group)
			var names []string
			for _, e := range ents {
				if e.IsDir() {
					names = append(names, e.Name())
				}
			}
			if len(names) > 0 {
				t.Errorf("groups left under %s after stop: %s", group, strings.Join(names, " "))
			}
		}
	})
}

// TestSystemdSandboxLeftOut tries each sandboxing option cellgate.service
// leaves out, one at a time as a drop-in, and checks that the unit's
// comment is true: with it, cellgate cannot serve a request from a cell,
// and the journal shows the failure the comment names. Each case first
// serves under a neutral drop-in, so that only the option can be what
// breaks it.
func TestSystemdSandboxLeftOut(t *testing.T) {
	underSystemd(t)
	installUnits(t)
	const dropIn = "/etc/systemd/system/cellgate.service.d/try.conf"
	if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(dropIn)) })
	restartWith := func(t *testing.T, conf string) (int, string) {
		t.Helper()
		if err := os.WriteFile(dropIn, []byte("[Service]\n"+conf), 0o644); err != nil {
			t.Fatal(err)
		}
		mustSystemctl(t, "daemon-reload")
		mustSystemctl(t, "start", "cellgate.socket", "cellgate-admin.socket")
		return systemctl(t, "restart", "cellgate.service")
	}
	for _, tc := range []struct {
		option string
		fails  *regexp.Regexp // the failure in the journal, as the unit's comment says
	}{
		{"RestrictNamespaces=yes", regexp.MustCompile(`function not implemented`)},
		{"ProtectControlGroups=yes", regexp.MustCompile(`read-only file system`)},
		{"PrivateUsers=yes", regexp.MustCompile(`operation not permitted`)},
		{"ProtectHostname=yes", regexp.MustCompile(`sethostname.*operation not permitted`)},
		// Not an option left out but one narrowed: an empty assignment
		// drops the unit's ReadWritePaths=/proc/sys/user, and the fork
		// route of the policy cannot start.
		{"ReadWritePaths=", regexp.MustCompile(`max_user_namespaces: read-only file system`)},
	} {
		t.Run(tc.option, func(t *testing.T) {
			defer func() {
				systemctl(t, "stop", "cellgate.service")
				systemctl(t, "reset-failed", "cellgate.service", "cellgate.socket", "cellgate-admin.socket")
			}()
			// The control: the same restart under a drop-in that changes
			// nothing of the sandbox serves.
			if code, out := restartWith(t, "Restart=no\n"); code != 0 {
				t.Fatalf("systemctl restart under a neutral drop-in: status %d\n%s", code, out)
			}
			mustGet(t, "http://127.0.0.1:8080/hello", 200)
			systemctl(t, "stop", "cellgate.service")

			since := time.Now().Format("2006-01-02 15:04:05.000000")
			code, out := restartWith(t, tc.option+"\nRestart=no\n")
			served := false
			if code == 0 {
				c, _, err := get("http://127.0.0.1:8080/hello")
				served = err == nil && c == 200
			}
			// journald may not have written serve's last lines yet.
			var j []byte
			deadline := time.Now().Add(time.Minute)
			for {
				j, _ = exec.Command("journalctl", "--no-pager", "-o", "cat", "--since", since, "-u", "cellgate.service").CombinedOutput()
				if tc.fails.Match(j) || time.Now().After(deadline) {
					break
				}
				time.Sleep(200 * time.Millisecond)
			}
			t.Logf("%s: systemctl restart status %d, served: %v\n%s%s", tc.option, code, served, out, j)
			if served {
				t.Errorf("with %s cellgate served a request from a cell: the unit's reason for leaving it out is wrong", tc.option)
			}
			if !tc.fails.Match(j) {
				t.Errorf("with %s the journal does not show the failure the unit's comment names (%s)", tc.option, tc.fails)
			}
		})
	}
	// Without CAP_SYS_CHROOT (a bounding set cut further) a cell cannot
	// enter its route's mount template: serve says so and builds each
	// cell's view. Before it checked, every request after the first, made
	// once the template was, got a 502.
	t.Run("CapabilityBoundingSet=~CAP_SYS_CHROOT", func(t *testing.T) {
		if err := os.WriteFile(dropIn, []byte("[Service]\nCapabilityBoundingSet=~CAP_SYS_CHROOT\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustSystemctl(t, "daemon-reload")
		since := fmt.Sprintf("@%d", time.Now().Unix())
		mustSystemctl(t, "restart", "cellgate.service")
		for range 5 {
			mustGet(t, "http://127.0.0.1:8080/hello", 200)
			time.Sleep(300 * time.Millisecond) // a template would be made by now
		}
		j, _ := exec.Command("journalctl", "--no-pager", "-o", "cat", "--since", since, "-u", "cellgate.service").CombinedOutput()
		if !regexp.MustCompile(`mount templates are off.*CAP_SYS_CHROOT`).Match(j) {
			t.Errorf("serve did not say that mount templates are off for want of CAP_SYS_CHROOT:\n%s", j)
		}
	})
	// And without any of them, it serves again.
	os.Remove(dropIn)
	mustSystemctl(t, "daemon-reload")
	mustSystemctl(t, "restart", "cellgate.socket", "cellgate-admin.socket")
	mustGet(t, "http://127.0.0.1:8080/hello", 200)
}

// TestSystemdCPUs: the CPUs a unit's AllowedCPUs= gives (the cpuset
// controller, which binds every process of the unit's group) bind its
// cells, whatever their program asks; CPUAffinity= alone, the control,
// is only where they start: a program widens its own affinity to every
// CPU (sched_setaffinity needs no privilege within its cpuset), as the
// unit's comment says.
func TestSystemdCPUs(t *testing.T) {
	underSystemd(t)
	if runtime.NumCPU() < 2 {
		t.Fatalf("%d CPU: the test needs 2 (vmrun -smp 2)", runtime.NumCPU())
	}
	policy := installUnits(t)
	// The program widens its shell's affinity to every CPU, then reports
	// the CPUs of a process it starts.
	script := filepath.Join(systemdCGI, "cpus.sh")
	if err := os.WriteFile(script, []byte("#!/bin/sh\nprintf 'Content-Type: text/plain\\n\\n'\ntaskset -apc 0-"+strconv.Itoa(runtime.NumCPU()-1)+" $$ >/dev/null 2>&1\ngrep Cpus_allowed_list /proc/self/status\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	writePolicy(t, policy, systemdPolicy+`  - {name: cpus, match: {path: /cpus}, tenant: web, program: "`+script+`", memory: 16Mi}
`)
	const dropIn = "/etc/systemd/system/cellgate.service.d/cpus.conf"
	if err := os.MkdirAll(filepath.Dir(dropIn), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(filepath.Dir(dropIn)) })
	mustSystemctl(t, "start", "cellgate.socket", "cellgate-admin.socket")
	all := "0-" + strconv.Itoa(runtime.NumCPU()-1)
	for _, tc := range []struct{ option, want string }{
		{"CPUAffinity=0", all},
		{"AllowedCPUs=0", "0"},
	} {
		if err := os.WriteFile(dropIn, []byte("[Service]\n"+tc.option+"\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		mustSystemctl(t, "daemon-reload")
		mustSystemctl(t, "restart", "cellgate.service")
		body := mustGet(t, "http://127.0.0.1:8080/cpus", 200)
		if got := strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(body), "Cpus_allowed_list:")); got != tc.want {
			t.Errorf("%s: a cell that asked for CPUs %s runs on %q, want %s", tc.option, all, got, tc.want)
		}
	}
}

// readmePostrotate is the command of README.md's logrotate recipe, the
// line between postrotate and endscript.
func readmePostrotate(t *testing.T) string {
	t.Helper()
	b, err := os.ReadFile("../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, rest, ok := strings.Cut(string(b), "    postrotate\n")
	cmd, _, ok2 := strings.Cut(rest, "\n    endscript")
	if !ok || !ok2 || strings.Contains(strings.TrimSpace(cmd), "\n") {
		t.Fatalf("README.md has no logrotate recipe with one postrotate command")
	}
	return strings.TrimSpace(cmd)
}
