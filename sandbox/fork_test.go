package sandbox

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"golang.org/x/sys/unix"
)

// python is the interpreter the fork driver's tests run: Debian's, as in
// production. Without it they skip (it is not the kernel they need).
const python = "/usr/bin/python3"

const wsgiApp = `
import os
def app(environ, start_response):
    body = ("hello %s %s" % (environ.get("PATH_INFO", ""), os.environ.get("ROUTE_VAR", ""))).encode()
    if environ.get("QUERY_STRING") == "crash":
        os._exit(3)
    if environ.get("QUERY_STRING") == "echo":
        body = environ["wsgi.input"].read(int(environ["CONTENT_LENGTH"]))
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// startTestPreloader starts a preloader of app (module hello) as the
// test's own user, over fake cells.
func startTestPreloader(t *testing.T, r *Runner, app string, recycle int64) (*Preloader, error) {
	t.Helper()
	return startPreloaderWith(t, r, app, func(c *PreloaderConfig) { c.RecycleAfter = recycle })
}

// startPreloaderWith is startTestPreloader with the config as edit leaves
// it.
func startPreloaderWith(t *testing.T, r *Runner, app string, edit func(*PreloaderConfig)) (*Preloader, error) {
	t.Helper()
	cfg := testPreloaderConfig(t, app)
	edit(&cfg)
	p, err := r.StartPreloader(context.Background(), cfg)
	if err == nil {
		t.Cleanup(func() { p.Close(5 * time.Second) })
	}
	return p, err
}

// testPreloaderConfig is the config of a preloader of app, written to a
// directory of its own as module hello.
func testPreloaderConfig(t *testing.T, app string) PreloaderConfig {
	t.Helper()
	if _, err := os.Stat(python); err != nil {
		t.Skipf("no %s: %v", python, err)
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "hello.py"), []byte(app), 0o644); err != nil {
		t.Fatal(err)
	}
	return PreloaderConfig{
		Route: "test", Python: python, App: "hello:app", AppDir: dir, Env: []string{"ROUTE_VAR=from-route"},
		StartTimeout: 30 * time.Second, WaitReady: 30 * time.Second,
	}
}

// forkRun runs one request through the preloader and returns its stdout.
func forkRun(t *testing.T, r *Runner, p *Preloader, query, body string) (Result, string) {
	t.Helper()
	var out bytes.Buffer
	env := []string{"REQUEST_METHOD=GET", "PATH_INFO=/x", "QUERY_STRING=" + query, "SERVER_NAME=test", "SERVER_PORT=80",
		"SERVER_PROTOCOL=HTTP/1.1", "CONTENT_LENGTH=" + itoa(len(body))}
	res, err := r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: strings.NewReader(body), Stdout: &out, Stderr: os.Stderr})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res, out.String()
}

func itoa(n int) string { return strconv.Itoa(n) }

// A request is served by a clone of the preloader, with CGI semantics, the
// request's environment (not the preloader's) beside the route's, and
// cellgate as the child's parent (reaped through its pidfd).
func TestForkServesRequests(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, wsgiApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		res, out := forkRun(t, r, p, "", "")
		if res.Cause != CauseOK || !strings.HasPrefix(out, "Status: 200 OK\r\n") || !strings.HasSuffix(out, "\r\n\r\nhello /x ") {
			t.Fatalf("request %d: cause %s, output %q", i, res.Cause, out)
		}
		if res.Spawn <= 0 || res.Clone <= 0 {
			t.Errorf("request %d: hand-off %s, of it the preloader's clone %s: want both measured", i, res.Spawn, res.Clone)
		}
	}
	res, out := forkRun(t, r, p, "echo", "abcde")
	if res.Cause != CauseOK || !strings.HasSuffix(out, "\r\n\r\nabcde") {
		t.Errorf("echo: cause %s, output %q", res.Cause, out)
	}
	res, _ = forkRun(t, r, p, "crash", "")
	if res.Cause != CauseExit || res.ExitCode != 3 {
		t.Errorf("crash: cause %s exit %d, want exit 3", res.Cause, res.ExitCode)
	}
	if st := p.Stats(); st.Spawned != 5 || st.Restarts != 0 || !st.Ready {
		t.Errorf("stats %+v, want 5 spawned, no restart, ready", st)
	}
}

// An app that fails to import gives a PreloadError carrying its traceback.
func TestForkImportError(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	_, err := startTestPreloader(t, r, "import no_such_module_here\n", 0)
	var pe *PreloadError
	if !errors.As(err, &pe) || !strings.Contains(pe.Output, "ModuleNotFoundError: No module named 'no_such_module_here'") {
		t.Fatalf("err = %v, want a PreloadError with the traceback", err)
	}
	_, err = startTestPreloader(t, r, "app = 42\n", 0)
	if !errors.As(err, &pe) || !strings.Contains(pe.Output, "not a WSGI callable") {
		t.Fatalf("err = %v, want a PreloadError: not callable", err)
	}
}

// An app whose code, at import, sends an error of its own (150 KiB, not
// the preloader's traceback cut to its last 16 Ki characters) has its end
// kept, no longer than the preloader's own can be, so that each
// restart's log line stays bounded.
func TestForkImportErrorCut(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	app := `
import json, os, socket
s = socket.socket(fileno=3)
s.send(json.dumps({"v": ` + strconv.Itoa(protoVersion) + `, "type": "error", "error": "x" * (150 << 10) + "the end"}).encode())
os._exit(0)
`
	_, err := startTestPreloader(t, r, app, 0)
	var pe *PreloadError
	if !errors.As(err, &pe) {
		t.Fatalf("err = %v, want a PreloadError", err)
	}
	if len(pe.Output) > maxImportError+64 || !strings.HasSuffix(pe.Output, "the end") || !strings.HasPrefix(pe.Output, "[") {
		t.Errorf("the error kept is %d bytes (%.40q...%q), want its last %d, marked as cut", len(pe.Output), pe.Output, pe.Output[max(0, len(pe.Output)-10):], maxImportError)
	}
}

// An app whose code, at import, sends the daemon a message with an fd on
// the preloader's socket has the preloader refused, and the fd it sent
// closed in the daemon, not left open there (one per restart).
func TestForkPreloaderFDClosed(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	app := `
import array, os, socket
s = socket.socket(fileno=3)
for kind in ("ready", "error"):
    msg = ('{"v": %d, "type": "%s", "pid": %d, "error": "x"}' % (` + strconv.Itoa(protoVersion) + `, kind, os.getpid())).encode()
    s.sendmsg([msg], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [0]))])
