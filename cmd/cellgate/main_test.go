package main

import (
	"context"
	"os"
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
	os.Exit(m.Run())
}
