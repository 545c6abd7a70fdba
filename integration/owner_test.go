package integration

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// Issue 12, item 1: one owner per cgroup base. A second `cellgate serve`
// on a live instance's base is refused, naming the owner's pid, and
// leaves the owner's cells alone; the owner keeps serving and stays
// ready. When the owner's tree is removed under it, /readyz says so.
func TestOwnerOneInstancePerBase(t *testing.T) {
	// No cells set up ahead: the test removes the tree by hand, which an
	// idle warm cell's init would keep populated.
	g := startGate(t, gateOptions{policy: gatePolicy, args: []string{"--warm-cells", "0", "--resident-cells", "0"}})
	if status, _, body := g.get("/hello"); status != 200 {
		t.Fatalf("GET /hello: %d %q", status, body)
	}

	dir := t.TempDir()
	second := exec.Command(cellgateBin(t), "serve",
		"--policy", g.policyPath,
		"--listen", "127.0.0.1:0",
		"--admin", "127.0.0.1:0",
		"--cgroup-base", g.base,
		"--access-log", filepath.Join(dir, "access.log"),
	)
	second.Stdout = io.Discard
	var stderr strings.Builder
	second.Stderr = &stderr
	done := make(chan error, 1)
	if err := second.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { done <- second.Wait() }()
	select {
	case err := <-done:
		var exit *exec.ExitError
		if !errors.As(err, &exit) || exit.ExitCode() == 0 {
			t.Fatalf("second serve on the same base: %v, want a refusal:\n%s", err, stderr.String())
		}
	case <-time.After(2 * time.Minute):
		second.Process.Kill()
		<-done
		t.Fatalf("second serve on the same base did not exit:\n%s", stderr.String())
	}
	if want := fmt.Sprintf("pid %d", g.cmd.Process.Pid); !strings.Contains(stderr.String(), want) {
		t.Errorf("second serve's refusal does not name the owner (%s):\n%s", want, stderr.String())
	}
	if !exists(g.tenantDir("web")) {
		t.Fatalf("the refused instance removed the owner's tenant group %s", g.tenantDir("web"))
	}
	for i := 0; i < 3; i++ {
		if status, _, body := g.get("/hello"); status != 200 {
			t.Fatalf("owner's GET /hello after the refusal: %d %q\n%s", status, body, g.log())
		}
	}
	if status, body := g.adminGet("/readyz"); status != 200 {
		t.Fatalf("owner's /readyz after the refusal: %d %q", status, body)
	}

	// The tree removed under the owner (by hand, as an older release's
	// second instance did): not ready, and the reason says why.
	removeGroups(t, filepath.Join(g.base, "cells"))
	status, body := g.adminGet("/readyz")
	if status != 503 || !strings.Contains(body, "gone") {
		t.Fatalf("/readyz with the tree gone: %d %q, want 503 naming the tree gone", status, body)
	}
}

// removeGroups removes the cgroup dir and everything under it, deepest
// first (the groups must be empty of processes), retrying while a pool
// refill races the removal.
func removeGroups(t *testing.T, dir string) {
	t.Helper()
	for try := 0; try < 50; try++ {
		var dirs []string
		filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, p)
			}
			return nil
		})
		if len(dirs) == 0 {
			return
		}
		for i := len(dirs) - 1; i >= 0; i-- {
			os.Remove(dirs[i])
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("could not remove %s", dir)
}

// adminGet GETs a path on the admin listener.
func (g *gate) adminGet(path string) (int, string) {
	g.t.Helper()
	resp, err := g.client.Get(g.admin + path)
	if err != nil {
		g.t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		g.t.Fatalf("GET %s: %v", path, err)
	}
	return resp.StatusCode, string(b)
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}