os._exit(0)
`
	before := openFDs(t)
	for i := 0; i < 3; i++ {
		if _, err := startTestPreloader(t, r, app, 0); err == nil || !strings.Contains(err.Error(), "with 1 fds, want 0") {
			t.Fatalf("start %d: %v, want the message with an fd refused", i+1, err)
		}
	}
	// A preloader's output pipe is closed by its reader once drained:
	// wait for that, not for a leak.
	after := openFDs(t)
	for end := time.Now().Add(5 * time.Second); after > before && time.Now().Before(end); after = openFDs(t) {
		time.Sleep(20 * time.Millisecond)
	}
	if after > before {
		t.Errorf("the daemon has %d fds open after three refused preloaders, %d before", after, before)
	}
}

// openFDs counts the test process's open fds.
func openFDs(t *testing.T) int {
	t.Helper()
	ents, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	return len(ents)
}

// A preloader killed with SIGKILL is restarted; requests after it succeed.
// recycle_after replaces it without counting a restart.
func TestForkRestartAndRecycle(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, wsgiApp, 2)
	if err != nil {
		t.Fatal(err)
	}
	pid := func() int {
		inst, err := p.ready(nil)
		if err != nil {
			t.Fatal(err)
		}
		return inst.pid
	}
	first := pid()
	syscall.Kill(first, syscall.SIGKILL)
	// Once its death is seen: a spawn that races with it may be read by
	// the dying preloader, and a request the preloader may have taken is
	// not sent again.
	for deadline := time.Now().Add(30 * time.Second); p.Stats().Restarts == 0 && time.Now().Before(deadline); {
		time.Sleep(10 * time.Millisecond)
	}
	res, out := forkRun(t, r, p, "", "")
	if res.Cause != CauseOK || !strings.Contains(out, "hello") {
		t.Fatalf("after SIGKILL: cause %s output %q", res.Cause, out)
	}
	second := pid()
	if second == first {
		t.Fatalf("the killed preloader %d still serves", first)
	}
	forkRun(t, r, p, "", "") // its second child: a replacement is started
	// The old one serves until the new one is ready; requests never wait.
	deadline := time.Now().Add(30 * time.Second)
	for pid() == second && time.Now().Before(deadline) {
		if res, _ := forkRun(t, r, p, "", ""); res.Cause != CauseOK {
			t.Fatalf("during the recycle: cause %s", res.Cause)
		}
	}
	if pid() == second {
		t.Fatalf("preloader %d not replaced after recycle_after 2", second)
	}
	// It ends once its last child was handed over: wait for it.
	err = syscall.Kill(second, 0)
	for deadline := time.Now().Add(30 * time.Second); !errors.Is(err, syscall.ESRCH) && time.Now().Before(deadline); err = syscall.Kill(second, 0) {
		time.Sleep(20 * time.Millisecond)
	}
	if !errors.Is(err, syscall.ESRCH) {
		t.Errorf("the recycled preloader %d is still there 30 s after it was replaced: %v", second, err)
	}
	// The counts are read before the next request: the loop's last
	// request may have been the replacement's first child, and a second
	// one would start the replacement's own recycle.
	if st := p.Stats(); st.Restarts != 1 || st.Recycles != 1 {
		t.Errorf("stats %+v, want 1 restart and 1 recycle", st)
	}
	res, _ = forkRun(t, r, p, "", "")
	if res.Cause != CauseOK {
		t.Errorf("after the recycle: cause %s", res.Cause)
	}
}

// TestForkOutOfDate: a preloader whose view no longer covers the daemon's
// files is out of service at once (no request reaches it: they wait) and
// replaced; the next request is the replacement's child, and it counts as
// a recycle, not a restart.
func TestForkOutOfDate(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, wsgiApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	old, err := p.ready(nil)
	if err != nil {
		t.Fatal(err)
	}
	old.mu.Lock()
	p.outOfDate(old)
	old.mu.Unlock()
	if !old.broken.Load() {
		t.Fatal("the stale preloader is still in service")
	}
	p.mu.Lock()
	cur := p.cur
	p.mu.Unlock()
	if cur == old {
		t.Fatal("the stale preloader is still the current one")
	}
	res, out := forkRun(t, r, p, "", "")
	if res.Cause != CauseOK || !strings.Contains(out, "hello") {
		t.Fatalf("after the preloader went stale: cause %s output %q", res.Cause, out)
	}
	inst, err := p.ready(nil)
	if err != nil || inst == old {
		t.Fatalf("ready after the replacement: %v (the stale one: %v)", err, inst == old)
	}
	select {
	case <-old.exited:
	case <-time.After(30 * time.Second):
		t.Errorf("the stale preloader %d has not exited", old.pid)
	}
	if st := p.Stats(); st.Restarts != 0 || st.Recycles != 1 {
		t.Errorf("stats %+v, want no restart and 1 recycle", st)
	}
}

// Closing the preloader ends its process.
func TestForkClose(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, wsgiApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	inst, _ := p.ready(nil)
	p.Close(5 * time.Second)
	if err := syscall.Kill(inst.pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("preloader %d after Close: kill 0 = %v, want ESRCH", inst.pid, err)
	}
	if _, err := r.Run(context.Background(), Spec{Preloader: p}); !errors.Is(err, ErrNoPreloader) {
		t.Errorf("Run after Close: %v, want ErrNoPreloader", err)
	}
}

func TestParseMessage(t *testing.T) {
	tests := []struct {
		name string
		msg  string
		fds  int
		want []string
		err  string
	}{
		{"ready", `{"v":3,"type":"ready","pid":7,"runtime":"python-wsgi"}`, 0, []string{msgReady, msgError}, ""},
		{"spawned", `{"v":3,"type":"spawned","id":3,"pid":9}`, 1, []string{msgSpawned, msgError}, ""},
		{"error", `{"v":3,"type":"error","id":3,"error":"clone3: EPERM"}`, 0, []string{msgSpawned, msgError}, ""},
		{"other version", `{"v":2,"type":"ready","pid":7}`, 0, []string{msgReady}, "version 2"},
		{"no version", `{"type":"ready","pid":7}`, 0, []string{msgReady}, "version 0"},
		{"unexpected type", `{"v":3,"type":"spawned","id":1,"pid":7}`, 1, []string{msgReady, msgError}, `message "spawned"`},
		{"spawned without its pidfd", `{"v":3,"type":"spawned","id":3,"pid":9}`, 0, []string{msgSpawned}, "with 0 fds, want 1"},
		{"error with an fd", `{"v":3,"type":"error","error":"x"}`, 1, []string{msgError}, "with 1 fds, want 0"},
		{"spawned without a pid", `{"v":3,"type":"spawned","id":3}`, 1, []string{msgSpawned}, "without a pid"},
		{"not JSON", `ready`, 0, []string{msgReady}, "not a JSON message"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := parseMessage([]byte(tt.msg), tt.fds, tt.want...)
			if tt.err == "" {
				if err != nil || m == nil {
					t.Fatalf("err = %v", err)
				}
				return
			}
			if !errors.Is(err, errProtocol) || !strings.Contains(err.Error(), tt.err) {
				t.Fatalf("err = %v, want errProtocol containing %q", err, tt.err)
			}
		})
	}
}

func TestSpawnMessage(t *testing.T) {
	b, err := spawnMessage(5, 12, []string{"A=1"}, true, time.UnixMilli(1234))
	if err != nil {
		t.Fatal(err)
	}
	want := `{"v":3,"type":"spawn","id":5,"uid":12,"env":["A=1"],"cgroup":true,"deadline_ms":1234}`
	if string(b) != want {
		t.Errorf("spawn = %s\nwant    %s", b, want)
	}
	if _, err := spawnMessage(5, -1, []string{"A=" + strings.Repeat("x", maxMessage)}, false, time.Now()); !errors.Is(err, ErrRequestTooLarge) {
		t.Errorf("oversized spawn: %v, want ErrRequestTooLarge", err)
	}
	// Bytes that are not UTF-8 (or are) travel as the code points of
	// their values, each of the 256 whole.
	b, err = spawnMessage(6, 12, []string{"PATH_INFO=/caf\xe9", "HTTP_X_UTF8=Jos\xc3\xa9"}, false, time.UnixMilli(1234))
	want = `{"v":3,"type":"spawn","id":6,"uid":12,"env":["PATH_INFO=/caf\u00e9","HTTP_X_UTF8=Jos\u00c3\u00a9"],"deadline_ms":1234}`
	var m, w message
	if err != nil || json.Unmarshal(b, &m) != nil || json.Unmarshal([]byte(want), &w) != nil || !reflect.DeepEqual(m, w) {
		t.Errorf("spawn = %s, %v\nwant    %s", b, err, want)
	}
	all := make([]byte, 255)
	for i := range all {
		all[i] = byte(i + 1)
	}
	env := []string{"ALL=" + string(all), "A=1"}
	b, err = spawnMessage(7, 12, env, false, time.UnixMilli(1234))
	if err != nil || json.Unmarshal(b, &m) != nil {
		t.Fatalf("spawn = %s, %v", b, err)
	}
	for i, kv := range m.Env {
		var back []byte
		for _, r := range kv {
			if r > 0xff {
				t.Fatalf("env %d: code point %U beyond latin-1", i, r)
			}
			back = append(back, byte(r))
		}
		if string(back) != env[i] {
			t.Errorf("env %d back as latin-1: %q, want %q", i, back, env[i])
		}
	}
}

func TestIDMap(t *testing.T) {
	got := idMap(100, []uint32{200, 201, 202, 300, 301, 205})
	want := []syscall.SysProcIDMap{{ContainerID: 0, HostID: 100, Size: 1}, {ContainerID: 1, HostID: 200, Size: 3},
		{ContainerID: 4, HostID: 300, Size: 2}, {ContainerID: 6, HostID: 205, Size: 1}}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("idMap = %+v\nwant %+v", got, want)
	}
}

func TestProcParsers(t *testing.T) {
	if got := fdinfoPid([]byte("pos:\t0\nflags:\t02000002\nPid:\t4242\nNSpid:\t4242\n")); got != 4242 {
		t.Errorf("fdinfoPid = %d", got)
	}
	if got := statPPid([]byte("77 (a) b) c) S 12 77 77 0")); got != 12 {
		t.Errorf("statPPid = %d", got)
	}
	if got := unifiedPath([]byte("12:memory:/x\n0::/cellgate/cells/t/c1\n")); got != "/cellgate/cells/t/c1" {
		t.Errorf("unifiedPath = %q", got)
	}
}

func TestChildSetup(t *testing.T) {
	for _, tt := range []struct {
		name   string
		userns bool
		want   string
	}{
		{"unconfined, no user namespace", false, `{"newpid":false,"newns":false,"newipc":false,"proc":false}`},
		{"unconfined", true, `{"newpid":true,"newns":false,"newipc":false,"proc":false}`},
	} {
		if got, err := newChildSetup(nil, tt.userns); err != nil || got != tt.want {
			t.Errorf("%s: %s, %v; want %s", tt.name, got, err, tt.want)
		}
	}
	plan := &confine.Plan{Namespaces: confine.AllNamespaces, Seccomp: true,
		Tmpfs: []confine.Tmpfs{{Target: "/tmp", Size: 1 << 20, Mode: 0o1777}}}
	pre, err := plan.ForPreloader()
	if err != nil {
		t.Fatal(err)
	}
	prep, err := confine.Prepare(pre)
	if err != nil {
		t.Fatal(err)
	}
	got, err := newChildSetup(prep, true)
	if err != nil {
		t.Fatal(err)
	}
	var c childSetup
	if err := json.Unmarshal([]byte(got), &c); err != nil {
		t.Fatal(err)
	}
	f, _ := confine.Filter()
	if !c.NewPID || !c.NewNS || !c.NewIPC || !c.Proc || len(c.Tmpfs) != 1 || c.Tmpfs[0] != (childTmpfs{"/tmp", 1 << 20, 0o1777}) ||
		len(c.Seccomp) != 16*len(f) {
		t.Errorf("confined child set-up %s: want every namespace, the tmpfs, /proc and the %d-instruction filter", got, len(f))
	}
	// Shared PID and mount namespaces: no /proc of its own, no tmpfs.
	plan = &confine.Plan{Namespaces: confine.NSIPC | confine.NSNet, Tmpfs: plan.Tmpfs}
	pre, _ = plan.ForPreloader()
	prep, _ = confine.Prepare(pre)
	if got, _ := newChildSetup(prep, true); got != `{"newpid":false,"newns":false,"newipc":true,"proc":false}` {
		t.Errorf("child set-up with pid and filesystem shared: %s", got)
	}
}

// What decides a retry after a failed hand-off (runFork); the retry itself
// needs cells that kill, in integration/fork_test.go.
func TestForkRetryDecision(t *testing.T) {
	body := strings.NewReader("body")
	io.ReadAll(body)
	if !rewind(body) || !rewind(nil) || rewind(io.MultiReader(body)) {
		t.Errorf("rewind: a seeker, nil and a plain reader: want true, true, false")
	}
	if b, _ := io.ReadAll(body); string(b) != "body" {
		t.Errorf("after rewind: %q", b)
	}
	status := func(uids string) []byte { return []byte("Name:\tpython3\nUid:\t" + uids + "\nGid:\t0\t0\t0\t0\n") }
	if !sameUIDs(status("500\t500\t500\t500"), "500") {
		t.Errorf("sameUIDs: the preloader's own credentials not recognised")
	}
	for _, uids := range []string{"501\t501\t501\t501", "500\t501\t500\t500", "500\t500\t500"} {
		if sameUIDs(status(uids), "500") {
			t.Errorf("sameUIDs(%q, 500) = true: a child that changed its uid counts as never run", uids)
		}
	}
}

// forkRunEnv runs one request with env through the preloader and returns
// its stdout and stderr.
func forkRunEnv(t *testing.T, r *Runner, p *Preloader, env []string, body string) (Result, string, string) {
	t.Helper()
	var out, errOut bytes.Buffer
	res, err := r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: strings.NewReader(body), Stdout: &out, Stderr: &errOut})
	if err != nil {
		t.Fatalf("Run: %v", err)
	}
	return res, out.String(), errOut.String()
}

// requestEnv is a GET of path with query, as the proxy gives it.
func requestEnv(path, query string) []string {
	return []string{"REQUEST_METHOD=GET", "PATH_INFO=" + path, "QUERY_STRING=" + query, "SERVER_NAME=test",
		"SERVER_PORT=80", "SERVER_PROTOCOL=HTTP/1.1", "CONTENT_LENGTH=0"}
}

// stdioApp writes where apps write: print, logging set up at import on
// sys.stdout, stderr; and keeps a log file it opened at import.
const stdioApp = `
import logging, os, signal, sys
logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s:%(message)s")
LOG = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "app.log"), "a")

