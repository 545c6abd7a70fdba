package integration

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
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
