package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"testing"
)

// asCellgate, set in a child's environment, makes the test binary run as
// cellgate (its arguments are cellgate's) instead of running the tests: it
// is how the tests give serve inherited fds (socket activation) and
// signals without touching the test process. It stays set, so that what
// such a child spawns of itself (/proc/self/exe, spawnSelf) is cellgate
// too, never another run of the tests.
const asCellgate = "CELLGATE_TEST_AS_CELLGATE"

func TestMain(m *testing.M) {
	if os.Getenv(asCellgate) == "1" {
		if os.Getenv("LISTEN_FDS") != "" {
			// systemd sets LISTEN_PID to the pid it execs; the parent
			// could not know it before the fork.
			os.Setenv("LISTEN_PID", strconv.Itoa(os.Getpid()))
		}
		std := stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr, environ: os.Environ()}
		os.Exit(dispatch(context.Background(), os.Args[1:], std))
	}
	// The tests open their temporary directories to the cells; the
	// machine's own temporary directory must come out as it went in (a
	// /tmp left 0755 keeps apt's sandbox user from writing there).
	tmp := os.TempDir()
	before, err := os.Stat(tmp)
	code := m.Run()
	if after, err2 := os.Stat(tmp); err == nil && err2 == nil && after.Mode() != before.Mode() {
		fmt.Fprintf(os.Stderr, "FAIL: the tests changed %s from %v to %v\n", tmp, before.Mode(), after.Mode())
		os.Chmod(tmp, before.Mode().Perm()|before.Mode()&(os.ModeSticky|os.ModeSetuid|os.ModeSetgid))
		code = 1
	}
	os.Exit(code)
}

// openToCells opens dir and its parents below the machine's temporary
// directory (t.TempDir's are 0700) to the cells, as a deployed program's
// directories are; the temporary directory itself is left as it is.
func openToCells(t *testing.T, dir string) {
	t.Helper()
	for d := dir; d != os.TempDir() && d != filepath.Dir(d); d = filepath.Dir(d) {
		if err := os.Chmod(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
}
