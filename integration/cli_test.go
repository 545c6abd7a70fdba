package integration

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// cellgate run and cellgate doctor against the built binary (CELLGATE_BIN).

// cli runs the binary with args and returns its exit status, stdout and
// stderr.
func cli(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	cmd := exec.Command(cellgateBin(t), args...)
	cmd.Env = append([]string{"PATH=/usr/bin:/bin"}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return 0, out.String(), errOut.String()
	case errors.As(err, &ee):
		return ee.ExitCode(), out.String(), errOut.String()
	}
	t.Fatalf("cellgate %s: %v", strings.Join(args, " "), err)
	return 0, "", ""
}

// runReport is the part of cellgate run --json the tests read.
type runReport struct {
	Status      int      `json:"status"`
	Cause       string   `json:"cause"`
	ExitCode    int      `json:"exit_code"`
	Signal      string   `json:"signal"`
	WallSeconds float64  `json:"wall_seconds"`
	UID         uint32   `json:"uid"`
	Unenforced  []string `json:"unenforced"`
	Error       string   `json:"error"`
	Limits      struct {
		MemoryBytes int64  `json:"memory_bytes"`
		CPU         string `json:"cpu"`
		Pids        int64  `json:"pids"`
	} `json:"limits"`
	Usage struct {
		CPUUsageUsec uint64 `json:"cpu_usage_usec"`
		MemoryPeak   uint64 `json:"memory_peak_bytes"`
		OOMKill      uint64 `json:"oom_kill"`
		PidsPeak     uint64 `json:"pids_peak"`
	} `json:"usage"`
}

func TestCLIRun(t *testing.T) {
	dir := requireKernel(t)
	w := workerBinary(t)
	notExec := filepath.Join(filepath.Dir(w), "not-executable")
	if err := os.WriteFile(notExec, []byte("#!/bin/sh\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name       string
		args       []string
		wantStatus int
		wantCause  string
		check      func(t *testing.T, r runReport)
	}{
		{name: "exit status", args: []string{"--", "/bin/sh", "-c", "exit 3"}, wantStatus: 3, wantCause: "exit",
			check: func(t *testing.T, r runReport) {
				if r.ExitCode != 3 {
					t.Errorf("exit_code %d, want 3", r.ExitCode)
				}
			}},
		{name: "success", args: []string{"--memory", "64Mi", "--cpu", "0.5", "--pids", "16", "--", "/bin/true"}, wantStatus: 0, wantCause: "ok",
			check: func(t *testing.T, r runReport) {
				if r.Limits.MemoryBytes != 64<<20 || r.Limits.CPU != "0.5" || r.Limits.Pids != 16 {
					t.Errorf("limits %+v, want 64Mi, 0.5, 16", r.Limits)
				}
				if r.UID < 2_000_000_000 || len(r.Unenforced) != 0 || r.WallSeconds <= 0 || r.Usage.CPUUsageUsec == 0 || r.Usage.PidsPeak == 0 {
					t.Errorf("report %+v: want a per-cell uid, nothing unenforced, wall time, cpu usage, pids.peak", r)
				}
			}},
		{name: "signal", args: []string{"--", "/bin/sh", "-c", "kill -TERM $$"}, wantStatus: 128 + 15, wantCause: "signal",
			check: func(t *testing.T, r runReport) {
				if r.Signal != "SIGTERM" {
					t.Errorf("signal %q, want SIGTERM", r.Signal)
				}
			}},
		{name: "oom", args: []string{"--memory", "32Mi", "--env", cellHelperEnv + "=touch", "--", w, "256"}, wantStatus: 122, wantCause: "oom",
			check: func(t *testing.T, r runReport) {
				if r.Usage.OOMKill == 0 {
					t.Errorf("usage.oom_kill 0, want > 0")
				}
			}},
		{name: "deadline", args: []string{"--timeout", "1s", "--", "/bin/sleep", "100"}, wantStatus: 124, wantCause: "deadline"},
		{name: "not found", args: []string{"--", "/nonexistent/program"}, wantStatus: 127},
		{name: "not found in PATH", args: []string{"--", "no-such-program-anywhere"}, wantStatus: 127},
		{name: "cannot execute", args: []string{"--", notExec}, wantStatus: 126},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			base := filepath.Join(dir, "run-"+string(rune('a'+i)))
			trackBase(base)
			args := append([]string{"run", "--json", "--cgroup-base", base}, tt.args...)
			status, stdout, stderr := cli(t, nil, args...)
			if status != tt.wantStatus {
				t.Errorf("exit status %d, want %d; stderr:\n%s", status, tt.wantStatus, stderr)
			}
			var r runReport
			if err := json.Unmarshal([]byte(stdout), &r); err != nil {
				t.Fatalf("stdout is not one JSON object: %v\n%s", err, stdout)
			}
			if r.Status != status || r.Cause != tt.wantCause {
				t.Errorf("JSON status %d cause %q, want %d %q (error %q)", r.Status, r.Cause, status, tt.wantCause, r.Error)
			}
			if tt.wantCause == "" && r.Error == "" {
				t.Errorf("JSON has no error for a command that did not start")
			}
			if tt.check != nil {
				tt.check(t, r)
			}
			if _, err := os.Stat(base); err == nil {
				t.Errorf("cellgate run left its base %s", base)
			}
		})
	}
}

