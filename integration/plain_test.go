package integration

import (
	"bufio"
	"errors"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

// The front end's HTTP behaviour end to end, with workers as plain child
// processes (--isolation none): these tests need the built binary but no
// cgroup v2 kernel.

// startPlainGate starts cellgate serve --isolation none with the policy.
// Its cgroup base is never made.
func startPlainGate(t *testing.T, policy string, args ...string) *gate {
	t.Helper()
	return startGate(t, gateOptions{policy: policy, base: filepath.Join(t.TempDir(), "no-base"),
		args: append([]string{"--isolation", "none"}, args...)})
}

// shellProgram writes an executable /bin/sh CGI program and returns its
// path.
func shellProgram(t *testing.T, name, body string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), name)
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"+body), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}

// TestGateHead: a CGI program that rightly writes no body for a HEAD
// (RFC 3875 §4.3.2) and gives no length gets a HEAD response without
// Content-Length, not "Content-Length: 0" (RFC 9110 §8.6); one that gives
// its length keeps it; spooled or streamed, no body goes out and the
// connection serves the next request.
func TestGateHead(t *testing.T) {
	prog := shellProgram(t, "head", `printf 'Content-Type: text/plain\n'
[ "$QUERY_STRING" = cl ] && printf 'Content-Length: 30\n'
printf '\n'
[ "$REQUEST_METHOD" = HEAD ] || printf '%029d\n' 0
`)
	g := startPlainGate(t, `version: 1
tenants:
  - {name: web}
routes:
  - {name: spooled, match: {path: /spooled}, tenant: web, program: "`+prog+`"}
  - {name: streamed, match: {path: /streamed}, tenant: web, program: "`+prog+`", response: stream}
`)
	c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	br := bufio.NewReader(c)
	for _, tc := range []struct {
		method, target string
		length         string // the Content-Length wanted, "" for none
	}{
		{"GET", "/spooled", "30"},
		{"HEAD", "/spooled", ""},
		{"GET", "/spooled?cl", "30"},
		{"HEAD", "/spooled?cl", "30"},
		{"HEAD", "/streamed", ""},
		{"HEAD", "/streamed?cl", ""}, // its GET is chunked: no length either
		{"GET", "/streamed", ""},
	} {
		if _, err := io.WriteString(c, tc.method+" "+tc.target+" HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.target, err)
		}
		resp, err := http.ReadResponse(br, &http.Request{Method: tc.method})
		if err != nil {
			t.Fatalf("%s %s: %v", tc.method, tc.target, err)
		}
		body, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s %s: %d, body %q, %v", tc.method, tc.target, resp.StatusCode, body, err)
		}
		if cl := resp.Header.Get("Content-Length"); cl != tc.length {
			t.Errorf("%s %s: Content-Length %q, want %q", tc.method, tc.target, cl, tc.length)
		}
		if want := map[bool]int{true: 0, false: 30}[tc.method == "HEAD"]; len(body) != want {
			t.Errorf("%s %s: %d body bytes, want %d", tc.method, tc.target, len(body), want)
		}
	}
	for route, n := range map[string]int{"spooled": 4, "streamed": 3} {
		for _, r := range g.waitRecords(route, n, 30*time.Second) {
			if r.Status != 200 || r.Outcome != "ok" {
				t.Errorf("record of %s %s: status %d outcome %q", r.Method, r.Path, r.Status, r.Outcome)
			}
		}
	}
}

// okPolicy is a policy whose one route answers "ok" from a shell program.
func okPolicy(t *testing.T) string {
	t.Helper()
	prog := shellProgram(t, "ok", "printf 'Content-Type: text/plain\\n\\nok'\n")
	return `version: 1
tenants:
  - {name: web}
routes:
  - {name: ok, match: {path: /}, tenant: web, program: "` + prog + `"}
`
}

