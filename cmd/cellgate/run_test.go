package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

func TestParseRunConfigDefaults(t *testing.T) {
	cfg, err := parseRunConfig([]string{"--", "echo", "hi"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.Memory != 64<<20 || cfg.Limits.MilliCPU != 1000 || cfg.Limits.Pids != 64 || cfg.Limits.Timeout != 30*time.Second {
		t.Errorf("limits %+v, want 64Mi, 1 CPU, 64 pids, 30s", cfg.Limits)
	}
	if cfg.User != "auto" || cfg.Dir != "/" || cfg.JSON {
		t.Errorf("user %q dir %q json %v, want auto, /, false", cfg.User, cfg.Dir, cfg.JSON)
	}
	if !slices.Equal(cfg.Env, []string{defaultWorkerPath}) {
		t.Errorf("env %q, want only %s", cfg.Env, defaultWorkerPath)
	}
	if !slices.Equal(cfg.Argv, []string{"echo", "hi"}) {
		t.Errorf("argv %q", cfg.Argv)
	}
	if sandbox.UIDRange(cfg.UIDs) != sandbox.DefaultUIDRange || cfg.GID != sandbox.DefaultGID {
		t.Errorf("uids %v gid %d, want the sandbox defaults", cfg.UIDs, cfg.GID)
	}
}

func TestParseRunConfigFlagsAndEnvironment(t *testing.T) {
	environ := []string{
		"CELLGATE_UNENFORCED=memory, pids,", // as --unenforced takes it: trimmed, the empty entry dropped
		"CELLGATE_UID_RANGE=3000000-3000099",
		"CELLGATE_GID=4242",
		"CELLGATE_CGROUP_BASE=/sys/fs/cgroup/from-env",
		"UNRELATED=1",
	}
	args := []string{"--memory", "1.5Gi", "--cpu", "250m", "--pids", "8", "--timeout", "2s", "--user", "1234:55",
		"--cgroup-base", "mine", "--env", "A=1", "--env", "A=2", "--env", "B=x=y", "--json", "--dir", "/tmp",
		"--", "prog", "--flag-of-prog"}
	cfg, err := parseRunConfig(args, environ, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Limits.Memory != 3<<29 || cfg.Limits.MilliCPU != 250 || cfg.Limits.Pids != 8 || cfg.Limits.Timeout != 2*time.Second {
		t.Errorf("limits %+v", cfg.Limits)
	}
	if !slices.Equal(cfg.Unenforced, []string{"memory", "pids"}) {
		t.Errorf("unenforced %q from the environment", cfg.Unenforced)
	}
	if cfg.UIDs.First != 3000000 || cfg.UIDs.Count != 100 || cfg.GID != 4242 {
		t.Errorf("uids %v gid %d from the environment", cfg.UIDs, cfg.GID)
	}
	if cfg.CgroupBase != "mine" {
		t.Errorf("cgroup base %q: the flag must win over CELLGATE_CGROUP_BASE", cfg.CgroupBase)
	}
	if !slices.Equal(cfg.Env, []string{defaultWorkerPath, "A=2", "B=x=y"}) {
		t.Errorf("env %q, want the default PATH, and the later A to replace the earlier", cfg.Env)
	}
	if own, err := parseRunConfig([]string{"--env", "A=1", "--env", "PATH=/opt/bin", "--", "prog"}, nil, io.Discard); err != nil ||
		!slices.Equal(own.Env, []string{"A=1", "PATH=/opt/bin"}) {
		t.Errorf("env %q (%v), want --env's PATH instead of the default", own.Env, err)
	}
	if !slices.Equal(cfg.Argv, []string{"prog", "--flag-of-prog"}) || !cfg.JSON || cfg.Dir != "/tmp" {
		t.Errorf("argv %q json %v dir %q", cfg.Argv, cfg.JSON, cfg.Dir)
	}
	cred, err := parseUser(cfg.User, cfg.GID)
	if err != nil || cred == nil || cred.UID != 1234 || cred.GID != 55 {
		t.Errorf("parseUser(%q) = %+v, %v", cfg.User, cred, err)
	}
}

// The confinement flags fill the policy's Confinement as the route keys of
// the same names do; none given is every confinement on.
func TestParseRunConfigConfinement(t *testing.T) {
	cfg, err := parseRunConfig([]string{"--", "x"}, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(cfg.Confine, policy.Confinement{}) || cfg.Confine.String() != "full" {
		t.Errorf("default confinement %+v (%s), want every confinement on", cfg.Confine, cfg.Confine)
	}
	args := []string{"--network", "host", "--seccomp", "off", "--host-namespaces", "pid,uts", "--system-dirs", "/usr,/etc",
		"--mount", "/srv/data:/data:rw", "--mount", "/srv/ro", "--mount", "/srv/x:ro", "--tmpfs-size", "8Mi", "--nofile", "64", "--huge-pages", "system", "--", "x"}
	cfg, err = parseRunConfig(args, nil, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	want := policy.Confinement{HostNetwork: true, NoSeccomp: true, HostNamespaces: []string{"pid", "uts"}, SystemDirs: []string{"/usr", "/etc"},
		Mounts:    []policy.Mount{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/srv/ro", Target: "/srv/ro"}, {Source: "/srv/x", Target: "/srv/x"}},
		TmpfsSize: 8 << 20, NoFile: 64, HugePages: true}
	if !reflect.DeepEqual(cfg.Confine, want) {
		t.Errorf("confinement\n %+v, want\n %+v", cfg.Confine, want)
	}
	cfg, err = parseRunConfig([]string{"--filesystem", "host", "--rootfs", "/srv/root", "--", "x"}, nil, io.Discard)
	if err == nil {
		t.Errorf("--filesystem host with --rootfs accepted: %+v", cfg.Confine)
	}
	cfg, err = parseRunConfig([]string{"--rootfs", "/srv/root", "--", "x"}, nil, io.Discard)
	if err != nil || cfg.Confine.RootFS != "/srv/root" {
		t.Errorf("--rootfs /srv/root: %+v, %v", cfg.Confine, err)
	}
}

func TestParseRunConfigErrors(t *testing.T) {
	tests := []struct {
		name    string
		environ []string
		args    []string
		want    []string // substrings of the message
	}{
		{"memory", nil, []string{"--memory", "12XB", "--", "x"}, []string{"-memory", "12XB"}},
		{"memory floor", nil, []string{"--memory", "1k", "--", "x"}, []string{"--memory", "1000"}},
		// As the policy refuses them: sums of sizes must not overflow.
		// A bad init is a bad flag (2), not cellgate's failure (125),
		// named as it was given.
		{"init", nil, []string{"--init", "/nonexistent/cellgate-init", "--", "x"}, []string{`--init="/nonexistent/cellgate-init"`, "no such file", "fix:"}},
		{"init from the environment", []string{"CELLGATE_INIT=/nonexistent/cellgate-init"}, []string{"--", "x"}, []string{`CELLGATE_INIT="/nonexistent/cellgate-init"`, "no such file"}},
		{"memory ceiling", nil, []string{"--memory", "9000Ti", "--", "x"}, []string{"--memory 9000Ti", "above 1024Ti"}},
		{"tmpfs-size ceiling", nil, []string{"--tmpfs-size", "9000Ti", "--", "x"}, []string{"--tmpfs-size 9000Ti", "above 1024Ti"}},
		{"cpu", nil, []string{"--cpu", "half", "--", "x"}, []string{"-cpu", "half"}},
		{"cpu fraction", nil, []string{"--cpu", "0.0005", "--", "x"}, []string{"-cpu", "0.0005"}},
		// 0 is how max is kept: --cpu 0 lifted the limit.
		{"cpu zero", nil, []string{"--cpu", "0", "--", "x"}, []string{"-cpu", `"0"`, "max for no limit"}},
		{"cpu zero millis", nil, []string{"--cpu", "0m", "--", "x"}, []string{"-cpu", `"0m"`, "no CPU at all"}},
		{"pids", nil, []string{"--pids", "0", "--", "x"}, []string{"--pids", "0"}},
		// The cell's pids.max is --pids plus its init's: above the
		// kernel's PID_MAX_LIMIT, or overflowing, it was refused.
		{"pids above pids.max", nil, []string{"--pids", "4194297", "--", "x"}, []string{"--pids 4194297", "above 4194296", "4194304"}},
		{"pids overflowing", nil, []string{"--pids", "9223372036854775807", "--", "x"}, []string{"--pids 9223372036854775807", "above 4194296"}},
		{"timeout", nil, []string{"--timeout", "0s", "--", "x"}, []string{"--timeout", "0s"}},
		{"timeout without a unit", nil, []string{"--timeout", "5", "--", "x"}, []string{"-timeout", "want a duration with a unit, such as 5s"}},
		{"dir", nil, []string{"--dir", "rel", "--", "x"}, []string{"--dir", "rel"}},
		{"dir missing", nil, []string{"--dir", "/nonexistent/dir", "--", "x"}, []string{"--dir /nonexistent/dir", "working directory", "no such file"}},
		{"dir not a directory", nil, []string{"--dir", "/etc/passwd", "--", "x"}, []string{"--dir /etc/passwd", "not a directory"}},
		{"env", nil, []string{"--env", "NOEQUALS", "--", "x"}, []string{"-env", "NOEQUALS"}},
		{"user", nil, []string{"--user", "12:ab", "--", "x"}, []string{"--user", "12:ab"}},
		{"unknown user", nil, []string{"--user", "no-such-user-here", "--", "x"}, []string{"--user", "no-such-user-here"}},
		{"unenforced", nil, []string{"--unenforced", "memory,io", "--", "x"}, []string{"--unenforced", "io"}},
		{"uid range", nil, []string{"--uid-range", "100-5", "--", "x"}, []string{"-uid-range", "100-5"}},
		{"uid range with root", nil, []string{"--uid-range", "0-99", "--", "x"}, []string{"--uid-range", "root"}},
		{"gid root", nil, []string{"--gid", "0", "--", "x"}, []string{"--gid", "0"}},
		// 4294967295 is (uid_t)-1 and (gid_t)-1: setresuid and setresgid
		// keep the id given so, and the cell ran as root, or in its group.
		{"gid -1", nil, []string{"--gid", "4294967295", "--", "x"}, []string{"--gid", "4294967295", "no change", "(fix: "}},
		{"gid -1 in the environment", []string{"CELLGATE_GID=4294967295"}, []string{"--", "x"}, []string{`CELLGATE_GID="4294967295": `, "no change"}},
		{"user uid -1", nil, []string{"--user", "4294967295", "--", "x"}, []string{"--user", "below 4294967295"}},
		{"user gid -1", nil, []string{"--user", "5000:4294967295", "--", "x"}, []string{"--user", "below 4294967295"}},
		{"no command", nil, nil, []string{"no command"}},
		{"environment", []string{"CELLGATE_GID=lots"}, []string{"--", "x"}, []string{"CELLGATE_GID", "lots"}},
		// A shared setting from the environment is named as given there.
		{"gid root in the environment", []string{"CELLGATE_GID=0"}, []string{"--", "x"}, []string{`CELLGATE_GID="0": `, "root's group", "(fix: "}},
		{"unenforced in the environment", []string{"CELLGATE_UNENFORCED=memory,cpus"}, []string{"--", "x"}, []string{`CELLGATE_UNENFORCED="memory,cpus": "cpus"`, "(fix: "}},
		{"uid range in the environment", []string{"CELLGATE_UID_RANGE=0-99"}, []string{"--", "x"}, []string{`CELLGATE_UID_RANGE="0-99": `, "root"}},
		{"network", nil, []string{"--network", "lan", "--", "x"}, []string{"-network", "lan", "none or host"}},
		{"filesystem", nil, []string{"--filesystem", "open", "--", "x"}, []string{"-filesystem", "confined or host"}},
		{"seccomp", nil, []string{"--seccomp", "strict", "--", "x"}, []string{"-seccomp", "default or off"}},
		{"host namespace", nil, []string{"--host-namespaces", "pid,net", "--", "x"}, []string{"-host-namespaces", `"net"`}},
		{"host namespace twice", nil, []string{"--host-namespaces", "pid,pid", "--", "x"}, []string{"-host-namespaces", "twice"}},
		{"system dir", nil, []string{"--system-dirs", "/usr,lib", "--", "x"}, []string{"-system-dirs", `"lib"`}},
		{"mount", nil, []string{"--mount", "/a:/b:/c", "--", "x"}, []string{"-mount", "SOURCE[:TARGET][:rw]"}},
		{"mount relative", nil, []string{"--mount", "data:/data", "--", "x"}, []string{"-mount", `"data"`}},
		{"rootfs", nil, []string{"--rootfs", "/srv/../x", "--", "x"}, []string{"-rootfs", "absolute clean"}},
		{"tmpfs size", nil, []string{"--tmpfs-size", "1k", "--", "x"}, []string{"--tmpfs-size", "4Ki"}},
		{"nofile", nil, []string{"--nofile", "3", "--", "x"}, []string{"--nofile 3"}},
		{"huge pages", nil, []string{"--huge-pages", "on", "--", "x"}, []string{"-huge-pages", `"on"`}},
		{"mount with the host filesystem", nil, []string{"--filesystem", "host", "--mount", "/srv", "--", "x"}, []string{"--mount", "--filesystem host"}},
		{"system dirs with rootfs", nil, []string{"--rootfs", "/srv/root", "--system-dirs", "/usr", "--", "x"}, []string{"--system-dirs", "--rootfs"}},
		// What the policy refuses of the same keys.
		{"host user namespace without root", nil, []string{"--host-namespaces", "user", "--", "x"}, []string{"--host-namespaces user", "--user root"}},
		{"root with the host's filesystem", nil, []string{"--user", "root", "--filesystem", "host", "--", "x"}, []string{"--filesystem host", "host's root", "--host-namespaces user"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := parseRunConfig(tt.args, tt.environ, io.Discard)
			if err == nil {
				t.Fatal("no error")
			}
			if strings.Contains(err.Error(), "\n") {
				t.Errorf("message spans lines: %q", err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

func TestParseRunConfigHelp(t *testing.T) {
	var out strings.Builder
	_, err := parseRunConfig([]string{"-h"}, nil, &out)
	if !errors.Is(err, flag.ErrHelp) {
		t.Fatalf("err %v, want flag.ErrHelp", err)
	}
	for _, w := range []string{"usage: cellgate run", "-memory", "-cgroup-base", "122", "124"} {
		if !strings.Contains(out.String(), w) {
			t.Errorf("help lacks %q:\n%s", w, out.String())
		}
	}
}

func TestResultStatus(t *testing.T) {
	tests := []struct {
		name   string
		res    sandbox.Result
		caught syscall.Signal
		want   int
	}{
		{"ok", sandbox.Result{Cause: sandbox.CauseOK}, 0, 0},
		{"exit", sandbox.Result{Cause: sandbox.CauseExit, ExitCode: 3}, 0, 3},
		{"signal", sandbox.Result{Cause: sandbox.CauseSignal, ExitCode: -1, Signal: syscall.SIGSEGV}, 0, 128 + 11},
		{"oom", sandbox.Result{Cause: sandbox.CauseOOM, ExitCode: -1, Signal: syscall.SIGKILL}, 0, exitOOM},
		{"deadline", sandbox.Result{Cause: sandbox.CauseDeadline, ExitCode: -1, Signal: syscall.SIGKILL}, 0, exitDeadline},
		{"pids, worker exited 1", sandbox.Result{Cause: sandbox.CausePids, ExitCode: 1}, 0, 1},
		{"killed after SIGINT", sandbox.Result{Cause: sandbox.CauseKilled, ExitCode: -1, Signal: syscall.SIGKILL}, syscall.SIGINT, 130},
		{"killed, no signal seen", sandbox.Result{Cause: sandbox.CauseKilled, ExitCode: -1, Signal: syscall.SIGKILL}, 0, 137},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := resultStatus(tt.res, tt.caught); got != tt.want {
				t.Errorf("resultStatus = %d, want %d", got, tt.want)
			}
		})
	}
}

func TestSetupStatus(t *testing.T) {
	spawn := func(err error) error { return fmt.Errorf("%w: x: %w", sandbox.ErrSpawn, err) }
	tests := []struct {
		name string
		err  error
		want int
	}{
		{"not found", spawn(&fs.PathError{Op: "fork/exec", Path: "/x", Err: syscall.ENOENT}), exitNotFound},
		{"permission", spawn(&fs.PathError{Op: "fork/exec", Path: "/x", Err: syscall.EACCES}), exitCannotExec},
		{"exec format", spawn(&fs.PathError{Op: "fork/exec", Path: "/x", Err: syscall.ENOEXEC}), exitCannotExec},
		{"no uid", fmt.Errorf("x: %w", sandbox.ErrNoUID), exitSetup},
		{"no cell", fmt.Errorf("x: %w", sandbox.ErrNoCell), exitSetup},
		{"other spawn failure", spawn(syscall.EAGAIN), exitSetup},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := setupStatus(tt.err); got != tt.want {
				t.Errorf("setupStatus(%v) = %d, want %d", tt.err, got, tt.want)
			}
		})
	}
}

func TestLookPath(t *testing.T) {
	dir := t.TempDir()
	exe := filepath.Join(dir, "prog")
	if err := os.WriteFile(exe, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "data"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	env := []string{"PATH=relative:" + dir}
	if p, err := lookPath("prog", env); err != nil || p != exe {
		t.Errorf("lookPath(prog) = %q, %v; want %s", p, err, exe)
	}
	if _, err := lookPath("data", env); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("lookPath(data) found a non-executable file: %v", err)
	}
	if _, err := lookPath("prog", []string{"A=1"}); !errors.Is(err, fs.ErrNotExist) || !errors.Is(err, sandbox.ErrSpawn) {
		t.Errorf("lookPath without PATH: %v, want ErrSpawn and fs.ErrNotExist", err)
	}
	wd, _ := os.Getwd()
	if p, _ := lookPath("./x/y", env); p != filepath.Join(wd, "x/y") {
		t.Errorf("lookPath(./x/y) = %q, want it made absolute against %s", p, wd)
	}
}

func TestKernelVersion(t *testing.T) {
	for rel, want := range map[string][2]int{
		"6.1.0-48-amd64":  {6, 1},
		"5.14.0-362.el9":  {5, 14},
		"6.18.44-fc-v769": {6, 18},
		"5.4":             {5, 4},
		"6.12rc1":         {6, 12},
		"garbage":         {0, 0},
	} {
		if maj, min := kernelVersion(rel); maj != want[0] || min != want[1] {
			t.Errorf("kernelVersion(%q) = %d.%d, want %d.%d", rel, maj, min, want[0], want[1])
		}
	}
}

func TestMeasured(t *testing.T) {
	missing := []string{"cpu.stat:nr_throttled", "memory.peak", "io.stat"}
	for _, tc := range []struct {
		file string
		want bool
	}{
		{"cpu.stat:nr_throttled", false},
		{"cpu.stat:usage_usec", true},
		{"memory.peak", false},
		{"memory.events", true},
		{"io.stat", false},
		{"pids.peak", true},
	} {
		if got := measured(missing, tc.file); got != tc.want {
			t.Errorf("measured(%q) = %v, want %v", tc.file, got, tc.want)
		}
	}
}

func TestCredentialGroups(t *testing.T) {
	acct := &user.User{Uid: "1001", Gid: "1001", Username: "app"}
	for _, tc := range []struct {
		name    string
		ids     []string
		want    []uint32
		wantErr bool
	}{
		{"primary only", []string{"1001"}, nil, false},
		{"supplementary kept, primary left out", []string{"1001", "27", "100"}, []uint32{27, 100}, false},
		{"bad group id", []string{"x"}, nil, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cred, err := credential(acct, tc.ids)
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tc.wantErr)
			}
			if err != nil {
				return
			}
			if cred.UID != 1001 || cred.GID != 1001 || !slices.Equal(cred.Groups, tc.want) {
				t.Errorf("credential = %+v, want uid/gid 1001 groups %v", cred, tc.want)
			}
		})
	}
}

// TestParseRunConfigRoot: the root combinations the policy takes, run
// takes too.
func TestParseRunConfigRoot(t *testing.T) {
	for _, args := range [][]string{
		{"--user", "root", "--", "x"},
		{"--user", "0", "--filesystem", "host", "--host-namespaces", "user", "--", "x"},
		{"--user", "root", "--host-namespaces", "user", "--", "x"},
	} {
		if _, err := parseRunConfig(args, nil, io.Discard); err != nil {
			t.Errorf("%q: %v", args, err)
		}
	}
}

// TestRunJSONNotStarted: a command that never started has no exit code,
// uid or usage in run --json's report, rather than zeros that read as a
// run as root that exited 0.
func TestRunJSONNotStarted(t *testing.T) {
	dir := t.TempDir()
	out, err1 := os.Create(filepath.Join(dir, "stdout"))
	errOut, err2 := os.Create(filepath.Join(dir, "stderr"))
	if err := errors.Join(err1, err2); err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	defer errOut.Close()
	status := runMain(context.Background(), []string{"--json", "--", "/nonexistent/cellgate-test-command"}, stdio{out: out, err: errOut})
	b, err := os.ReadFile(out.Name())
	if err != nil {
		t.Fatal(err)
	}
	var rep map[string]any
	if err := json.Unmarshal(b, &rep); err != nil {
		t.Fatalf("run --json printed %q: %v", b, err)
	}
	if status != 127 || rep["status"] != float64(127) || rep["error"] == nil {
		t.Errorf("exit %d, report %v; want 127 with the error", status, rep)
	}
	for _, key := range []string{"exit_code", "uid", "usage", "started"} {
		if v, ok := rep[key]; ok {
			t.Errorf("report has %s = %v for a command that never started", key, v)
		}
	}
}

// TestRunDirOutsideView: a --dir the cell's view does not have is a bad
// flag (2), named, before any cell; before, the cell failed to enter it
// and run said the command was not found (127).
func TestRunDirOutsideView(t *testing.T) {
	dir := t.TempDir()
	errOut, err := os.Create(filepath.Join(dir, "stderr"))
	if err != nil {
		t.Fatal(err)
	}
	defer errOut.Close()
	work := filepath.Join(dir, "work") // below /tmp: the cell's own, empty /tmp
	if err := os.Mkdir(work, 0o755); err != nil {
		t.Fatal(err)
	}
	status := runMain(context.Background(), []string{"--dir", work, "--", "/bin/true"}, stdio{out: errOut, err: errOut})
	b, _ := os.ReadFile(errOut.Name())
	if status != exitUsage || !strings.Contains(string(b), "--dir "+work+": not in the cell's view (fix: add --mount "+work) {
		t.Errorf("exit %d, stderr %q; want 2 naming --dir and the fix", status, b)
	}
	// So is a --user of the per-cell uid range: the range's uids are
	// serve's cells', one each.
	errOut.Truncate(0)
	errOut.Seek(0, 0)
	status = runMain(context.Background(), []string{"--user", "2000000005", "--", "/bin/true"}, stdio{out: errOut, err: errOut})
	if b, _ := os.ReadFile(errOut.Name()); status != exitUsage || !strings.Contains(string(b), "--user 2000000005: the route's user is one of the uids cellgate gives its cells") {
		t.Errorf("--user of the range: exit %d, stderr %q; want 2 naming --user", status, b)
	}
	// So is a confinement flag the view cannot be built with (before:
	// 125, cellgate failed).
	for _, args := range [][]string{{"--rootfs", filepath.Join(dir, "none")}, {"--mount", filepath.Join(dir, "none")}} {
		errOut.Truncate(0)
		errOut.Seek(0, 0)
		status := runMain(context.Background(), append(args, "--", "/bin/true"), stdio{out: errOut, err: errOut})
		if b, _ := os.ReadFile(errOut.Name()); status != exitUsage || !strings.Contains(string(b), filepath.Join(dir, "none")) {
			t.Errorf("%q: exit %d, stderr %q; want 2 naming the path", args, status, b)
		}
	}
}