func TestCLIRunTable(t *testing.T) {
	dir := requireKernel(t)
	base := filepath.Join(dir, "run-table")
	trackBase(base)
	status, stdout, stderr := cli(t, []string{"DAEMON_SECRET=leaked"}, "run", "--cgroup-base", base, "--env", "GREETING=hello",
		"--", "/bin/sh", "-c", `echo "$GREETING"; echo "${DAEMON_SECRET-unset}"`)
	if status != 0 {
		t.Fatalf("exit status %d; stderr:\n%s", status, stderr)
	}
	if stdout != "hello\nunset\n" {
		t.Errorf("command's stdout %q: want exactly its --env environment, nothing of cellgate's", stdout)
	}
	for _, want := range []string{"cause", "ok", "memory peak", "pids peak", "cpu", "uid"} {
		if !strings.Contains(stderr, want) {
			t.Errorf("accounting table on stderr lacks %q:\n%s", want, stderr)
		}
	}
}

// TestCLIBadFlags: a bad flag or value is one line naming it, exit 2.
func TestCLIBadFlags(t *testing.T) {
	tests := []struct {
		name string
		env  []string
		args []string
		want []string // substrings of the one line
	}{
		{"memory unit", nil, []string{"run", "--memory", "12XB", "--", "/bin/true"}, []string{"memory", "12XB"}},
		{"cpu", nil, []string{"run", "--cpu", "lots", "--", "/bin/true"}, []string{"cpu", "lots"}},
		{"cpu below floor", nil, []string{"run", "--cpu", "1m", "--", "/bin/true"}, []string{"--cpu", "0.001"}},
		{"pids", nil, []string{"run", "--pids", "0", "--", "/bin/true"}, []string{"--pids", "0"}},
		{"timeout", nil, []string{"run", "--timeout", "soon", "--", "/bin/true"}, []string{"timeout", "soon"}},
		{"user", nil, []string{"run", "--user", "1:x", "--", "/bin/true"}, []string{"--user", "1:x"}},
		{"unenforced", nil, []string{"run", "--unenforced", "disk", "--", "/bin/true"}, []string{"--unenforced", "disk"}},
		{"uid range", nil, []string{"run", "--uid-range", "0-10", "--", "/bin/true"}, []string{"--uid-range", "0-10"}},
		{"no command", nil, []string{"run", "--memory", "64Mi"}, []string{"no command"}},
		{"unknown flag", nil, []string{"run", "--bogus", "--", "/bin/true"}, []string{"bogus"}},
		{"environment", []string{"CELLGATE_UID_RANGE=5"}, []string{"run", "--", "/bin/true"}, []string{"CELLGATE_UID_RANGE", "5"}},
		{"doctor flag", nil, []string{"doctor", "--unenforced", "disk"}, []string{"--unenforced", "disk"}},
		{"unknown command", nil, []string{"frobnicate"}, []string{"frobnicate"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			status, stdout, stderr := cli(t, tt.env, tt.args...)
			if status != 2 {
				t.Errorf("exit status %d, want 2; stderr:\n%s", status, stderr)
			}
			if stdout != "" {
				t.Errorf("stdout %q, want nothing", stdout)
			}
			if strings.Count(stderr, "\n") != 1 {
				t.Errorf("stderr is not one line:\n%s", stderr)
			}
			for _, w := range tt.want {
				if !strings.Contains(stderr, w) {
					t.Errorf("stderr %q does not name %q", stderr, w)
				}
			}
		})
	}
}

