package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// Issue 11, end to end: fork routes (a warm Python preloader cloning each
// request into its own cell) behind the built `cellgate serve`.

// forkPolicy has a dependency-free WSGI hello (balloons with ?mb=, sleeps
// with ?ms=), the Flask hello, the isolation probe, and the confinement
// probe (confprobe.py, answering as the CGI probe of confine_test.go) under
// the default confinement and with network: host, in one tenant.
const forkPolicy = `version: 1
defaults: {memory: 64Mi, cpu: 1, pids: 64, timeout: 60s}
tenants:
  - {name: py, memory: 1536Mi, max_cells: 16, queue: 100, queue_timeout: 120s}
routes:
  - {name: wsgi, match: {path: /wsgi}, tenant: py, driver: fork, runtime: python-wsgi, app: "hello:app", app_dir: "%[1]s", memory: 48Mi}
  - {name: flask, match: {path: /flask}, tenant: py, driver: fork, runtime: python-wsgi, app: "flask_hello:app", app_dir: "%[1]s", memory: 48Mi}
  - {name: short, match: {path: /short}, tenant: py, driver: fork, runtime: python-wsgi, app: "hello:app", app_dir: "%[1]s", timeout: 2s}
  - {name: probe, match: {path: /probe}, tenant: py, driver: fork, runtime: python-wsgi, app: "%[3]s:app", app_dir: "%[2]s"}
  - {name: hello-cgi, match: {path: /hello}, tenant: py, program: "{{.CGI}}/hello"}
  - {name: confprobe, match: {path: /confprobe}, tenant: py, driver: fork, runtime: python-wsgi, app: "confprobe:app", app_dir: "%[2]s", memory: 96Mi, tmpfs_size: 24Mi}
  - {name: handoff, match: {path: /handoff}, tenant: py, driver: fork, runtime: python-wsgi, app: "handoff:app", app_dir: "%[2]s"}
  - {name: confhost, match: {path: /confhost}, tenant: py, driver: fork, runtime: python-wsgi, app: "confprobe:app", app_dir: "%[2]s", network: host}
  - {name: echo, match: {path: /echo}, tenant: py, driver: fork, runtime: python-wsgi, app: "echo:app", app_dir: "%[2]s"}
  - {name: stdio, match: {path: /stdio}, tenant: py, driver: fork, runtime: python-wsgi, app: "stdio:app", app_dir: "%[2]s"}
  - {name: confmask, match: {path: /confmask}, tenant: py, driver: fork, runtime: python-wsgi, app: "confprobe:app", app_dir: "%[2]s", mounts: [{source: "{{.Dir}}", target: /conf}]}
  - {name: spawner, match: {path: /spawner}, tenant: py, driver: fork, runtime: python-wsgi, app: "spawner:app", app_dir: "%[2]s", recycle_after: 1}
`

// forkDirs returns the example WSGI apps' and the test apps' directories.
func forkDirs(t *testing.T) (examples, testdata string) {
	t.Helper()
	if _, err := os.Stat("/usr/bin/python3"); err != nil {
		skipOrFail(t, "fork routes need /usr/bin/python3: %v", err)
	}
	if err := exec.Command("/usr/bin/python3", "-I", "-c", "import flask").Run(); err != nil {
		skipOrFail(t, "the Flask example needs Debian's python3-flask (make python-deps): %v", err)
	}
	// A preloader runs in a user namespace of its own; the kernel refuses
	// one to a chrooted process (a guest that chroots instead of
	// switch_root), and where user namespaces are disabled.
	userns := exec.Command("/bin/true")
	userns.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWUSER}
	if err := userns.Run(); err != nil {
		skipOrFail(t, "fork routes need user namespaces, refused here: %v (a chrooted test environment must switch_root instead)", err)
	}
	examples, err := filepath.Abs(filepath.Join("..", "examples", "wsgi"))
	if err != nil {
		t.Fatal(err)
	}
	testdata, err = filepath.Abs(filepath.Join("testdata", "wsgi"))
	if err != nil {
		t.Fatal(err)
	}
	return outOfCellTmpfs(t, examples), outOfCellTmpfs(t, testdata)
}

