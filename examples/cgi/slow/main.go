// Command slow sleeps ?ms= milliseconds (default 1000) before it answers,
// then writes ?bytes= bytes of body (default a short line). It stands for a
// handler waiting on something else, and with a large body it gives the
// slow-reader tests a response that cannot fit in socket buffers.
package main

import (
	"bufio"
	"fmt"
	"net/url"
	"os"
	"strconv"
	"time"
)

func main() {
	q, err := url.ParseQuery(os.Getenv("QUERY_STRING"))
	if err != nil {
		fail("parse QUERY_STRING %q: %v", os.Getenv("QUERY_STRING"), err)
	}
	ms, err := intParam(q, "ms", 1000, 600_000)
	if err != nil {
		fail("%v", err)
	}
	size, err := intParam(q, "bytes", -1, 1<<30)
	if err != nil {
		fail("%v", err)
	}
	time.Sleep(time.Duration(ms) * time.Millisecond)
	w := bufio.NewWriterSize(os.Stdout, 64<<10)
	defer w.Flush()
	if size < 0 {
		fmt.Fprintf(w, "Content-Type: text/plain\r\n\r\nslept %d ms\n", ms)
		return
	}
	fmt.Fprintf(w, "Content-Type: application/octet-stream\r\nContent-Length: %d\r\n\r\n", size)
	line := []byte("0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.\n")
	for size > 0 {
		n := min(size, len(line))
		w.Write(line[:n])
		size -= n
	}
}

// intParam returns the integer query parameter name within [0, max], or def
// when it is absent.
func intParam(q url.Values, name string, def, max int) (int, error) {
	s := q.Get(name)
	if s == "" {
		return def, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 || n > max {
		return 0, fmt.Errorf("query parameter %s=%q: want an integer from 0 to %d", name, s, max)
	}
	return n, nil
}

func fail(format string, args ...any) {
	fmt.Printf("Status: 400 Bad Request\r\nContent-Type: text/plain\r\n\r\n"+format+"\n", args...)
	os.Exit(0)
}