def app(environ, start_response):
    q = environ.get("QUERY_STRING", "")
    body = b"the body"
    if q == "print":
        logging.info("handling %s", environ["PATH_INFO"])
        print("printed in the view")
        print("to the old stdout", file=sys.__stdout__)
        sys.__stdout__.flush()
    elif q == "stderr-killed":
        sys.stderr.write("written before the kill\n")
        os.kill(os.getpid(), signal.SIGKILL)
    elif q == "stderr-undecodable":
        print("caf\udce9", file=sys.stderr)
    elif q == "logfile":
        mine = open(os.path.join(os.path.dirname(LOG.name), "request.txt"), "w")
        LOG.write("from the request\n")
        LOG.flush()
        mine.close()
        with open(LOG.name) as f, open(mine.name) as g:
            body = ("app.log %r request.txt %r" % (f.read(), g.read())).encode()
    elif q == "fds":
        lines = []
        for fd in sorted(int(f) for f in os.listdir("/proc/self/fd")):
            try:
                target, inh = os.readlink("/proc/self/fd/%d" % fd), os.get_inheritable(fd)
            except OSError:
                continue  # the listing's own
            lines.append("%d %s %s" % (fd, "inherit" if inh else "cloexec", target))
        body = "\n".join(lines).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// The child's stderr is line-buffered and never fails on what it cannot