// outOfCellTmpfs returns dir, or a copy of it when dir lies in /tmp,
// /var/tmp or /dev/shm, where a confined fork route refuses an app (each
// request's fresh tmpfs would hide it): a checkout under /tmp. The copy
// goes below TMPDIR (the microVM's is under /run), readable by the
// preloaders' uids, and is removed when the test ends.
func outOfCellTmpfs(t *testing.T, dir string) string {
	t.Helper()
	underTmpfs := func(p string) bool {
		for _, d := range []string{"/tmp", "/var/tmp", "/dev/shm"} {
			if p == d || strings.HasPrefix(p, d+"/") {
				return true
			}
		}
		return false
	}
	if !underTmpfs(dir) {
		return dir
	}
	if underTmpfs(os.TempDir()) {
		skipOrFail(t, "%s lies in a directory each fork request gets a fresh tmpfs for, and so does TMPDIR (%s): set TMPDIR elsewhere or check out elsewhere", dir, os.TempDir())
	}
	parent, err := os.MkdirTemp("", "cellgate-forkapp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(parent) })
	copyDir := filepath.Join(parent, filepath.Base(dir))
	if err := os.CopyFS(copyDir, os.DirFS(dir)); err != nil {
		t.Fatalf("copy %s out of the cells' tmpfs: %v", dir, err)
	}
	for _, d := range []string{parent, copyDir} {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return copyDir
}

// preloaderRE matches serve's log line of a preloader that became ready.
var preloaderRE = regexp.MustCompile(`msg="preloader ready" route=(\S+) pid=(\d+) app=\S+ group=(\S+)`)

// preloaderPid returns the pid and the preload group of the route's
// newest preloader, from serve's log, checking that the process is in its
// instance's group, below the preload group, now.
func preloaderPid(t *testing.T, g *gate, route string) (int, string) {
	t.Helper()
	pid, group := preloaderInstance(t, g, route)
	return pid, filepath.Dir(group)
}

// preloaderInstance returns the pid and the instance's group of the
// route's newest preloader, from serve's log, checking that the process
// is in that group now.
func preloaderInstance(t *testing.T, g *gate, route string) (int, string) {
	t.Helper()
	pid, group := 0, ""
	for _, m := range preloaderRE.FindAllStringSubmatch(g.log(), -1) {
		if m[1] == route {
			pid, _ = strconv.Atoi(m[2])
			group = m[3]
		}
	}
	if pid == 0 {
		t.Fatalf("no preloader of route %s in serve's log", route)
	}
	if b, err := os.ReadFile(filepath.Join(group, "cgroup.procs")); err != nil || !slices.Contains(strings.Fields(string(b)), strconv.Itoa(pid)) {
		t.Fatalf("preloader %d of route %s is not in %s (%q, %v)", pid, route, group, b, err)
	}
	return pid, group
}

// pidsIn lists the processes of the cgroup at dir.
func pidsIn(t *testing.T, dir string) []int {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	if err != nil {
		t.Fatal(err)
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, _ := strconv.Atoi(f)
		pids = append(pids, pid)
	}
	return pids
}

// zombies counts the children of pid that have exited but are not reaped.
func zombies(t *testing.T, pid int) int {
	t.Helper()
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, task := range tasks {
		b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/children", pid, task.Name()))
		for _, c := range strings.Fields(string(b)) {
			if st, err := os.ReadFile("/proc/" + c + "/stat"); err == nil {
				if f := strings.Fields(string(st[strings.LastIndexByte(string(st), ')')+1:])); len(f) > 0 && f[0] == "Z" {
					n++
				}
			}
		}
	}
	return n
}

// dirExists reports whether path exists.
func dirExists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func readInt(t *testing.T, path string) int64 {
	t.Helper()
	n, err := strconv.ParseInt(readTrim(t, path), 10, 64)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return n
}

func TestFork(t *testing.T) {
	examples, testdata := forkDirs(t)
	var preloaders []int
	t.Cleanup(func() { // runs after the gate stopped (cleanups are LIFO)
		for _, pid := range preloaders {
			if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("preloader %d still there after serve exited (kill 0: %v)", pid, err)
			}
		}
	})
	g := startGate(t, gateOptions{policy: fmt.Sprintf(forkPolicy, examples, testdata, "probe"), openDir: true})
	wsgiPid, wsgiGroup := preloaderPid(t, g, "wsgi")
	flaskPid, flaskGroup := preloaderPid(t, g, "flask")
	probePid, _ := preloaderPid(t, g, "probe")
	preloaders = append(preloaders, wsgiPid, flaskPid, probePid)

	t.Run("hello", func(t *testing.T) {
		status, _, body := g.get("/wsgi")
		if status != 200 || !strings.HasPrefix(body, "hello from pid 1 uid ") {
			t.Errorf("GET /wsgi = %d %q, want 200 from pid 1 of its own namespace", status, body)
		}
		status, _, body = g.get("/flask/")
		if status != 200 || body != "Hello from Flask!\n" {
			t.Errorf("GET /flask/ = %d %q", status, body)
		}
	})

	// A body and an answer larger than a pipe cross a forked child's
	// standard streams whole, read in one call or in small ones; a body
	// the proxy keeps in memory and one it spools to a file.
	t.Run("streams larger than a pipe", func(t *testing.T) {
		for _, size := range []int{100 << 10, 400 << 10} {
			body := make([]byte, size)
			for i := range body {
				body[i] = byte(i*7 + i>>8)
			}
			for _, q := range []string{"times=1", "times=10&chunk=1000"} {
				req, err := http.NewRequest(http.MethodPost, g.url+"/echo?"+q, bytes.NewReader(body))
				if err != nil {
					t.Fatal(err)
				}
				times := 1
				if strings.HasPrefix(q, "times=10") {
					times = 10
				}
				code, _, got := g.do(req)
				if code != http.StatusOK || got != strings.Repeat(string(body), times) {
					t.Errorf("POST /echo?%s with %d bytes: %d, %d bytes back, want 200 and %d bytes, the body %d times\nlog:\n%s",
						q, size, code, len(got), size*times, times, g.log())
				}
			}
		}
	})

	// An app's own output (logging set up at import on sys.stdout, print
	// in the view) goes to serve's log, neither into the response's
	// headers nor its body; a file it opened at import stays its own; and
	// bytes of the request that are not UTF-8 reach it as they are.
	t.Run("app output and raw bytes", func(t *testing.T) {
		status, header, body := g.get("/stdio/caf%E9", "X-Name", "Jos\xe9")
		if status != 200 || !strings.HasSuffix(body, `caf\xe9', 'Jos\xe9')`) || header.Get("Info") != "" {
			t.Errorf("GET /stdio/caf%%E9 = %d %q, header %v; want 200, the bytes as latin-1 and no header of the log\nlog:\n%s", status, body, header, g.log())
		}
		g.waitLog("stdio probe printed in the view", 1, 10*time.Second)
		g.waitLog("INFO:stdio probe handling ", 1, 10*time.Second)
		if strings.Contains(g.log(), "OSError") {
			t.Errorf("the app failed on its own file:\n%s", g.log())
		}
	})

	// The cell is charged for what the request touched, the shared
	// interpreter and Flask stay charged to the preloader's group.
	t.Run("memory peak below preloader", func(t *testing.T) {
		g.get("/flask/")
		recs := g.waitRecords("flask", 2, time.Minute)
		peak := recs[len(recs)-1].Cell.MemoryPeak
		pre := readInt(t, filepath.Join(flaskGroup, "memory.current"))
		t.Logf("flask hello: cell memory.peak %d bytes, preloader group memory.current %d bytes", peak, pre)
		if peak == 0 || int64(peak)*4 > pre {
			t.Errorf("cell memory.peak %d, want non-zero and far below the preloader's %d", peak, pre)
		}
	})

	t.Run("oom kills only the balloon", func(t *testing.T) {
		rssBefore := readInt(t, filepath.Join(wsgiGroup, "memory.current"))
		var wg sync.WaitGroup
		replies := make([]reply, 4)
		for i := range replies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				path := "/wsgi?ms=1500"
				if i == 0 {
					path = "/wsgi?mb=200"
				}
				replies[i] = g.getReply(path)
			}()
		}
		wg.Wait()
		if r := replies[0]; r.err != nil || r.status != 502 {
			t.Errorf("balloon: %d (%v), want 502", r.status, r.err)
		}
		for i, r := range replies[1:] {
			if r.err != nil || r.status != 200 {
				t.Errorf("concurrent request %d: %d (%v), want 200", i+1, r.status, r.err)
			}
		}
		var oom int
		for _, r := range g.recordsFor("wsgi") {
			if r.Outcome == "oom" && r.Cell != nil && r.Cell.OOMKilled {
				oom++
			}
		}
		if oom != 1 {
			t.Errorf("%d oom records with oom_killed, want 1", oom)
		}
		if pid, _ := preloaderPid(t, g, "wsgi"); pid != wsgiPid {
			t.Errorf("preloader %d replaced by %d after the OOM kill", wsgiPid, pid)
		}
		rssAfter := readInt(t, filepath.Join(wsgiGroup, "memory.current"))
		t.Logf("preloader group memory.current %d before, %d after", rssBefore, rssAfter)
		if rssAfter > 2*rssBefore {
			t.Errorf("preloader group grew from %d to %d bytes: the balloon was charged to it", rssBefore, rssAfter)
		}
	})

	t.Run("deadline", func(t *testing.T) {
		status, _, _ := g.get("/short?ms=30000")
		if status != 504 {
			t.Errorf("GET /short?ms=30000 = %d, want 504", status)
		}
		if status, _, _ := g.get("/short"); status != 200 {
			t.Errorf("GET /short after the deadline = %d, want 200", status)
		}
	})

	t.Run("daemon gone with the response", func(t *testing.T) {
		_, probeGroup := preloaderPid(t, g, "probe")
		if status, _, body := g.get("/probe?daemon=1"); status != 200 || !strings.Contains(body, `"daemon": true`) {
			t.Fatalf("GET /probe?daemon=1 = %d %q, want 200 from the request that forked its daemon", status, body)
		}
		cells, _ := filepath.Glob(filepath.Join(filepath.Dir(probeGroup), "c*", "cgroup.procs"))
		for _, c := range cells {
			if b, err := os.ReadFile(c); err == nil && len(strings.TrimSpace(string(b))) > 0 {
				t.Errorf("%s holds %q after the response", c, b)
			}
		}
	})

	t.Run("isolation", func(t *testing.T) {
		victim := make(chan reply, 1)
		go func() { victim <- g.getReply("/probe?hold=20000", "X-Secret", "s3cr3t") }()
		// The victim is the one process in a cell of the probe's route
		// group. (Its /proc/PID/environ is the preloader's, from exec: the
		// request's variables are in its memory, which the probe tries.)
		_, probeGroup := preloaderPid(t, g, "probe")
		var victimPid int
		deadline := time.Now().Add(time.Minute)
		for victimPid == 0 && time.Now().Before(deadline) {
			cells, _ := filepath.Glob(filepath.Join(filepath.Dir(probeGroup), "c*", "cgroup.procs"))
			for _, c := range cells {
				b, _ := os.ReadFile(c)
				if f := strings.Fields(string(b)); len(f) > 0 {
					victimPid, _ = strconv.Atoi(f[0])
				}
			}
			time.Sleep(50 * time.Millisecond)
		}
		if victimPid == 0 {
			t.Fatal("the victim request's process did not show up")
		}
		status, _, body := g.get(fmt.Sprintf("/probe?pre=%d&victim=%d&cg=%s", probePid, victimPid, filepath.Dir(probeGroup)))
		if status != 200 {
			t.Fatalf("probe: %d %s", status, body)
		}
		var got struct {
			SelfPid int               `json:"self_pid"`
			KillAll string            `json:"kill_all"`
			Pre     map[string]string `json:"pre"`
			Victim  map[string]string `json:"victim"`
			Move    string            `json:"move"`
		}
		if err := json.Unmarshal([]byte(body), &got); err != nil {
			t.Fatalf("probe answer %q: %v", body, err)
		}
		t.Logf("probe: %s", body)
		if got.SelfPid != 1 || got.KillAll == "allowed" || got.Move == "allowed" || len(got.Pre) != 5 || len(got.Victim) != 5 {
			t.Errorf("probe: self pid %d, kill(-1) %s, move %s, %d/%d probes", got.SelfPid, got.KillAll, got.Move, len(got.Pre), len(got.Victim))
		}
		for target, m := range map[string]map[string]string{"preloader": got.Pre, "victim": got.Victim} {
			for what, res := range m {
				if res == "allowed" {
					t.Errorf("a request could %s the %s", what, target)
				}
			}
		}
		if r := <-victim; r.err != nil || r.status != 200 || !strings.Contains(r.body, "s3cr3t") {
			t.Errorf("victim answered %d %q (%v), want 200 and its secret (it was not disturbed)", r.status, r.body, r.err)
		}
	})

	forkConfined(t, g, testdata)

	t.Run("preloader killed", func(t *testing.T) {
		// Killed while requests are in flight: their children are
		// cellgate's (CLONE_PARENT) and finish; a request caught in the
		// hand-over is run again by the restarted preloader, or gets 503
		// when its child provably never ran, or 502 (no Retry-After)
		// when the child may already have taken its uid and run it: a
		// 503 would tell the client that it may send it again. None
		// hangs.
		var wg sync.WaitGroup
		replies := make([]reply, 6)
		for i := range replies {
			wg.Add(1)
			go func() {
				defer wg.Done()
				time.Sleep(time.Duration(i) * 100 * time.Millisecond)
				replies[i] = g.getReply("/wsgi?ms=1000")
			}()
		}
		time.Sleep(250 * time.Millisecond)
		if err := syscall.Kill(wsgiPid, syscall.SIGKILL); err != nil {
			wg.Wait()
			t.Fatal(err)
		}
		wg.Wait()
		statuses := make([]int, len(replies))
		for i, r := range replies {
			statuses[i] = r.status
			if r.err != nil || r.status != 200 && r.status != 503 && r.status != 502 {
				t.Errorf("request %d in flight when the preloader was killed: %d (%v), want 200 (or 503, or 502)", i, r.status, r.err)
			}
		}
		t.Logf("statuses of the requests in flight: %v", statuses)
		// A child the dying preloader cloned but did not hand over is
		// cellgate's (CLONE_PARENT): it must be reaped, not left a zombie.
		deadline := time.Now().Add(30 * time.Second)
		for zombies(t, g.cmd.Process.Pid) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if n := zombies(t, g.cmd.Process.Pid); n > 0 {
			t.Errorf("cellgate serve has %d zombie children after the requests ended", n)
		}
		for i := 0; i < 5; i++ {
			if status, _, body := g.get("/wsgi"); status != 200 {
				t.Errorf("request %d after the preloader's SIGKILL: %d %q", i, status, body)
			}
		}
		pid, _ := preloaderPid(t, g, "wsgi")
		preloaders = append(preloaders, pid)
		if pid == wsgiPid {
			t.Errorf("preloader %d still serves after SIGKILL", pid)
		}
		if n := metric(g.metrics(), "cellgate_preloader_restarts_total", map[string]string{"route": "wsgi"}); n < 1 {
			t.Errorf("cellgate_preloader_restarts_total{route=wsgi} = %v, want >= 1", n)
		}
	})

	t.Run("hand-off retry", func(t *testing.T) {
		// handoff.py's preloaders die right after they cloned their
		// second child, before handing it over: the second request runs
		// again, with its body, as the first child of the restarted
		// preloader, instead of a 503, and the third request, that
		// preloader's second, again; the children of the dead ones are
		// ended with their cells and reaped.
		first, _ := preloaderPid(t, g, "handoff")
		preloaders = append(preloaders, first)
		for i, body := range []string{"first", "caught in the hand-off", "caught again"} {
			req, err := http.NewRequest("POST", g.url+"/handoff", strings.NewReader(body))
			if err != nil {
				t.Fatal(err)
			}
			if status, _, got := g.do(req); status != 200 || got != body {
				t.Errorf("request %d: %d %q, want 200 %q", i, status, got, body)
			}
		}
		second, _ := preloaderPid(t, g, "handoff")
		preloaders = append(preloaders, second)
		if second == first {
			t.Errorf("the preloader %d did not die in the hand-off", first)
		}
		if !strings.Contains(g.log(), "caught in the hand-off to a preloader that died: retried") {
			t.Errorf("serve's log does not show the retry")
		}
		if n := metric(g.metrics(), "cellgate_preloader_retries_total", map[string]string{"route": "handoff"}); n != 2 {
			t.Errorf("cellgate_preloader_retries_total{route=handoff} = %v, want 2", n)
		}
		deadline := time.Now().Add(30 * time.Second)
		for zombies(t, g.cmd.Process.Pid) > 0 && time.Now().Before(deadline) {
			time.Sleep(100 * time.Millisecond)
		}
		if n := zombies(t, g.cmd.Process.Pid); n > 0 {
			t.Errorf("cellgate serve has %d zombie children after the retry", n)
		}
	})

	// What an app starts at import ends with the preloader's instance
	// that imported it (here, recycled after one request), whether it
	// stayed in the instance's process group or left it (setsid): each
	// instance has a cgroup of its own, killed at its end. Before, only
	// its process group was killed, and one that left it stayed in the
	// preload group, charged to preload_memory, after every recycle.
	t.Run("leftovers end with their preloader", func(t *testing.T) {
		pid, group := preloaderInstance(t, g, "spawner")
		preloaders = append(preloaders, pid)
		var started []int
		for _, p := range pidsIn(t, group) {
			if p != pid {
				started = append(started, p)
			}
		}
		if len(started) < 2 {
			t.Fatalf("the app's instance group %s holds %v beside the preloader %d, want its two subprocesses", group, started, pid)
		}
		if status, _, body := g.get("/spawner"); status != 200 {
			t.Fatalf("GET /spawner = %d %q", status, body)
		}
		g.waitLog(`msg="preloader ready" route=spawner`, 2, 2*time.Minute)
		next, nextGroup := preloaderInstance(t, g, "spawner")
		preloaders = append(preloaders, next)
		deadline := time.Now().Add(time.Minute)
		for _, p := range append([]int{pid}, started...) {
			for !errors.Is(syscall.Kill(p, 0), syscall.ESRCH) && time.Now().Before(deadline) {
				time.Sleep(20 * time.Millisecond)
			}
			if err := syscall.Kill(p, 0); !errors.Is(err, syscall.ESRCH) {
				t.Errorf("process %d of the recycled preloader %d's instance outlived it (kill 0: %v); log:\n%s", p, pid, err, g.log())
			}
		}
		for dirExists(group) && time.Now().Before(deadline) {
			time.Sleep(20 * time.Millisecond)
		}
		if dirExists(group) {
			t.Errorf("the recycled instance's group %s is still there", group)
		}
		if n := len(pidsIn(t, nextGroup)); n < 3 {
			t.Errorf("the serving instance's group %s holds %d processes, want the preloader %d and its app's two", nextGroup, n, next)
		}
	})

	t.Run("reload replaces the preloaders", func(t *testing.T) {
		oldPid, oldGroup := preloaderPid(t, g, "wsgi")
		// The route's restarts counter, scraped without a pause from
		// before the reload until the replaced preloader is gone, never
		// goes down: the replaced preloader's counts are folded into the
		// route's as it stops, not seconds after it left the live
		// policies (a counter reset, to Prometheus).
		restarts := metric(g.metrics(), "cellgate_preloader_restarts_total", map[string]string{"route": "wsgi"})
		var scrapes atomic.Int64
		lowest := restarts
		stopScrapes, scraped := make(chan struct{}), make(chan struct{})
		go func() {
			defer close(scraped)
			for {
				select {
				case <-stopScrapes:
					return
				default:
				}
				resp, err := g.client.Get(g.admin + "/metrics")
				if err != nil {
					continue
				}
				b, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil || resp.StatusCode != 200 {
					continue
				}
				scrapes.Add(1)
				lowest = min(lowest, metric(string(b), "cellgate_preloader_restarts_total", map[string]string{"route": "wsgi"}))
			}
		}()
		g.signal(syscall.SIGHUP)
		g.waitLog("policy reloaded", 1, 2*time.Minute)
		atReload := scrapes.Load()
		if status, _, body := g.get("/wsgi"); status != 200 {
			t.Errorf("GET /wsgi after the reload = %d %q", status, body)
		}
		newPid, newGroup := preloaderPid(t, g, "wsgi")
		preloaders = append(preloaders, newPid)
		if newPid == oldPid || newGroup == oldGroup {
			t.Errorf("after the reload the preloader is still %d in %s", newPid, newGroup)
		}
		// The replaced snapshot held no request: its preloader and route
		// group go at once.
		deadline := time.Now().Add(time.Minute)
		for time.Now().Before(deadline) && (!errors.Is(syscall.Kill(oldPid, 0), syscall.ESRCH) || dirExists(filepath.Dir(oldGroup))) {
			time.Sleep(50 * time.Millisecond)
		}
		if err := syscall.Kill(oldPid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("the replaced preloader %d is still there: %v", oldPid, err)
		}
		if dirExists(filepath.Dir(oldGroup)) {
			t.Errorf("the replaced route group %s is still there", filepath.Dir(oldGroup))
		}
		// At least one scrape once the reload was logged: the new policy's
		// counter is checked too.
		for deadline := time.Now().Add(time.Minute); scrapes.Load() == atReload && time.Now().Before(deadline); {
			time.Sleep(20 * time.Millisecond)
		}
		close(stopScrapes)
		<-scraped
		t.Logf("%d scrapes across the reload, %d of them before it was logged; restarts_total{route=wsgi} %v before, lowest %v", scrapes.Load(), atReload, restarts, lowest)
		if scrapes.Load() == atReload {
			t.Errorf("no scrape of /metrics succeeded after the reload was logged (%d before): the counter was not checked across it", atReload)
		}
		if restarts < 1 || lowest < restarts {
			t.Errorf("cellgate_preloader_restarts_total{route=wsgi} went from %v to %v across the reload; want >= 1, never lower", restarts, lowest)
		}
	})

	t.Run("reload with a broken app keeps the old one", func(t *testing.T) {
		writePolicy(t, g.policyPath, fmt.Sprintf(forkPolicy, examples, testdata, "broken"))
		g.signal(syscall.SIGHUP)
		g.waitLog("reload: the new policy cannot run here", 1, 2*time.Minute)
		if !strings.Contains(g.log(), "no_such_module_cellgate_test") {
			t.Errorf("the reload's log does not show the import error")
		}
		if status, _, body := g.get("/probe?hold=1"); status != 200 {
			t.Errorf("GET /probe after a failed reload = %d %q", status, body)
		}
	})
}

