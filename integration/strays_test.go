package integration

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

// roleInit runs cellgate serve as the init of a new PID namespace, as a
// container runtime starts the image's entrypoint (startGate with init).
const roleInit = "init"

// runAsInit is pid 1 of a PID namespace and a mount namespace of its
// own (startGate's clone flags): it mounts a /proc of that namespace,
// without it reaching the host's mounts, and executes args[0] in its place
// with the environment less its role.
func runAsInit(args []string) int {
	if len(args) == 0 {
		fmt.Fprintln(os.Stderr, "init: nothing to execute")
		return 3
	}
	if err := unix.Mount("", "/", "", unix.MS_REC|unix.MS_PRIVATE, ""); err != nil {
		fmt.Fprintf(os.Stderr, "init: make / private: %v\n", err)
		return 3
	}
	if err := unix.Mount("proc", "/proc", "proc", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		fmt.Fprintf(os.Stderr, "init: mount /proc: %v\n", err)
		return 3
	}
	env := slices.DeleteFunc(os.Environ(), func(kv string) bool { return strings.HasPrefix(kv, cellHelperEnv+"=") })
	err := syscall.Exec(args[0], args, env)
	fmt.Fprintf(os.Stderr, "init: exec %s: %v\n", args[0], err)
	return 3
}

// nsChildren lists the children of pid 1 in the PID namespace whose init
// is host pid init, through the /proc mounted there: "PID (comm) STATE".
func nsChildren(t testing.TB, init int) []string {
	t.Helper()
	proc := fmt.Sprintf("/proc/%d/root/proc", init)
	ents, err := os.ReadDir(proc)
	if err != nil {
		t.Fatalf("the namespace's /proc: %v", err)
	}
	var out []string
	for _, e := range ents {
		if _, err := strconv.Atoi(e.Name()); err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(proc, e.Name(), "stat"))
		if err != nil {
			continue
		}
		s := string(b)
		i := strings.LastIndexByte(s, ')')
		if i < 0 {
			continue
		}
		if f := strings.Fields(s[i+1:]); len(f) >= 2 && f[1] == "1" {
			out = append(out, fmt.Sprintf("%s %s", s[:i+1], f[0]))
		}
	}
	return out
}

// TestGateReapsStraysAsPID1: serve as pid 1 of its PID namespace (the
// image's entrypoint) inherits every process orphaned there; what a
// program leaves behind in a session of its own (--isolation none: in
// serve's namespace, as with host_namespaces: [pid]) ends, and serve reaps
// it: no zombie is left holding its pid. Meanwhile serve's own children,
// the programs it waits for, are never taken from it: every request is
// answered 200. The bound is a condition (a few scan intervals), not a
// speed.
func TestGateReapsStraysAsPID1(t *testing.T) {
	stray := shellProgram(t, "stray", `setsid sh -c 'sleep 0.2' </dev/null >/dev/null 2>&1 &
printf 'Content-Type: text/plain\n\nleft one'
`)
	ok := shellProgram(t, "ok", "printf 'Content-Type: text/plain\\n\\nok'\n")
	policy := `version: 1
tenants:
  - {name: web}
routes:
  - {name: stray, match: {path: /stray}, tenant: web, program: "` + stray + `"}
  - {name: ok, match: {path: /ok}, tenant: web, program: "` + ok + `"}
`
	g := startGate(t, gateOptions{policy: policy, base: filepath.Join(t.TempDir(), "no-base"),
		args: []string{"--isolation", "none", "--log-level", "debug"}, init: true})
	init := g.cmd.Process.Pid
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/root/proc/1/cmdline", init)); err != nil || !strings.HasPrefix(string(b), cellgateBin(t)+"\x00serve\x00") {
		t.Fatalf("pid 1 of serve's namespace is %q (%v), want cellgate serve", b, err)
	}

	const n = 10
	checkAll(t, "GET /stray", load(g.client, n, 5, getter(g.url+"/stray")), 200)

	// While the strays are found and reaped, serve's own children come
	// and go: none may be taken.
	deadline := time.Now().Add(30 * time.Second)
	answered := 0
	for {
		if status, _, body := g.get("/ok"); status != 200 || body != "ok" {
			t.Fatalf("GET /ok while strays are reaped: %d %q\n%s", status, body, g.log())
		}
		answered++
		kids := nsChildren(t, init)
		if len(kids) == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("30s after %d requests that each left a process, pid 1 still has children in its namespace (zombies not reaped): %q", n, kids)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if got := metric(g.metrics(), "cellgate_stray_zombies_reaped_total", nil); got != n {
		t.Errorf("cellgate_stray_zombies_reaped_total = %v, want %d (one per request)", got, n)
	}
	if got := strings.Count(g.log(), "reaped a stray zombie"); got != n {
		t.Errorf("%d debug lines of a stray reaped, want %d", got, n)
	}
	for _, bad := range []string{"level=ERROR", "no child processes", "could not be started"} {
		if strings.Contains(g.log(), bad) {
			t.Errorf("serve's log has %q:\n%s", bad, g.log())
		}
	}
	t.Logf("%d strays reaped; %d requests to /ok answered meanwhile", n, answered)
}
