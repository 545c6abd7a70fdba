// Command spin burns ?ms= milliseconds (default 100) of its own CPU time,
// measured with getrusage, then answers. Under a cpu.max cap the same work
// takes longer in wall time, which is what the tenant-isolation tests rely
// on: the work is fixed, the scheduler decides when it runs.
package main

import (
	"fmt"
	"net/url"
	"os"
	"strconv"
	"syscall"
	"time"
)

func main() {
	q, err := url.ParseQuery(os.Getenv("QUERY_STRING"))
	if err != nil {
		fail("parse QUERY_STRING %q: %v", os.Getenv("QUERY_STRING"), err)
	}
	ms := 100
	if s := q.Get("ms"); s != "" {
		ms, err = strconv.Atoi(s)
		if err != nil || ms < 0 || ms > 600_000 {
			fail("query parameter ms=%q: want an integer from 0 to 600000", s)
		}
	}
	want := time.Duration(ms) * time.Millisecond
	start := cpuTime()
	x := uint64(1)
	for cpuTime()-start < want {
		for i := 0; i < 20000; i++ {
			x = x*6364136223846793005 + 1442695040888963407
		}
	}
	fmt.Printf("Content-Type: text/plain\r\n\r\nspun %d ms of CPU (%x)\n", ms, x>>60)
}

// cpuTime is the user+system CPU time the process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		fail("getrusage: %v", err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

func fail(format string, args ...any) {
	fmt.Printf("Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n"+format+"\n", args...)
	os.Exit(0)
}