// An app that fails to import makes serve refuse to start, showing the
// traceback, and leave nothing behind.
func TestForkServeRefusesBrokenApp(t *testing.T) {
	_, testdata := forkDirs(t)
	base := filepath.Join(requireKernel(t), "forkbroken")
	trackBase(base)
	dir := t.TempDir()
	policy := filepath.Join(dir, "policy.yaml")
	writePolicy(t, policy, fmt.Sprintf("version: 1\nroutes:\n  - {name: b, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"broken:app\", app_dir: %q}\n", testdata))
	cmd := exec.Command(cellgateBin(t), "serve", "--policy", policy, "--listen", "127.0.0.1:0", "--admin", "127.0.0.1:0", "--cgroup-base", base)
	out, err := cmd.CombinedOutput()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 1 {
		t.Fatalf("serve with a broken app: %v, want exit status 1:\n%s", err, out)
	}
	if n := strings.Count(string(out), "ModuleNotFoundError: No module named 'no_such_module_cellgate_test'"); n != 1 {
		t.Errorf("the traceback is shown %d times, want once:\n%s", n, out)
	}
	if _, err := os.Stat(base); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("%s left behind: %v", base, err)
	}
}

// forkSyscalls are the denied calls the confined probe makes, with numbers
// of this architecture and arguments that would do no harm if allowed;
// want is the errno the child's seccomp filter gives.
var forkSyscalls = []struct {
	name    string
	nr      uintptr
	a, b, c uintptr
	want    string
}{
	{"unshare(CLONE_NEWUSER)", unix.SYS_UNSHARE, unix.CLONE_NEWUSER, 0, 0, "EPERM"},
	{"bpf", unix.SYS_BPF, 0, 0, 0, "EPERM"},
	{"perf_event_open", unix.SYS_PERF_EVENT_OPEN, 0, 0, ^uintptr(0), "EPERM"},
	{"userfaultfd", unix.SYS_USERFAULTFD, 0, 0, 0, "EPERM"},
	{"keyctl", unix.SYS_KEYCTL, 0, 0, 0, "EPERM"},
	{"mount", unix.SYS_MOUNT, 0, 0, 0, "EPERM"},
	{"ptrace(PTRACE_PEEKDATA)", unix.SYS_PTRACE, unix.PTRACE_PEEKDATA, 1 << 30, 0, "EPERM"},
	{"io_uring_setup", unix.SYS_IO_URING_SETUP, 1, 0, 0, "EPERM"},
	{"io_setup", unix.SYS_IO_SETUP, 1, 0, 0, "EPERM"},
	{"init_module", unix.SYS_INIT_MODULE, 0, 0, 0, "EPERM"},
	// A new core limit (a pointer, which would fail EFAULT if allowed):
	// confine.CoreLimit stays.
	{"prlimit64(RLIMIT_CORE)", unix.SYS_PRLIMIT64, 0, unix.RLIMIT_CORE, 8, "EPERM"},
	// A protocol and a family whose first socket has a module loaded.
	{"socket(AF_INET, SOCK_DCCP)", unix.SYS_SOCKET, unix.AF_INET, unix.SOCK_DCCP, unix.IPPROTO_DCCP, "EPROTONOSUPPORT"},
	{"socket(AF_ALG)", unix.SYS_SOCKET, unix.AF_ALG, unix.SOCK_SEQPACKET, 0, "EAFNOSUPPORT"},
	// Huge pages of the host's pool, which the kernel would refuse
	// otherwise with other errors (EPERM: the child is not in
	// vm.hugetlb_shm_group; EFAULT: no name).
	{"shmget(SHM_HUGETLB)", unix.SYS_SHMGET, unix.IPC_PRIVATE, 2 << 20, unix.IPC_CREAT | 0o4000 | 0o600, "ENOMEM"},
	{"memfd_create(MFD_HUGETLB)", unix.SYS_MEMFD_CREATE, 0, unix.MFD_HUGETLB, 0, "ENOMEM"},
	// The preloader's filter allows clone3 (CLONE_INTO_CGROUP); the
	// child's own filter, loaded on top, sends it to ENOSYS again.
	{"clone3", unix.SYS_CLONE3, 0, 0, 0, "ENOSYS"},
}

