package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// unitKeys reads a systemd unit's KEY=value lines (every value of a
// repeated key, in order), ignoring sections and comments.
func unitKeys(t *testing.T, path string) map[string][]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	keys := map[string][]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || line[0] == '#' || line[0] == '[' {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			t.Fatalf("%s: %q is not KEY=value", path, line)
		}
		keys[k] = append(keys[k], v)
	}
	return keys
}

const unitDir = "../../deploy/systemd"

// TestSocketUnitsMatchServe: the socket units name their sockets as serve
// looks for them, one unit per name, and start cellgate.service.
func TestSocketUnitsMatchServe(t *testing.T) {
	units, _ := filepath.Glob(filepath.Join(unitDir, "*.socket"))
	var names []string
	for _, u := range units {
		k := unitKeys(t, u)
		if len(k["FileDescriptorName"]) != 1 {
			t.Errorf("%s: FileDescriptorName= %q, want exactly one", u, k["FileDescriptorName"])
			continue
		}
		names = append(names, k["FileDescriptorName"][0])
		if !slices.Equal(k["Service"], []string{"cellgate.service"}) {
			t.Errorf("%s: Service=%q, want cellgate.service", u, k["Service"])
		}
	}
	slices.Sort(names)
	if want := []string{fdNameAdmin, fdNamePublic}; !slices.Equal(names, want) {
		t.Errorf("socket units name %q, want %q (what serve takes)", names, want)
	}
	svc := unitKeys(t, filepath.Join(unitDir, "cellgate.service"))
	for _, s := range []string{"cellgate.socket", "cellgate-admin.socket"} {
		if !strings.Contains(strings.Join(svc["Requires"], " "), s) {
			t.Errorf("cellgate.service: Requires=%q, want %s", svc["Requires"], s)
		}
	}
}

// TestServiceUnitLetsDrainFinish: SIGTERM reaches cellgate alone, and
// systemd waits longer than serve's default drain before it kills; the
// unit delegates the controllers cellgate needs and reloads with SIGHUP
// after a check.
func TestServiceUnitLetsDrainFinish(t *testing.T) {
	k := unitKeys(t, filepath.Join(unitDir, "cellgate.service"))
	one := func(key string) string {
		t.Helper()
		if len(k[key]) != 1 {
			t.Fatalf("cellgate.service: %s=%q, want one value", key, k[key])
		}
		return k[key][0]
	}
	if v := one("Type"); v != "notify" {
		t.Errorf("Type=%s, want notify (serve sends READY=1)", v)
	}
	if v := one("KillMode"); v != "mixed" {
		t.Errorf("KillMode=%s, want mixed: SIGTERM to cellgate only, which drains its cells", v)
	}
	stop, err := time.ParseDuration(one("TimeoutStopSec"))
	if err != nil {
		t.Fatalf("TimeoutStopSec: %v", err)
	}
	if drain := defaultDrainTimeout(t); stop <= drain {
		t.Errorf("TimeoutStopSec=%s is not longer than serve's default --drain-timeout %s", stop, drain)
	}
	if stop < defaultDrainTimeout(t)+stopTeardown {
		t.Errorf("TimeoutStopSec=%s is shorter than the default drain and the teardown serve asks for with STOPPING=1 (%s)", stop, defaultDrainTimeout(t)+stopTeardown)
	}
	// The start imports every fork route's app, and ExecReload=, bounded
	// by the same timeout, a reload's new ones: at least two of them, and
	// no less than cellgate reload waits for the verdict.
	start, err := time.ParseDuration(one("TimeoutStartSec"))
	if err != nil {
		t.Fatalf("TimeoutStartSec: %v", err)
	}
	if start < 2*sandbox.DefaultPreloadStart || start <= defaultReloadWait {
		t.Errorf("TimeoutStartSec=%s: want at least two preloaders' imports (%s) and more than cellgate reload's wait (%s), which then says why itself", start, 2*sandbox.DefaultPreloadStart, defaultReloadWait)
	}
	delegated := strings.Fields(one("Delegate"))
	for _, c := range []string{"memory", "cpu", "pids"} {
		if !slices.Contains(delegated, c) {
			t.Errorf("Delegate=%q lacks %s", delegated, c)
		}
	}
	// Synchronous: systemd 252 ends the reload when ExecReload= exits.
	reload := k["ExecReload"]
	if len(reload) != 1 || !strings.Contains(reload[0], "cellgate reload --pid $MAINPID") {
		t.Errorf("ExecReload=%q, want cellgate reload --pid $MAINPID alone", reload)
	}
}

