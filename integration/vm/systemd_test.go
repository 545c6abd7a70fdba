package vm

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestSystemdGuestUnits runs systemd's parser over the units the systemd
// guest installs (systemd-analyze verify), with the wrapper's path pointed
// at a binary that exists. systemd ignores a line it cannot parse and
// boots on: any complaint fails.
func TestSystemdGuestUnits(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed (apt-get install systemd)")
	}
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	var units []string
	for name, text := range systemdUnits {
		if strings.Contains(name, "/") {
			continue // not a unit (manager or tmpfiles configuration)
		}
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(strings.ReplaceAll(text, systemdVMRun, self)), 0o644); err != nil {
			t.Fatal(err)
		}
		units = append(units, p)
	}
	if len(units) != 2 {
		t.Fatalf("units %v, want the program's service and its target", units)
	}
	out, err := exec.Command(analyze, append([]string{"verify", "--man=no"}, units...)...).CombinedOutput()
	if err != nil || len(out) > 0 {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}