// forkConfined: a fork route is confined by default as a cgi route is.
// The probe is a WSGI app (confprobe.py) answering as the CGI probe does;
// every assertion has a control that must succeed.
func forkConfined(t *testing.T, g *gate, testdata string) {
	t.Run("confined filesystem", func(t *testing.T) {
		other := t.TempDir()
		os.Chmod(other, 0o755)
		public := filepath.Join(other, "public.txt")
		if err := os.WriteFile(public, []byte("secret"), 0o644); err != nil {
			t.Fatal(err)
		}
		os.Chmod(public, 0o644)
		own := filepath.Join(testdata, "confprobe.py")
		r := g.probe(t, "confprobe", url.Values{"read": {public, g.policyPath, "/root/.profile", "/etc/passwd", own}})
		for _, p := range []string{public, g.policyPath, "/root/.profile"} {
			if r.Read[p] == "ok" {
				t.Errorf("a fork route's request read %s", p)
			}
		}
		for _, p := range []string{"/etc/passwd", own} {
			if r.Read[p] != "ok" {
				t.Errorf("a fork route's request cannot read %s (%s): the system directories and its app must be visible", p, r.Read[p])
			}
		}
		if r.Hostname != "cell" {
			t.Errorf("hostname %q, want the preloader's own (cell)", r.Hostname)
		}
	})

	// The policy file, shown in the view by a mount and covered there,
	// replaced by rename (an editor's save, 0644): the kernel detaches the
	// cover in the preloader's view, which its children copy, so the
	// preloader is replaced before its next child, whose request waits.
	t.Run("confined daemon file replaced", func(t *testing.T) {
		if err := os.Chmod(g.policyPath, 0o644); err != nil {
			t.Fatal(err)
		}
		before, _ := preloaderPid(t, g, "confmask")
		if r := g.probe(t, "confmask", url.Values{"read": {"/conf/policy.yaml"}}); r.Read["/conf/policy.yaml"] == "ok" {
			t.Fatalf("a fork route's request read the policy file in its mount")
		}
		replaceByRename(t, g.policyPath)
		for i := range 2 {
			if r := g.probe(t, "confmask", url.Values{"read": {"/conf/policy.yaml"}}); r.Read["/conf/policy.yaml"] == "ok" {
				t.Errorf("request %d after the policy file was replaced read it", i+1)
			}
		}
		if after, _ := preloaderPid(t, g, "confmask"); after == before {
			t.Errorf("preloader %d still serves after the policy file it covered was replaced", before)
		}
	})

	t.Run("confined tmpfs gone", func(t *testing.T) {
		current := func() int64 { return readInt(t, filepath.Join(g.tenantDir("py"), "memory.current")) }
		g.probe(t, "confprobe", url.Values{})
		base := current()
		leaks := []string{"/dev/shm/leak", "/tmp/leak", "/var/tmp/leak"}
		for i := 0; i < 20; i++ {
			r := g.probe(t, "confprobe", url.Values{"fill": {"/dev/shm/leak:16", "/tmp/leak:16", "/var/tmp/leak:4"}})
			for _, p := range leaks {
				if res := r.Fill[p]; res != "ok" {
					t.Fatalf("request %d: writing to %s: %q (all: %v)", i, p, res, r.Fill)
				}
			}
		}
		now := current()
		t.Logf("tenant memory.current %d before, %d after 20 requests that each left 36 MiB in their tmpfs", base, now)
		if now > base+48<<20 {
			t.Errorf("tenant memory.current %d after 20 requests, %d before: files of ended requests stay charged", now, base)
		}
		r := g.probe(t, "confprobe", url.Values{"read": leaks})
		for _, p := range leaks {
			if res, tried := r.Read[p]; !tried || res == "ok" {
				t.Errorf("a later request reading %s: %q (tried: %v); want it refused: the file must not outlive its request", p, res, tried)
			}
		}
		// Over the route's tmpfs_size: the request's own tmpfs is full.
		if r := g.probe(t, "confprobe", url.Values{"fill": {"/tmp/big:32"}}); r.Fill["/tmp/big"] != "ENOSPC" {
			t.Errorf("32 MiB into a 24 MiB /tmp: %s, want ENOSPC", r.Fill["/tmp/big"])
		}
	})

	t.Run("confined proc and ipc", func(t *testing.T) {
		id := hostShmSegment(t)
		r := g.probe(t, "confprobe", url.Values{"procs": {"1"}, "sysvshm": {"1"}})
		if len(r.Procs) != 1 || !strings.HasPrefix(r.Procs[0], "1 ") {
			t.Errorf("the request's /proc lists %d processes (%.200q), want only itself as 1", len(r.Procs), r.Procs)
		}
		if strings.Contains(r.SysVShm, " "+strconv.Itoa(id)+" ") || r.SysVShm == "" {
			t.Errorf("the request's /proc/sysvipc/shm: %q, want its own empty table", r.SysVShm)
		}
	})

	t.Run("confined network", func(t *testing.T) {
		checkNetworkSplit(t, g, "confprobe", "confhost", "fork request", loopbackListener(t))
	})

	t.Run("confined seccomp", func(t *testing.T) {
		var q []string
		for _, s := range forkSyscalls {
			q = append(q, fmt.Sprintf("%s:%d:%d:%d:%d", s.name, s.nr, s.a, s.b, int64(s.c)))
		}
		r := g.probe(t, "confprobe", url.Values{"sys": q})
		for _, s := range forkSyscalls {
			if got := r.Syscalls[s.name]; got != s.want {
				t.Errorf("%s in a fork request: %s, want %s", s.name, got, s.want)
			}
		}
		// What the preloader itself could do while importing the app.
		pre := g.probe(t, "confprobe", url.Values{"preload": {"1"}}).Syscalls
		if pre["unshare(CLONE_NEWUSER)"] != "EPERM" || pre["max_user_namespaces"] != "0" {
			t.Errorf("in the preloader: unshare(CLONE_NEWUSER) %s (want EPERM), max_user_namespaces %s (want 0)",
				pre["unshare(CLONE_NEWUSER)"], pre["max_user_namespaces"])
		}
	})
}