func TestCLIDoctor(t *testing.T) {
	dir := requireKernel(t)
	t.Run("ready", func(t *testing.T) {
		status, stdout, stderr := cli(t, nil, "doctor", "--cgroup-base", filepath.Join(dir, "doctor"))
		if status != 0 {
			t.Errorf("exit status %d, want 0:\n%s%s", status, stdout, stderr)
		}
		for _, want := range []string{"ok    kernel", "ok    cgroup.kill", "ok    clone3", "ok    memory.peak", "ok    pids.peak", "ok    cell", "ok    seccomp", "ok    namespaces", "ok    resident IPC", "ok    recursive binds", "ok    root routes", "ok    confined cell", "ok    huge pages",
			"warn  module autoload", "kernel.modprobe=/sbin/modprobe: a cell that executes a file of a format the kernel does not know"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("doctor output lacks %q:\n%s", want, stdout)
			}
		}
		if strings.Contains(stdout, "FAIL") {
			t.Errorf("doctor reported a failure:\n%s", stdout)
		}
		// The kernel's memory.peak decides whether groups: reused keeps
		// each request's peak: doctor says which, as a write to the file
		// in a scratch group shows.
		want := "warn  memory.peak reset"
		if peakWritable(t, dir) {
			want = "ok    memory.peak reset"
		}
		if !strings.Contains(stdout, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, stdout)
		}
	})
	t.Run("no controllers", func(t *testing.T) {
		plain := filepath.Join(dir, "plain") // no controllers enabled for its children
		if err := os.Mkdir(plain, 0o755); err != nil {
			t.Fatal(err)
		}
		status, stdout, _ := cli(t, nil, "doctor", "--cgroup-base", filepath.Join(plain, "base"))
		if status != 1 {
			t.Errorf("exit status %d, want 1:\n%s", status, stdout)
		}
		for _, want := range []string{"FAIL  controller memory", "fix:", "--unenforced memory"} {
			if !strings.Contains(stdout, want) {
				t.Errorf("doctor output lacks %q:\n%s", want, stdout)
			}
		}
		if entries, _ := os.ReadDir(plain); len(entries) > 0 {
			for _, e := range entries {
				if e.IsDir() {
					t.Errorf("doctor left %s", filepath.Join(plain, e.Name()))
				}
			}
		}
	})
}