// TestGateKeepAliveSlowloris: a head trickled on a keep-alive connection
// after a complete request is cut by --header-timeout, as on a fresh
// connection, not left to --idle-timeout. The idle timeout is ten
// minutes, longer than the test waits (two minutes, a hang guard): a cut
// before then is the header timeout's. The trickle (a line every 100 ms)
// keeps the head below the front's head limit for those two minutes, so
// that the limit cannot be what cuts it.
func TestGateKeepAliveSlowloris(t *testing.T) {
	const header, idle, guard = 300 * time.Millisecond, 10 * time.Minute, 2 * time.Minute
	g := startPlainGate(t, okPolicy(t), "--header-timeout", header.String(), "--idle-timeout", idle.String())
	for _, first := range []string{"", "GET / HTTP/1.1\r\nHost: x\r\n\r\n"} {
		c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(guard))
		br := bufio.NewReader(c)
		if first != "" {
			io.WriteString(c, first)
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("first request: %v", err)
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
		}
		start := time.Now()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
		type end struct {
			after time.Duration
			err   error
		}
		closed := make(chan end, 1)
		go func() {
			_, err := io.Copy(io.Discard, br)
			closed <- end{time.Since(start), err}
		}()
		tick := time.NewTicker(100 * time.Millisecond)
	trickle:
		for {
			select {
			case e := <-closed:
				// A reset is a cut too: the front closed with the
				// trickle's last lines unread.
				if errors.Is(e.err, os.ErrDeadlineExceeded) {
					t.Errorf("after %q: a trickled head was not cut within %s (--header-timeout %s, --idle-timeout %s)",
						first, guard, header, idle)
				} else {
					t.Logf("after %q: a trickled head was cut after %s (%v)", first, e.after, e.err)
				}
				break trickle
			case <-tick.C:
				io.WriteString(c, "X-A: b\r\n")
			}
		}
		tick.Stop()
	}
}

// TestGateOptionsAsterisk: "OPTIONS *" gets cellgate's answer, a 400 with
// a request id that names its access-log record, and no program runs for
// it, a catch-all route's included.
func TestGateOptionsAsterisk(t *testing.T) {
	g := startPlainGate(t, okPolicy(t))
	c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(60 * time.Second))
	io.WriteString(c, "OPTIONS * HTTP/1.1\r\nHost: x\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	id := resp.Header.Get("X-Request-Id")
	if resp.StatusCode != 400 || id == "" {
		t.Fatalf("OPTIONS *: %d, request id %q", resp.StatusCode, id)
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		for _, r := range g.records() {
			if r.RequestID == id {
				if r.Method != "OPTIONS" || r.Status != 400 || r.Outcome != "bad_request" || r.Route != "" {
					t.Errorf("record %+v", r)
				}
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no access-log record with request id %q", id)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestGateHeadsNetHTTPWouldAnswer: the heads net/http answers itself,
// before any handler, are cellgate's to answer, with a request id that
// names an access-log record: an Expect other than 100-continue gets a
// 417 and the connection closes, the request pipelined behind it never
// answered; an empty line before a request line, on a fresh connection
// or after a GET, is ignored (RFC 9112 §2.2), not a 400.
func TestGateHeadsNetHTTPWouldAnswer(t *testing.T) {
	g := startPlainGate(t, okPolicy(t))
	const get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	for _, tc := range []struct {
		name, in string
		statuses []int
		outcome  string // of the last answer
		closes   bool   // the connection ends after the answers, the rest of in unanswered
	}{
		{"Expect: foo", "POST / HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Length: 2\r\n\r\nhi" + get,
			[]int{417}, "expectation_failed", true},
		{"empty line first", "\r\n" + get, []int{200}, "ok", false},
		{"empty line after a GET", get + "\r\n" + get, []int{200, 200}, "ok", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := net.Dial("tcp", strings.TrimPrefix(g.url, "http://"))
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(60 * time.Second))
			io.WriteString(c, tc.in)
			br := bufio.NewReader(c)
			var got []int
			var ids []string
			for len(got) < len(tc.statuses) {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					break
				}
				io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				got = append(got, resp.StatusCode)
				ids = append(ids, resp.Header.Get("X-Request-Id"))
			}
			if !slices.Equal(got, tc.statuses) {
				t.Fatalf("statuses %v, want %v", got, tc.statuses)
			}
			if tc.closes {
				// Read to the end (the 60 s deadline a hang guard): no
				// answer to the pipelined request, and an end. A reset
				// is an end too (the GET left unread).
				rest, err := io.ReadAll(br)
				if errors.Is(err, os.ErrDeadlineExceeded) {
					t.Errorf("the connection is still open 60 s after the %d", got[len(got)-1])
				}
				if len(rest) > 0 {
					t.Errorf("after the %d the connection carried more: %q; want nothing for the pipelined request", got[len(got)-1], rest)
				}
			}
			for i, id := range ids {
				if id == "" {
					t.Fatalf("the %d has no request id", got[i])
				}
				r := g.waitRecord(id, 30*time.Second)
				if r.Status != got[i] || i == len(ids)-1 && r.Outcome != tc.outcome {
					t.Errorf("record of the %d: status %d outcome %q", got[i], r.Status, r.Outcome)
				}
			}
		})
	}
}

// waitRecord waits for the access-log record with the request id.
func (g *gate) waitRecord(id string, timeout time.Duration) accessRecord {
	g.t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		for _, r := range g.records() {
			if r.RequestID == id {
				return r
			}
		}
		if time.Now().After(deadline) {
			g.t.Fatalf("no access-log record with request id %q after %s", id, timeout)
		}
		time.Sleep(20 * time.Millisecond)
	}
}