// hangPolicy has a cgi route; with hangRoute (%s: the apps' directory)
// also a fork route whose app's import never ends (testdata/wsgi/hang.py).
const (
	hangPolicy = `version: 1
tenants:
  - {name: py, memory: 512Mi}
routes:
  - {name: hello-cgi, match: {path: /hello}, tenant: py, program: "{{.CGI}}/hello"}
`
	hangRoute = `  - {name: hang, match: {path: /hang}, tenant: py, driver: fork, runtime: python-wsgi, app: "hang:app", app_dir: "%s"}
`
)

// TestForkStopAbandonsImport: a SIGTERM while a fork route's app imports,
// in a reload or at serve's start, abandons the import at once: serve
// drains (or stops before serving) and exits 0, its groups removed.
// Before, serve waited for the import until its start timeout (a minute)
// killed it, past systemd's TimeoutStopSec (45 s in the unit) and a pod's
// grace period (30 s by default), and was killed mid-drain; a start
// stopped so exited 1.
func TestForkStopAbandonsImport(t *testing.T) {
	_, testdata := forkDirs(t)
	t.Run("reload", func(t *testing.T) {
		g := startGate(t, gateOptions{policy: hangPolicy, openDir: true})
		writePolicy(t, g.policyPath, hangPolicy+fmt.Sprintf(hangRoute, testdata))
		g.signal(syscall.SIGHUP)
		g.waitLog("hang: importing", 1, time.Minute)
		g.signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(2 * time.Minute):
			t.Fatalf("serve did not exit after SIGTERM:\n%s", g.log())
		}
		log := g.log()
		if !strings.Contains(log, `msg="reload abandoned: serve is stopping`) || strings.Contains(log, "not ready after") {
			t.Errorf("the reload under way was not abandoned at the SIGTERM (want \"reload abandoned\", no start timeout):\n%s", log)
		}
	})
	t.Run("start-up", func(t *testing.T) {
		// Its exit status and its groups' removal are checked by the
		// cleanup (gate.stop): 0, and nothing left.
		g, _ := launchGate(t, gateOptions{policy: hangPolicy + fmt.Sprintf(hangRoute, testdata), openDir: true})
		g.waitLog("hang: importing", 1, time.Minute)
		g.signal(syscall.SIGTERM)
		select {
		case <-g.exited:
		case <-time.After(2 * time.Minute):
			t.Fatalf("serve did not exit after SIGTERM:\n%s", g.log())
		}
		log := g.log()
		if g.err != nil || !strings.Contains(log, `msg="stopped during start-up`) || strings.Contains(log, "not ready after") {
			t.Errorf("serve stopped during its start: %v, want exit 0 with the import abandoned (\"stopped during start-up\", no start timeout):\n%s", g.err, log)
		}
	})
}