// defaultDrainTimeout is serve's --drain-timeout when nothing sets it.
func defaultDrainTimeout(t *testing.T) time.Duration {
	t.Helper()
	cfg, err := loadServeConfig([]string{"--policy", "p"}, []string{"TMPDIR=" + t.TempDir()}, nil)
	if err != nil {
		t.Fatal(err)
	}
	return cfg.DrainTimeout
}

// TestServiceUnitCapabilities: the service's bounding set has what serve
// uses, CAP_CHOWN included (a fork route's group gives its cgroup.procs to
// the preloader's uid; without it every fork route failed to start with
// "chown .../cgroup.procs: operation not permitted"), and CAP_SETPCAP (a
// program run as root has its capabilities cut: without it serve refuses
// a route run as root).
func TestServiceUnitCapabilities(t *testing.T) {
	k := unitKeys(t, filepath.Join(unitDir, "cellgate.service"))
	if len(k["CapabilityBoundingSet"]) != 1 {
		t.Fatalf("cellgate.service: CapabilityBoundingSet=%q, want one value", k["CapabilityBoundingSet"])
	}
	have := strings.Fields(k["CapabilityBoundingSet"][0])
	for _, c := range []string{"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_ADMIN", "CAP_CHOWN", "CAP_SETPCAP"} {
		if !slices.Contains(have, c) {
			t.Errorf("cellgate.service: CapabilityBoundingSet lacks %s (have %v)", c, have)
		}
	}
}

// TestReadmeSystemdInstallsExample: README's systemd steps install every
// program, dir and app_dir that examples/policy.yaml names, at the paths
// its relative names resolve to from where the steps put it (they used to
// leave out examples/wsgi and cgi/flask-hello.cgi: check reported 3
// problems and serve refused to start).
func TestReadmeSystemdInstallsExample(t *testing.T) {
	readme, err := os.ReadFile("../../README.md")
	if err != nil {
		t.Fatal(err)
	}
	_, steps, ok := strings.Cut(string(readme), "\n### systemd\n")
	if !ok {
		t.Fatal("README.md has no systemd section")
	}
	steps, _, _ = strings.Cut(steps, "\n### ")
	installed := map[string]bool{} // files and directories the steps create
	var policyPath string
	for _, line := range strings.Split(steps, "\n") {
		if v, ok := strings.CutPrefix(line, "echo CELLGATE_POLICY="); ok {
			policyPath, _, _ = strings.Cut(v, " ")
		}
		f := strings.Fields(line)
		if len(f) == 0 || f[0] != "install" {
			continue
		}
		var dir string
		var srcs []string
		for i := 1; i < len(f); i++ {
			switch {
			case f[i] == "-m":
				i++
			case f[i] == "-t":
				i++
				dir = f[i]
			case strings.HasPrefix(f[i], "-"):
			default:
				srcs = append(srcs, f[i])
			}
		}
		if dir == "" { // install [-D] SRC DST
			if len(srcs) == 2 {
				installed[srcs[1]] = true
			}
			continue
		}
		for _, s := range srcs {
			matches, _ := filepath.Glob(filepath.Join("../..", s))
			if rest, ok := strings.CutPrefix(s, "bin/cgi/"); ok && len(matches) == 0 {
				// make examples builds bin/cgi/NAME from examples/cgi/NAME;
				// a fresh clone's unit tests run before it.
				matches, _ = filepath.Glob(filepath.Join("../../examples/cgi", rest))
			}
			for _, m := range matches {
				installed[filepath.Join(dir, filepath.Base(m))] = true
			}
		}
		for d := dir; d != "/"; d = filepath.Dir(d) {
			installed[d] = true
		}
	}
	if policyPath == "" || !installed[policyPath] {
		t.Fatalf("README's systemd steps name CELLGATE_POLICY=%q but do not install it (installed %v)", policyPath, installed)
	}
	data, err := os.ReadFile("../../examples/policy.yaml")
	if err != nil {
		t.Fatal(err)
	}
	pol, err := policy.Parse(policyPath, data)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range pol.Routes {
		for _, p := range []string{r.Program, r.Dir} {
			if p != "" && !installed[p] {
				t.Errorf("route %s names %s, which README's systemd steps do not install", r.Name, p)
			}
		}
		if r.Fork != nil && !installed[r.Fork.AppDir] {
			t.Errorf("route %s's app_dir %s is not installed by README's systemd steps", r.Name, r.Fork.AppDir)
		}
	}
}
