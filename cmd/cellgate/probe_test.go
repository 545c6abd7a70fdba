package main

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// TestSpawnSelf: the probe runs the binary itself (here the test binary,
// playing cellgate) into a group, and needs nothing else on the file
// system.
func TestSpawnSelf(t *testing.T) {
	t.Setenv(asCellgate, "1") // the child is cellgate help, not the tests again
	mount, err := cgroup2Mount()
	if err != nil || os.Geteuid() != 0 {
		t.Skip("needs root and a cgroup2 mount to spawn into (the integration tests probe through serve)")
	}
	dir, err := os.MkdirTemp(mount, "cellgate-probe-test-")
	if err != nil {
		t.Skipf("cannot create a group under %s: %v", mount, err)
	}
	defer os.Remove(dir)
	fd, err := unix.Open(dir, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	if err := spawnSelf(fd); err != nil {
		t.Fatalf("spawnSelf into %s: %v", filepath.Base(dir), err)
	}
}
