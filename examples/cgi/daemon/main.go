// Command daemon leaves a process behind, the way a careless handler that
// "starts a background job" does: it starts a copy of itself in a new session
// with its standard streams on /dev/null (a double fork: the intermediate
// copy exits at once, so the daemon is orphaned), then answers with the
// daemon's pid and exits. The daemon sleeps for ?s= seconds (default 3600).
// cellgate must kill it with the cell when the response is done.
package main

import (
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"syscall"
	"time"
)

// The role of this copy of the program, passed in argv[1].
const (
	roleMiddle = "cellgate-example-daemon-middle"
	roleDaemon = "cellgate-example-daemon-sleep"
)

func main() {
	if len(os.Args) == 3 {
		switch os.Args[1] {
		case roleMiddle:
			middle(os.Args[2])
			return
		case roleDaemon:
			secs, _ := strconv.Atoi(os.Args[2])
			time.Sleep(time.Duration(secs) * time.Second)
			return
		}
	}
	q, err := url.ParseQuery(os.Getenv("QUERY_STRING"))
	if err != nil {
		fail("parse QUERY_STRING %q: %v", os.Getenv("QUERY_STRING"), err)
	}
	secs := "3600"
	if s := q.Get("s"); s != "" {
		if n, err := strconv.Atoi(s); err != nil || n < 0 {
			fail("query parameter s=%q: want a non-negative integer", s)
		}
		secs = s
	}
	// The middle copy prints the daemon's pid on its stdout, a pipe we read.
	cmd := exec.Command("/proc/self/exe", roleMiddle, secs)
	out, err := cmd.Output()
	if err != nil {
		fail("start middle process: %v", err)
	}
	fmt.Printf("Content-Type: text/plain\r\n\r\ndaemon pid %s\n", out)
}

// middle starts the daemon in a session of its own, prints its pid and exits
// without waiting for it.
func middle(secs string) {
	cmd := exec.Command("/proc/self/exe", roleDaemon, secs)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		fmt.Fprintf(os.Stderr, "start daemon: %v\n", err)
		os.Exit(1)
	}
	fmt.Print(cmd.Process.Pid)
}

func fail(format string, args ...any) {
	fmt.Printf("Status: 500 Internal Server Error\r\nContent-Type: text/plain\r\n\r\n"+format+"\n", args...)
	os.Exit(0)
}
