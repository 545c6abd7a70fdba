package proxy

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// headAware is a fake Runner whose worker writes head, then body unless
// the request is a HEAD (RFC 3875 §4.3.2) or always is set.
func headAware(head, body string, always bool) runFunc {
	return func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		out := head + "\n"
		if always || !slices.Contains(spec.Env, "REQUEST_METHOD=HEAD") {
			out += body
		}
		if _, err := io.WriteString(spec.Stdout, out); err != nil {
			return sandbox.Result{}, err
		}
		return fakeResult(sandbox.CauseOK), nil
	}
}

// TestHeadLength: a HEAD response has the Content-Length a GET's would
// have, or none (RFC 9110 §8.6, §9.3.2): the worker's own, or the length
// of a body it wrote despite the HEAD; never "0" for a worker that rightly
// wrote no body and gave no length. Spooled and streamed, no body goes
// out and the connection stays usable.
func TestHeadLength(t *testing.T) {
	body := strings.Repeat("x", 29) + "\n"
	cases := []struct {
		name   string
		head   string // the worker's header block
		always bool   // the worker writes its body on HEAD too
		stream bool
		getCL  string // Content-Length of the GET's response, "" for none
		headCL string // and of the HEAD's
	}{
		{name: "no length", head: "Content-Type: text/plain\n", getCL: "30"},
		{name: "own length", head: "Content-Type: text/plain\nContent-Length: 30\n", getCL: "30", headCL: "30"},
		{name: "body despite HEAD", head: "Content-Type: text/plain\n", always: true, getCL: "30", headCL: "30"},
		{name: "own length and body", head: "Content-Type: text/plain\nContent-Length: 30\n", always: true, getCL: "30", headCL: "30"},
		{name: "empty body", head: "Content-Type: text/plain\n", always: true, getCL: "0"},
		{name: "no content", head: "Status: 204\n", always: true},
		{name: "reset content", head: "Status: 205\n", always: true, getCL: "0", headCL: "0"},
		// A 304 with the length its 200 would have had (RFC 9110 §8.6),
		// and no body: not a Content-Length the body belies.
		{name: "not modified, own length", head: "Status: 304\nContent-Length: 30\n"},
		{name: "streamed", head: "Content-Type: text/plain\n", stream: true},
		{name: "streamed own length", head: "Content-Type: text/plain\nContent-Length: 30\n", stream: true},
		{name: "streamed body despite HEAD", head: "Content-Type: text/plain\n", always: true, stream: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			rt := route("r", "/r", "/r")
			if tc.stream {
				rt.Response = policy.ResponseStream
			}
			b := body
			if tc.name == "empty body" || strings.HasPrefix(tc.head, "Status: 304") {
				b = ""
			}
			ts := startServer(t, Config{}, Deps{Runner: headAware(tc.head, b, tc.always)}, rt)
			c, err := net.Dial("tcp", ts.Addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			// HEAD, GET, HEAD on one connection: a HEAD response that
			// carried a body would break the framing of the next.
			methods := []string{"HEAD", "GET", "HEAD"}
			br := bufio.NewReader(c)
			for i, m := range methods {
				io.WriteString(c, m+" /r HTTP/1.1\r\nHost: x\r\n\r\n")
				req := &http.Request{Method: m}
				resp, err := http.ReadResponse(br, req)
				if err != nil {
					t.Fatalf("%s (%d): %v", m, i+1, err)
				}
				got, err := io.ReadAll(resp.Body)
				resp.Body.Close()
				if err != nil {
					t.Fatalf("%s (%d) body: %v", m, i+1, err)
				}
				cl, hasCL := resp.Header["Content-Length"]
				want := tc.getCL
				if m == "HEAD" {
					want = tc.headCL
					if len(got) != 0 {
						t.Errorf("HEAD (%d): body %q", i+1, got)
					}
					if te := resp.Header.Get("Transfer-Encoding"); te != "" || len(resp.TransferEncoding) != 0 {
						t.Errorf("HEAD (%d): Transfer-Encoding %q %q", i+1, te, resp.TransferEncoding)
					}
				} else if bodyAllowed(resp.StatusCode) && string(got) != b {
					t.Errorf("GET: body %q", got)
				}
				switch {
				case want == "" && hasCL:
					t.Errorf("%s (%d): Content-Length %q, want none", m, i+1, cl)
				case want != "" && (!hasCL || cl[0] != want):
					t.Errorf("%s (%d): Content-Length %q, want %s", m, i+1, cl, want)
				}
				if resp.Close {
					t.Fatalf("%s (%d): connection closed", m, i+1)
				}
				rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader))
				if rec.Status != resp.StatusCode || (m == "HEAD" && rec.BytesOut != 0) {
					t.Errorf("%s (%d): record status %d bytes out %d", m, i+1, rec.Status, rec.BytesOut)
				}
			}
		})
	}
}