// encode: a line written just before the child is killed is kept.
func TestForkStderrUnbuffered(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, stdioApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	res, _, errOut := forkRunEnv(t, r, p, requestEnv("/x", "stderr-killed"), "")
	if res.Cause != CauseSignal || !strings.Contains(errOut, "written before the kill\n") {
		t.Errorf("killed: cause %s, stderr %q; want a signal and the line written before it", res.Cause, errOut)
	}
	res, out, errOut := forkRunEnv(t, r, p, requestEnv("/x", "stderr-undecodable"), "")
	if res.Cause != CauseOK || !strings.HasPrefix(out, "Status: 200 OK\r\n") || !strings.Contains(errOut, `caf\udce9`+"\n") {
		t.Errorf("a lone surrogate on stderr: cause %s, output %q, stderr %q; want 200 and it escaped", res.Cause, out, errOut)
	}
}

// What a child's app writes to its standard output goes to the request's
// stderr (cellgate's log), not into its response: print in a view, and
// logging set up at import on sys.stdout.
func TestForkAppStdoutIsItsLog(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, stdioApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	res, out, errOut := forkRunEnv(t, r, p, requestEnv("/x", "print"), "")
	want := "Status: 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 8\r\n\r\nthe body"
	if res.Cause != CauseOK || out != want {
		t.Errorf("response: cause %s, %q\nwant %q", res.Cause, out, want)
	}
	for _, line := range []string{"INFO:handling /x\n", "printed in the view\n", "to the old stdout\n"} {
		if !strings.Contains(errOut, line) {
			t.Errorf("stderr %q: want %q in it", errOut, line)
		}
	}
}

// The child keeps the files its app opened at import; it has only its
// standard streams inheritable, the response's private fd close-on-exec,
// and neither the preloader's socket nor the spawn's fds.
func TestForkChildFDs(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, stdioApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	res, out, errOut := forkRunEnv(t, r, p, requestEnv("/x", "logfile"), "")
	if want := "\r\n\r\napp.log 'from the request\\n' request.txt ''"; res.Cause != CauseOK || !strings.HasSuffix(out, want) {
		t.Errorf("write to a file opened at import: cause %s, output %q, stderr %q; want it in that file alone (%q)", res.Cause, out, errOut, want)
	}
	res, out, _ = forkRunEnv(t, r, p, requestEnv("/x", "fds"), "")
	_, listing, _ := strings.Cut(out, "\r\n\r\n")
	var inherit []string
	var log, private bool
	for _, l := range lines(listing) {
		f := strings.SplitN(l, " ", 3)
		if len(f) != 3 {
			t.Fatalf("fds: %q", out)
		}
		switch {
		case f[1] == "inherit":
			inherit = append(inherit, f[0])
		case strings.HasSuffix(f[2], "/app.log"):
			log = true
		case strings.HasPrefix(f[2], "pipe:"):
			private = true
		}
		if strings.HasPrefix(f[2], "socket:") {
			t.Errorf("fd %s is a socket (the preloader's?)", f[0])
		}
	}
	if res.Cause != CauseOK || !reflect.DeepEqual(inherit, []string{"0", "1", "2"}) || !log || !private {
		t.Errorf("the child's fds:\n%s\nwant 0, 1, 2 inheritable, the app's log file and the response's pipe close-on-exec", listing)
	}
}

// envApp answers what it was given of a few variables: wsgiref's environ
// value and the process environment's bytes.
const envApp = `
import os
KEYS = ["PATH_INFO", "HTTP_X_NAME", "HTTP_X_UTF8", "QUERY_STRING", "X_OTHER"]
def app(environ, start_response):
    body = "\n".join(ascii((k, environ.get(k), os.environb.get(k.encode()))) for k in KEYS).encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
`

// A fork child's environment holds the request's bytes, UTF-8 or not, and
// its WSGI environ is what wsgiref's CGIHandler makes of them in a cgi
// route's program: the request's variables as bytes in latin-1 (PEP 3333),
// the others decoded as the interpreter decodes its environment.
func TestForkEnvironBytes(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, envApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	env := append(requestEnv("/caf\xe9", "q=\xff\xfe"), "HTTP_X_NAME=Jos\xe9", "HTTP_X_UTF8=Jos\xc3\xa9", "X_OTHER=caf\xe9")
	res, fork, errOut := forkRunEnv(t, r, p, env, "")
	if res.Cause != CauseOK {
		t.Fatalf("fork: cause %s, output %q, stderr %q", res.Cause, fork, errOut)
	}
	var cgi, cgiErr bytes.Buffer
	res, err = r.Run(context.Background(), Spec{Path: python, Args: []string{python, "-c", envApp + "\nfrom wsgiref.handlers import CGIHandler\nCGIHandler().run(app)\n"},
		Env: env, Stdout: &cgi, Stderr: &cgiErr})
	if err != nil || res.Cause != CauseOK {
		t.Fatalf("cgi: %v, cause %s, stderr %q", err, res.Cause, cgiErr.String())
	}
	for _, want := range []string{
		`('PATH_INFO', '/caf\xe9', b'/caf\xe9')`,
		`('HTTP_X_NAME', 'Jos\xe9', b'Jos\xe9')`,
		`('HTTP_X_UTF8', 'Jos\xc3\xa9', b'Jos\xc3\xa9')`,
		`('QUERY_STRING', 'q=\xff\xfe', b'q=\xff\xfe')`,
		`('X_OTHER', 'caf\udce9', b'caf\xe9')`,
	} {
		if !strings.Contains(fork, want+"\n") && !strings.HasSuffix(fork, want) {
			t.Errorf("fork child's environ:\n%s\nwant %s in it", fork, want)
		}
	}
	if fork != cgi.String() {
		t.Errorf("fork child's answer:\n%s\na cgi route's CGIHandler's:\n%s", fork, cgi.String())
	}
}

// dyingApp is an app whose preloader dies once between a child's clone
// and its answer, after the child had time to serve its request; each
// request the app serves appends its body to runs in its directory.
const dyingApp = countingApp + `
import time
def die_once():
    mark = os.path.join(here, "died")
    if not os.path.exists(mark):
        open(mark, "w").close()
        time.sleep(0.5)
        os._exit(9)
os.register_at_fork(after_in_parent=die_once)
`

