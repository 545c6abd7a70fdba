// Command memhog allocates ?mb= MiB (default 64) and touches every page of
// it, so the memory is really charged to its cell; then it holds it for
// ?hold= milliseconds (default 0) and answers with what it took. With a
// cell memory limit below the request, the kernel OOM-kills it.
package main

import (
	"fmt"
	"net/url"
	"os"
	"runtime/debug"
	"strconv"
	"time"
)

func main() {
	q, err := url.ParseQuery(os.Getenv("QUERY_STRING"))
	if err != nil {
		fail("parse QUERY_STRING %q: %v", os.Getenv("QUERY_STRING"), err)
	}
	mb, err := intParam(q, "mb", 64)
	if err != nil {
		fail("%v", err)
	}
	hold, err := intParam(q, "hold", 0)
	if err != nil {
		fail("%v", err)
	}
	// The hog is the point: keep the collector from returning anything.
	debug.SetGCPercent(-1)
	buf := make([]byte, mb<<20)
	for i := 0; i < len(buf); i += 4096 {
		buf[i] = byte(i)
	}
	time.Sleep(time.Duration(hold) * time.Millisecond)
	fmt.Printf("Content-Type: text/plain\r\n\r\nallocated and touched %d MiB, held %d ms (last byte %d)\n", mb, hold, buf[len(buf)-4096])
}

// intParam returns the non-negative integer query parameter name, or def
// when it is absent.
func intParam(q url.Values, name string, def int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > 1<<20 {
		return 0, fmt.Errorf("query parameter %s=%q: want an integer from 0 to %d", name, s, 1<<20)
	}
	return n, nil
}

func fail(format string, args ...any) {
	fmt.Printf("Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n"+format+"\n", args...)
	os.Exit(0)
}
