package main

import (
	"bufio"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
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
// "chown .../cgroup.procs: operation not permitted").
func TestServiceUnitCapabilities(t *testing.T) {
	k := unitKeys(t, filepath.Join(unitDir, "cellgate.service"))
	if len(k["CapabilityBoundingSet"]) != 1 {
		t.Fatalf("cellgate.service: CapabilityBoundingSet=%q, want one value", k["CapabilityBoundingSet"])
	}
	have := strings.Fields(k["CapabilityBoundingSet"][0])
	for _, c := range []string{"CAP_SETUID", "CAP_SETGID", "CAP_KILL", "CAP_SYS_ADMIN", "CAP_SYS_CHROOT", "CAP_NET_ADMIN", "CAP_CHOWN"} {
		if !slices.Contains(have, c) {
			t.Errorf("cellgate.service: CapabilityBoundingSet lacks %s (have %v)", c, have)
		}
	}
}