// A preloader that dies after it cloned the request's child (which may
// have served the request and exited: a zombie does not populate its
// cell) is not sent the request again: only a spawn that never reached
// the preloader is. Its error is ErrPreloaderLost, not ErrNoPreloader,
// which says that nothing ran (the proxy's 503 with Retry-After).
func TestForkNoSecondRunAfterAnsweringPreloaderDies(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, dyingApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	env := []string{"REQUEST_METHOD=POST", "PATH_INFO=/x", "SERVER_NAME=test", "SERVER_PORT=80",
		"SERVER_PROTOCOL=HTTP/1.1", "CONTENT_LENGTH=5"}
	_, err = r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: strings.NewReader("abcde"), Stdout: &out, Stderr: os.Stderr})
	if !errors.Is(err, ErrPreloaderLost) || errors.Is(err, ErrNoPreloader) {
		t.Errorf("Run: %v, want ErrPreloaderLost and not ErrNoPreloader (the request ran)", err)
	}
	runs, _ := os.ReadFile(filepath.Join(p.cfg.AppDir, "runs"))
	if got := lines(string(runs)); len(got) != 1 || got[0] != "ran b'abcde'" {
		t.Errorf("the request ran %d times: %q; want once, with its body", len(got), got)
	}
	if st := p.Stats(); st.Retries != 0 {
		t.Errorf("stats %+v: want no retry", st)
	}
}

// countingApp echoes its body and appends it to runs in its directory.
const countingApp = `
import os
here = os.path.dirname(os.path.abspath(__file__))
def app(environ, start_response):
    body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
    with open(os.path.join(here, "runs"), "a") as f:
        f.write("ran %r\n" % body)
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [body]
`

// A recycle waits for the spawn in flight on the old instance: each
// request, sent while preloaders are replaced every few children, runs
// once and is answered.
func TestForkRecycleUnderLoad(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, countingApp, 3)
	if err != nil {
		t.Fatal(err)
	}
	const workers, each = 6, 8
	errs := make(chan error, workers*each)
	var wg sync.WaitGroup
	for i := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range each {
				body := fmt.Sprintf("request-%d-%d", i, j)
				var out bytes.Buffer
				env := []string{"REQUEST_METHOD=POST", "PATH_INFO=/x", "SERVER_NAME=test", "SERVER_PORT=80",
					"SERVER_PROTOCOL=HTTP/1.1", "CONTENT_LENGTH=" + itoa(len(body))}
				res, err := r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: strings.NewReader(body), Stdout: &out, Stderr: os.Stderr})
				if err == nil && (res.Cause != CauseOK || !strings.HasSuffix(out.String(), "\r\n\r\n"+body)) {
					err = fmt.Errorf("cause %s, output %q", res.Cause, out.String())
				}
				if err != nil {
					errs <- fmt.Errorf("%s: %w", body, err)
				}
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	runs, _ := os.ReadFile(filepath.Join(p.cfg.AppDir, "runs"))
	seen := map[string]int{}
	for _, l := range lines(string(runs)) {
		seen[l]++
	}
	for l, n := range seen {
		if n != 1 || !strings.HasPrefix(l, "ran b'request-") {
			t.Errorf("%q ran %d times", l, n)
		}
	}
	if len(seen) != workers*each {
		t.Errorf("%d distinct requests ran, want %d", len(seen), workers*each)
	}
	if st := p.Stats(); st.Restarts != 0 || st.Recycles == 0 {
		t.Errorf("stats %+v: want recycles and no restart", st)
	}
}

// A request whose spawn is larger than a datagram of the preloader's
// socket may be (its send buffer, 208 KiB by default) is served when
// cellgate could raise the buffer, else refused as too large; a spawn over
// the protocol's bound is refused. Either way the preloader is not taken
// for broken: it is neither killed nor restarted.
func TestForkOversizedSpawn(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, wsgiApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	inst, _ := p.ready(nil)
	run := func(query string) (Result, error) {
		env := []string{"REQUEST_METHOD=GET", "PATH_INFO=/x", "QUERY_STRING=" + query, "SERVER_NAME=test",
			"SERVER_PORT=80", "SERVER_PROTOCOL=HTTP/1.1"}
		return r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdout: io.Discard, Stderr: os.Stderr})
	}
	res, err := run(strings.Repeat("q", 300<<10))
	if !errors.Is(err, ErrRequestTooLarge) && (err != nil || res.Cause != CauseOK) {
		t.Errorf("a 300 KiB spawn: cause %s, %v; want served or ErrRequestTooLarge", res.Cause, err)
	}
	if _, err := run(strings.Repeat("q", maxMessage)); !errors.Is(err, ErrRequestTooLarge) {
		t.Errorf("a spawn over the protocol's bound: %v, want ErrRequestTooLarge", err)
	}
	if now, _ := p.ready(nil); now != inst || p.Stats().Restarts != 0 {
		t.Errorf("the preloader was replaced (stats %+v)", p.Stats())
	}
	if res, _ := forkRun(t, r, p, "", ""); res.Cause != CauseOK {
		t.Errorf("after the oversized requests: cause %s", res.Cause)
	}
}

// A send the socket refuses as too large (EMSGSIZE) is the request's
// fault, not the preloader's: nothing reached it.
func TestForkSpawnOverSendBuffer(t *testing.T) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fds[1])
	if err := unix.SetsockoptInt(fds[0], unix.SOL_SOCKET, unix.SO_SNDBUF, 4096); err != nil {
		t.Fatal(err)
	}
	f := os.NewFile(uintptr(fds[0]), "test-socket")
	c, err := net.FileConn(f)
	f.Close()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	inst := &instance{conn: c.(*net.UnixConn), maxSpawn: maxMessage}
	_, err = inst.spawn(make([]byte, 64<<10), nil, &fakeCell{})
	if !errors.Is(err, ErrRequestTooLarge) || errors.Is(err, ErrNoPreloader) {
		t.Errorf("spawn over the send buffer: %v, want ErrRequestTooLarge", err)
	}
}

// slowBody is a request body whose first Read takes a while; it counts
// the Reads in progress.
type slowBody struct {
	r      *strings.Reader
	active atomic.Int32
	first  atomic.Bool
}

func (b *slowBody) Read(p []byte) (int, error) {
	b.active.Add(1)
	defer b.active.Add(-1)
	if !b.first.Swap(true) {
		time.Sleep(1500 * time.Millisecond)
	}
	return b.r.Read(p)
}

func (b *slowBody) Seek(off int64, whence int) (int64, error) { return b.r.Seek(off, whence) }

// A failed fork start returns only once its stdin copier has ended: a
// retry rewinds the same Reader (runFork), which a copy still under way
// would move.
func TestForkFailedStartEndsStdinCopy(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, dyingApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	body := &slowBody{r: strings.NewReader("abcde")}
	env := []string{"REQUEST_METHOD=POST", "PATH_INFO=/x", "SERVER_NAME=test", "SERVER_PORT=80",
		"SERVER_PROTOCOL=HTTP/1.1", "CONTENT_LENGTH=5"}
	if _, err := r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: body, Stdout: io.Discard, Stderr: os.Stderr}); err == nil {
		t.Fatal("Run: no error, want the failed hand-off's")
	}
	if n := body.active.Load(); n != 0 {
		t.Errorf("Run returned with %d Read of its stdin under way", n)
	}
}