// TestCLIRunConfined: cellgate run confines its command as a cgi route's
// cells are by default (the probe, as in confine_test.go, finds a file of
// the host, a loopback listener of the host and the test's own process out
// of reach, and the denied system calls EPERM), and the flags that mirror
// the policy keys relax each of them.
func TestCLIRunConfined(t *testing.T) {
	dir := requireKernel(t)
	w := workerBinary(t)
	// The relaxed run must be able to read the file.
	shared := openTempDir(t, "cellgate-run-", 0o755)
	secret := filepath.Join(shared, "secret.txt")
	if err := os.WriteFile(secret, []byte("secret"), 0o644); err != nil {
		t.Fatal(err)
	}
	listener := loopbackListener(t)
	q := url.Values{"read": {secret}, "connect": {listener}, "procs": {"1"}, "syscalls": {"1"}}
	probe := func(name string, flags ...string) (probeReply, string) {
		t.Helper()
		base := filepath.Join(dir, "run-"+name)
		trackBase(base)
		args := append([]string{"run", "--cgroup-base", base, "--env", cellHelperEnv + "=probe", "--env", "QUERY_STRING=" + q.Encode()}, flags...)
		status, stdout, stderr := cli(t, nil, append(args, "--", w)...)
		if status != 0 {
			t.Fatalf("%s: exit status %d; stderr:\n%s", name, status, stderr)
		}
		_, body, ok := strings.Cut(stdout, "\r\n\r\n")
		var r probeReply
		if err := json.Unmarshal([]byte(body), &r); !ok || err != nil {
			t.Fatalf("%s: probe output %q: %v", name, stdout, err)
		}
		return r, stderr
	}

	r, table := probe("confined")
	if r.Read[secret] == "ok" {
		t.Errorf("the confined command read %s", secret)
	}
	if r.Connect[listener] == "ok" {
		t.Errorf("the confined command connected to the host's loopback listener %s", listener)
	}
	if len(r.Procs) != 2 || !strings.HasPrefix(r.Procs[0], "1 cellgate-init") {
		t.Errorf("the confined command's /proc lists %q, want its init as 1 and itself", r.Procs)
	}
	for _, s := range probeSyscalls {
		if got := r.Syscalls[s.name]; got != "EPERM" {
			t.Errorf("%s in the confined command: %s, want EPERM", s.name, got)
		}
	}
	if r.Hostname != "cell" || r.UID < 2_000_000_000 {
		t.Errorf("hostname %q uid %d, want the cell's own (cell) and a per-cell uid", r.Hostname, r.UID)
	}
	if !strings.Contains(table, "confinement") || !strings.Contains(table, "full") {
		t.Errorf("accounting table does not say the confinement is full:\n%s", table)
	}

	// Run as root, the command is root of a user namespace of its own,
	// whose uid 0 is the range's first uid; with --host-namespaces user
	// it is the host's root, keeping root's capabilities over files
	// alone. Neither can write a sysctl (TestConfineRoot).
	all := q
	q = url.Values{"openw": {"/proc/sys/kernel/core_pattern"}, "cat": {"/proc/self/status", "/proc/self/uid_map"}}
	r, _ = probe("root", "--user", "root")
	if m := strings.Fields(r.Cat["/proc/self/uid_map"]); r.UID != 0 || len(m) != 3 || m[0] != "0" || m[1] != "2000000000" || m[2] != "1" || r.OpenW["/proc/sys/kernel/core_pattern"] == "ok" {
		t.Errorf("--user root: uid %d, uid_map %q, opening core_pattern to append: %s; want 0, 0 mapped to 2000000000 alone, and refused", r.UID, m, r.OpenW["/proc/sys/kernel/core_pattern"])
	}
	r, _ = probe("hostroot", "--user", "root", "--host-namespaces", "user")
	if r.UID != 0 || r.OpenW["/proc/sys/kernel/core_pattern"] != "EROFS" {
		t.Errorf("--user root --host-namespaces user: uid %d, opening core_pattern to append: %s; want 0 and EROFS", r.UID, r.OpenW["/proc/sys/kernel/core_pattern"])
	}
	checkRootCaps(t, "--user root --host-namespaces user: CapEff", procStatus(r.Cat["/proc/self/status"])["CapEff"])
	q = all

	r, table = probe("relaxed", "--network", "host", "--filesystem", "host", "--seccomp", "off", "--host-namespaces", "pid,ipc,uts")
	if r.Read[secret] != "ok" {
		t.Errorf("--filesystem host: the command cannot read %s: %s", secret, r.Read[secret])
	}
	if got := r.Connect[listener]; got != "ok" {
		t.Errorf("--network host: the command cannot connect to %s: %s", listener, got)
	}
	self := fmt.Sprintf("%d ", os.Getpid())
	if !slices.ContainsFunc(r.Procs, func(p string) bool { return strings.HasPrefix(p, self) }) {
		t.Errorf("--host-namespaces pid: the command's /proc does not list the test's own process %d", os.Getpid())
	}
	if r.Syscalls["unshare(CLONE_NEWUSER)"] == "EPERM" {
		t.Errorf("--seccomp off: unshare(CLONE_NEWUSER) still EPERM (the guest allows user namespaces)")
	}
	if !strings.Contains(table, "network: host") || !strings.Contains(table, "seccomp: off") {
		t.Errorf("accounting table does not say what was relaxed:\n%s", table)
	}
}

// TestCLIRunLongMountPoint: a mount point whose path in the cell's staging
// directory is longer than PATH_MAX is refused by the init with its name,
// never cut short to another place and mounted there.
func TestCLIRunLongMountPoint(t *testing.T) {
	dir := requireKernel(t)
	base := filepath.Join(dir, "run-longmount")
	trackBase(base)
	target := "/" + strings.Repeat(strings.Repeat("d", 200)+"/", 21) + "x"
	status, _, stderr := cli(t, nil, "run", "--cgroup-base", base, "--mount", "/usr:"+target, "--", "/bin/true")
	if status != 125 || !strings.Contains(stderr, "file name too long") {
		t.Fatalf("a %d-byte mount point: exit %d, stderr:\n%s\nwant 125 and the init's refusal", len(target), status, stderr)
	}
}

// peakWritable reports whether this kernel takes a write to memory.peak
// (a reset: Linux 6.12), by writing to it in a scratch group below dir:
// earlier kernels refuse the write (EINVAL on 6.1), root's included.
// Not from the file's mode, which is what doctor reads.
func peakWritable(t *testing.T, dir string) bool {
	t.Helper()
	scratch := filepath.Join(dir, "peakprobe")
	if err := os.Mkdir(scratch, 0o755); err != nil {
		t.Fatal(err)
	}
	defer os.Remove(scratch)
	f, err := os.OpenFile(filepath.Join(scratch, "memory.peak"), os.O_WRONLY, 0)
	if err != nil {
		t.Logf("open memory.peak to write: %v", err)
		return false
	}
	defer f.Close()
	_, err = f.WriteString("reset\n")
	t.Logf("write to memory.peak in a scratch group: %v", err)
	return err == nil
}