// garbageApp is the counting app whose preloader, once, answers a spawn
// with the bytes of GARBAGE (hex) before its own answer, after the child
// had time to serve its request.
const garbageApp = countingApp + `
import time
def answer_garbage_once():
    mark = os.path.join(here, "answered")
    if not os.path.exists(mark):
        open(mark, "w").close()
        time.sleep(0.5)
        os.write(3, bytes.fromhex(GARBAGE))
os.register_at_fork(after_in_parent=answer_garbage_once)
`

// A preloader that answers a spawn against the protocol read it, and may
// have cloned the child that ran it (here it did): it is replaced, and the
// request is ErrPreloaderLost (the proxy's 502 preloader_lost, not a 500),
// never sent again.
func TestForkMalformedAnswer(t *testing.T) {
	for _, tc := range []struct{ name, answer string }{
		{"not JSON", "\xffspawned, trust me"},
		{"empty object", "{}"},
		{"wrong version", `{"v":2,"type":"spawned","id":1,"pid":1}`},
		{"unknown type", `{"v":3,"type":"ready","id":1,"pid":1}`},
		{"spawned without pid or pidfd", `{"v":3,"type":"spawned","id":1}`},
		{"wrong id", `{"v":3,"type":"error","id":7,"error":"no"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := newTestRunner(t, &fakeCells{})
			app := fmt.Sprintf("GARBAGE = %q\n%s", fmt.Sprintf("%x", tc.answer), garbageApp)
			p, err := startTestPreloader(t, r, app, 0)
			if err != nil {
				t.Fatal(err)
			}
			env := []string{"REQUEST_METHOD=POST", "PATH_INFO=/x", "SERVER_NAME=test", "SERVER_PORT=80",
				"SERVER_PROTOCOL=HTTP/1.1", "CONTENT_LENGTH=5"}
			_, err = r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: strings.NewReader("abcde"), Stdout: io.Discard, Stderr: os.Stderr})
			if !errors.Is(err, ErrPreloaderLost) || errors.Is(err, ErrNoPreloader) {
				t.Errorf("Run: %v, want ErrPreloaderLost and not ErrNoPreloader (the request may have run)", err)
			}
			// The next request gets a sound preloader.
			if res, out := forkRun(t, r, p, "", ""); res.Cause != CauseOK || !strings.Contains(out, "200 OK") {
				t.Errorf("the next request: cause %s, output %q", res.Cause, out)
			}
			if st := p.Stats(); st.Restarts != 1 || st.Retries != 0 {
				t.Errorf("stats %+v: want 1 restart and no retry", st)
			}
			runs, _ := os.ReadFile(filepath.Join(p.cfg.AppDir, "runs"))
			if n := strings.Count(string(runs), "ran b'abcde'"); n != 1 {
				t.Errorf("the request ran %d times: %q; want once", n, runs)
			}
		})
	}
}

// TestForkImportHangs: an import that never ends is killed at
// StartTimeout and its start fails, naming the bound. Before, the
// preloader was reaped without being killed: StartPreloader (serve's
// start, or a reload holding the daemon's lock) waited for good.
func TestForkImportHangs(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	cfg := testPreloaderConfig(t, "import time\nwhile True:\n    time.sleep(1)\n")
	cfg.StartTimeout = time.Second
	done := make(chan error, 1)
	go func() {
		p, err := r.StartPreloader(context.Background(), cfg)
		if err == nil {
			p.Close(5 * time.Second)
		}
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil || !strings.Contains(err.Error(), "not ready after 1s: killed") {
			t.Errorf("StartPreloader = %v, want not ready after 1s: killed", err)
		}
	case <-time.After(time.Minute):
		t.Fatal("StartPreloader still waiting a minute after its 1s StartTimeout")
	}
}

// importingPid waits (30 s at most) for an app's import to write its pid
// to marker, and returns it.
func importingPid(t *testing.T, marker string) int {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(marker); err == nil && len(b) > 0 {
			if pid, err := strconv.Atoi(string(b)); err == nil {
				return pid
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the app's import did not write %s", marker)
		}
	}
}

// TestForkStartAbandoned: the end of StartPreloader's context abandons an
// import under way at once, the import killed. Before, nothing but
// StartTimeout (a minute by default) ended the wait: serve, stopped while
// a reload or its start imported a fork route's app, went on waiting for
// it, past systemd's TimeoutStopSec and the pod's grace period.
func TestForkStartAbandoned(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	cfg := testPreloaderConfig(t, "import os, time\nopen('importing', 'w').write(str(os.getpid()))\nwhile True:\n    time.sleep(1)\n")
	cfg.StartTimeout = time.Minute
	stopped := errors.New("serve is stopping")
	ctx, cancel := context.WithCancelCause(context.Background())
	done := make(chan error, 1)
	go func() {
		p, err := r.StartPreloader(ctx, cfg)
		if err == nil {
			p.Close(5 * time.Second)
		}
		done <- err
	}()
	pid := importingPid(t, filepath.Join(cfg.AppDir, "importing"))
	cancel(stopped)
	select {
	case err := <-done:
		if !errors.Is(err, stopped) || !strings.Contains(err.Error(), "start abandoned") {
			t.Errorf("StartPreloader = %v, want the start abandoned, for the context's cause", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("StartPreloader still waiting 20s after its context ended")
	}
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("the abandoned import (pid %d) lives on: kill 0 = %v", pid, err)
	}
}

// recycleFlakyApp imports once; a second import fails (and says so) while
// the marker its first import left is there.
const recycleFlakyApp = `
import os
if os.path.exists("imported"):
    open("failed", "w").close()
    raise RuntimeError("second import refused")
open("imported", "w").close()
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
`

// TestForkRecycleRetried: a replacement that fails to start is tried again
// (the old preloader serving meanwhile), and a preloader that goes stale
// after that failure is still replaced. Before, a failed replacement
// spent the instance's one request for a replacement: it was never
// recycled again, and once out of date no replacement came: every request
// waited WaitReady for nothing.
func TestForkRecycleRetried(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, recycleFlakyApp, 1)
	if err != nil {
		t.Fatal(err)
	}
	dir := p.cfg.AppDir
	if res, out := forkRun(t, r, p, "", ""); res.Cause != CauseOK || !strings.HasSuffix(out, "hello") {
		t.Fatalf("first request: cause %s output %q", res.Cause, out)
	}
	// Its child asked for a replacement, whose import fails.
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(10 * time.Millisecond) {
		if _, err := os.Stat(filepath.Join(dir, "failed")); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the replacement's import did not run")
		}
	}
	old, err := p.ready(nil)
	if err != nil {
		t.Fatalf("the old preloader does not serve on after the failed replacement: %v", err)
	}
	old.mu.Lock()
	p.outOfDate(old)
	old.mu.Unlock()
	if err := os.Remove(filepath.Join(dir, "imported")); err != nil {
		t.Fatal(err)
	}
	if res, out := forkRun(t, r, p, "", ""); res.Cause != CauseOK || !strings.HasSuffix(out, "hello") {
		t.Fatalf("request after the preloader went stale: cause %s output %q", res.Cause, out)
	}
	if inst, err := p.ready(nil); err != nil || inst == old {
		t.Errorf("ready: %v (still the stale one: %v)", err, inst == old)
	}
}

// TestForkBrokenNotReady: an instance found broken (a failed spawn killed
// it) is out of service at once: not reported ready, and requests wait
// for the next one instead of spinning on it. Before, ready looped on the
// broken instance's closed channel, a core per waiting request for as
// long as a replacement took to import.
func TestForkBrokenNotReady(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, wsgiApp, 0)
	if err != nil {
		t.Fatal(err)
	}
	inst, err := p.ready(nil)
	if err != nil {
		t.Fatal(err)
	}
	inst.broken.Store(true) // as a failed spawn leaves it, before its death is seen
	cancel := make(chan struct{})
	time.AfterFunc(200*time.Millisecond, func() { close(cancel) })
	if _, err := p.ready(cancel); !errors.Is(err, errNotReady) {
		t.Errorf("ready with the current instance broken: %v, want a wait given up", err)
	}
	if st := p.Stats(); st.Ready {
		t.Errorf("stats %+v: a broken instance reported ready", st)
	}
}

// TestForkImportChecks: a thread the threading module does not know (one
// a C extension starts: OpenBLAS, gRPC) makes the import fail, naming the
// count and the fix, as a threading.Thread does; and a traceback larger
// than the socket takes in one datagram reaches the PreloadError by its
// tail. Before, the thread passed (threading.active_count() was 1, and a
// clone of a multi-threaded process may hang on a lock another thread
// held), and the large traceback was lost (EMSGSIZE: only "ended before
// it was ready").
func TestForkImportChecks(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	_, err := startTestPreloader(t, r, "import _thread, time\n_thread.start_new_thread(time.sleep, (60,))\ndef app(e, s): pass\n", 0)
	var pe *PreloadError
	if !errors.As(err, &pe) || !strings.Contains(pe.Output, "started threads (2 in all)") {
		t.Errorf("import starting a thread threading does not count: %v, want a PreloadError: started threads (2 in all)", err)
	}
	_, err = startTestPreloader(t, r, "raise ValueError('x' * 300000 + ' the end')\n", 0)
	if !errors.As(err, &pe) || !strings.Contains(pe.Output, "characters cut]") || !strings.HasSuffix(strings.TrimSpace(pe.Output), "x the end") {
		t.Errorf("import with a 300 KB traceback: %.300v, want a PreloadError with its tail", err)
	}
}

// TestForkImportEnviron: what the app's import sets in its environment
// (os.environ.setdefault of its settings module, as Django's wsgi.py
// does) is in each request's environment, as in a cgi route, where the
// import runs in the request's process; the request's own variables stay
// its own. Before, each child's environment was the request's alone.
func TestForkImportEnviron(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	app := `
import os
os.environ.setdefault("APP_SETTINGS", "from-import")
os.environ["ROUTE_VAR"] = "changed-at-import"
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s %s %s" % (os.environ.get("APP_SETTINGS"), os.environ.get("ROUTE_VAR"), os.environ.get("QUERY_STRING"))).encode()]
`
	p, err := startTestPreloader(t, r, app, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res, out := forkRun(t, r, p, "q1", ""); res.Cause != CauseOK || !strings.HasSuffix(out, "\r\n\r\nfrom-import changed-at-import q1") {
		t.Errorf("cause %s output %q, want the import's APP_SETTINGS and ROUTE_VAR and the request's QUERY_STRING", res.Cause, out)
	}
}

// TestForkUIDsExhausted: a request beyond the uids the preloader's
// namespace maps fails with ErrNoUID (a 503) naming the bound and the key
// that raises it. Before: "acquire uid from 1-1: all 1 in use".
func TestForkUIDsExhausted(t *testing.T) {
	p := &Preloader{cfg: PreloaderConfig{Route: "app", ChildUIDs: []uint32{70000}}, nsUIDs: newUIDPool(UIDRange{First: 1, Count: 1})}
	first, err := forkDriver{p}.identity(&Spec{})
	if err != nil || first.uid != 70000 || first.nsUID != 1 {
		t.Fatalf("first identity = %+v, %v; want host uid 70000, uid 1 of the namespace", first, err)
	}
	defer first.release()
	_, err = forkDriver{p}.identity(&Spec{})
	if !errors.Is(err, ErrNoUID) || !strings.Contains(err.Error(), "route app has as many requests in flight") || !strings.Contains(err.Error(), "raise max_cells") {
		t.Errorf("second identity: %v, want ErrNoUID naming the route's bound and max_cells", err)
	}
}

// dirCells hands out cells with a real directory fd, as production cells
// have, named as a route group's cell, so that verifyChild checks the
// cgroup of the child a preloader claims.
type dirCells struct{ fakeCells }

type dirCell struct {
	*fakeCell
	fd int
}

func (d *dirCells) Get(ctx context.Context, prof *cgroup.Profile) (Cell, error) {
	c, err := d.fakeCells.Get(ctx, prof)
	if err != nil {
		return nil, err
	}
	fd, err := unix.Open(os.TempDir(), unix.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, err
	}
	return &dirCell{fakeCell: c.(*fakeCell), fd: fd}, nil
}

func (d *dirCells) Release(c Cell) {
	dc := c.(*dirCell)
	unix.Close(dc.fd)
	d.fakeCells.Release(dc.fakeCell)
}

func (c *dirCell) FD() int      { return c.fd }
func (c *dirCell) Path() string { return "/sys/fs/cgroup/cellgate/cells/t/f1-1/c9" }

// TestForkForeignChildNotKilled: a preloader's app (the tenant's code,
// run at import) that answers a spawn with a pidfd of another child of
// cellgate (another tenant's cell init or preloader, which it can see)
// gets its preloader restarted, and that child is left alone. Before,
// cellgate took any child of its own outside the cell for a stray the
// preloader had cloned, and killed and reaped it.
func TestForkForeignChildNotKilled(t *testing.T) {
	victim := exec.Command("sleep", "300")
	if err := victim.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { victim.Process.Kill(); victim.Wait() })
	app := `
import os, __main__
victim = int(os.environ["VICTIM"])
def clone_into(cgroup_fd, flags):
    return victim, os.pidfd_open(victim)  # clones nothing: names another child of cellgate
__main__.clone_into = clone_into
def app(environ, start_response):
    start_response("200 OK", [])
    return [b""]
`
	r := newTestRunner(t, &dirCells{})
	p, err := startPreloaderWith(t, r, app, func(c *PreloaderConfig) {
		c.Env = append(c.Env, "VICTIM="+strconv.Itoa(victim.Process.Pid))
	})
	if err != nil {
		t.Fatal(err)
	}
	env := []string{"REQUEST_METHOD=GET", "PATH_INFO=/", "SERVER_NAME=t", "SERVER_PORT=80", "SERVER_PROTOCOL=HTTP/1.1"}
	_, err = r.Run(context.Background(), Spec{Preloader: p, Env: env, Stdin: strings.NewReader(""), Stdout: io.Discard, Stderr: io.Discard})
	if err == nil || !strings.Contains(err.Error(), "not in cell") {
		t.Errorf("Run = %v, want the answer refused: the child is not in the cell", err)
	}
	var st unix.Siginfo
	if err := unix.Waitid(unix.P_PID, victim.Process.Pid, &st, unix.WEXITED|unix.WNOHANG|unix.WNOWAIT, nil); err != nil || st.Signo != 0 {
		t.Errorf("the other child %d was killed or reaped (waitid: %v, signal %d)", victim.Process.Pid, err, st.Signo)
	}
}

func TestInGroup(t *testing.T) {
	const dir = "/sys/fs/cgroup/cellgate/cells/t/f1-1"
	for path, want := range map[string]bool{
		"/cellgate/cells/t/f1-1":            true,
		"/cellgate/cells/t/f1-1/c9":         true,
		"/cellgate/cells/t/f1-1/preload/i3": true,
		"/cellgate/cells/t/f1-2/c9":         false,
		"/cellgate/cells/u/c9":              false,
		"/cellgate/supervisor":              false,
		"/user.slice/session-1.scope":       false,
		"/":                                 false,
		"":                                  false,
	} {
		if got := inGroup(dir, path); got != want {
			t.Errorf("inGroup(%q, %q) = %v, want %v", dir, path, got, want)
		}
	}
}

// TestForkWSGIFailures: the app's failures, each where wsgiref took it for
// something else. A close() of its iterable that raises after the whole
// response is logged and the response stands (wsgiref's close() reset
// headers_sent, and a 500 was written after the whole 200); the app's own
// ConnectionResetError (an upstream it reads) before the head is a 500
// with its traceback logged, and after it cuts the response (wsgiref took
// both for the client going away: no response and no traceback, or a 200
// cut short passed on as whole).
func TestForkWSGIFailures(t *testing.T) {
	app := `
class Body:
    def __iter__(self): return iter([b"hello ", b"world"])
    def close(self): raise RuntimeError("teardown failed")
def app(environ, start_response):
    q = environ.get("QUERY_STRING")
    if q == "reset-before":
        raise ConnectionResetError(104, "upstream reset")
    start_response("200 OK", [("Content-Type", "text/plain")])
    if q == "close-raises":
        return Body()
    def gen():
        yield b"first part; "
        raise ConnectionResetError(104, "upstream reset")
    return gen()
`
	r := newTestRunner(t, &fakeCells{})
	p, err := startTestPreloader(t, r, app, 0)
	if err != nil {
		t.Fatal(err)
	}
	res, out, log := forkRunEnv(t, r, p, requestEnv("/x", "close-raises"), "")
	if res.Cause != CauseOK || !strings.HasPrefix(out, "Status: 200 OK\r\n") || !strings.HasSuffix(out, "\r\n\r\nhello world") ||
		!strings.Contains(log, "RuntimeError: teardown failed") {
		t.Errorf("close() raising after the whole response: cause %s, output %q, log %q; want the 200 alone, the error logged", res.Cause, out, log)
	}
	res, out, log = forkRunEnv(t, r, p, requestEnv("/x", "reset-before"), "")
	if res.Cause != CauseOK || !strings.HasPrefix(out, "Status: 500 ") || !strings.Contains(log, "ConnectionResetError") {
		t.Errorf("the app's ConnectionResetError before its head: cause %s, output %q, log %q; want a 500, the traceback logged", res.Cause, out, log)
	}
	res, _, log = forkRunEnv(t, r, p, requestEnv("/x", "reset-after"), "")
	if res.Cause != CauseSignal || !strings.Contains(log, "ConnectionResetError") {
		t.Errorf("the app's ConnectionResetError after its head: cause %s, log %q; want the response cut (a crash), the traceback logged", res.Cause, log)
	}
}

// TestForkImportEnvironRequestWins: what the import set by default in the
// environment (os.environ.setdefault("HTTPS", "off")) gives way to the
// request's own meta-variable, as it does in a cgi route, where the
// import runs with the request's environment; a request without it gets
// the import's. Before, the import's value replaced the request's.
func TestForkImportEnvironRequestWins(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	app := `
import os
os.environ.setdefault("HTTPS", "off")
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [("%s %s" % (environ["wsgi.url_scheme"], os.environ.get("HTTPS"))).encode()]
`
	p, err := startTestPreloader(t, r, app, 0)
	if err != nil {
		t.Fatal(err)
	}
	if res, out, _ := forkRunEnv(t, r, p, append(requestEnv("/x", ""), "HTTPS=on"), ""); res.Cause != CauseOK || !strings.HasSuffix(out, "\r\n\r\nhttps on") {
		t.Errorf("a request with HTTPS=on: cause %s, output %q, want https on", res.Cause, out)
	}
	if res, out, _ := forkRunEnv(t, r, p, requestEnv("/x", ""), ""); res.Cause != CauseOK || !strings.HasSuffix(out, "\r\n\r\nhttp off") {
		t.Errorf("a request without HTTPS: cause %s, output %q, want the import's off", res.Cause, out)
	}
}

// TestForkHeadLength: the head of a HEAD the app answers without a body
// (as frameworks do) has no Content-Length of 0, which would not be its
// GET's body's; one the app gives stands.
func TestForkHeadLength(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	app := `
def app(environ, start_response):
    headers = [("Content-Type", "text/plain")]
    if environ.get("QUERY_STRING") == "length":
        headers.append(("Content-Length", "1000"))
    start_response("200 OK", headers)
    if environ["REQUEST_METHOD"] == "HEAD":
        return []
    return iter([b"x" * 1000])
`
	p, err := startTestPreloader(t, r, app, 0)
	if err != nil {
		t.Fatal(err)
	}
	head := func(query string) string {
		env := requestEnv("/x", query)
		env[0] = "REQUEST_METHOD=HEAD"
		res, out, _ := forkRunEnv(t, r, p, env, "")
		if res.Cause != CauseOK {
			t.Fatalf("HEAD: cause %s", res.Cause)
		}
		return out
	}
	if out := head(""); strings.Contains(out, "Content-Length") || !strings.HasPrefix(out, "Status: 200 OK\r\n") {
		t.Errorf("HEAD without a length of the app's: %q, want no Content-Length", out)
	}
	if out := head("length"); !strings.Contains(out, "Content-Length: 1000\r\n") {
		t.Errorf("HEAD with the app's length: %q, want it kept", out)
	}
}

// TestForkCloseAbandonsStart: Close abandons a recycle's replacement
// whose import is under way at once, the import killed, whatever Close's
// timeout. Before, Close waited for the import until its StartTimeout
// (a minute by default), or until its own timeout, to kill it; and the
// start of a confined instance, whose init prepares its view first, was
// out of Close's reach for up to 30 s more.
func TestForkCloseAbandonsStart(t *testing.T) {
	r := newTestRunner(t, &fakeCells{})
	app := `
import os, time
if os.path.exists("imported"):
    open("hanging", "w").write(str(os.getpid()))
    while True:
        time.sleep(1)
open("imported", "w").close()
def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"hello"]
`
	cfg := testPreloaderConfig(t, app)
	cfg.RecycleAfter, cfg.StartTimeout = 1, time.Hour
	p, err := r.StartPreloader(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	if res, _ := forkRun(t, r, p, "", ""); res.Cause != CauseOK {
		t.Fatalf("request: cause %s", res.Cause)
	}
	pid := importingPid(t, filepath.Join(cfg.AppDir, "hanging"))
	closed := make(chan struct{})
	go func() { p.Close(time.Hour); close(closed) }()
	select {
	case <-closed:
	case <-time.After(20 * time.Second):
		syscall.Kill(pid, syscall.SIGKILL)
		<-closed
		t.Fatal("Close still waiting 20 s later for a replacement's import (an hour's bounds)")
	}
	if err := unix.Kill(pid, 0); !errors.Is(err, unix.ESRCH) {
		t.Errorf("the abandoned import (pid %d) lives on: kill 0 = %v", pid, err)
	}
}
