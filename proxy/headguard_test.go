package proxy

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"os"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/net/http/httpguts"
)

// Requests of the smuggling probes. Each probe is followed on the same
// connection by next, a normal request.
const (
	next   = "GET /next HTTP/1.1\r\nHost: x\r\n\r\n"
	hidden = "GET /hidden HTTP/1.1\r\nHost: x\r\n\r\n"
)

// guardCase is raw bytes sent on one connection and what must come back.
type guardCase struct {
	name string
	in   string
	// statuses are the responses expected, in order; after them the
	// connection must be closed unless open is set.
	statuses []int
	open     bool
}

var guardCases = []guardCase{
	{"keep-alive, both framings and none", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello" +
		"POST /b HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nT: v\r\n\r\n" +
		next, []int{200, 200, 200}, true},
	{"CL then TE", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG" + next,
		[]int{400}, false},
	{"TE then CL", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG" + next,
		[]int{400}, false},
	{"TE through obs-fold", "POST /a HTTP/1.1\r\nHost: x\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden + next,
		[]int{400}, false},
	{"TE after a bare LF", "POST /a HTTP/1.1\r\nHost: x\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden + next,
		[]int{400}, false},
	{"bare CR in a field line", "POST /a HTTP/1.1\r\nHost: x\r\nX: y\rTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden + next,
		[]int{400}, false},
	{"bare LF ends the head", "GET /a HTTP/1.1\r\nHost: x\n\n" + next, []int{400}, false},
	{"space before the colon", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n" + hidden + next,
		[]int{400}, false},
	{"TE not chunked", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"TE in HTTP/1.0", "POST /a HTTP/1.0\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"two Content-Lengths", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\nContent-Length: 6\r\n\r\nG" + next,
		[]int{400}, false},
	{"Content-Length with a sign", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nG" + next,
		[]int{400}, false},
	{"second head bad after a good one", "GET /a HTTP/1.1\r\nHost: x\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: x\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + hidden + next,
		[]int{200, 400}, false},
	{"chunk size line with a bare LF", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"chunk longer than its size", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1\r\nGET /hidden\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"head over the limit", "GET /a HTTP/1.1\r\nHost: x\r\nX: " + strings.Repeat("a", 24<<10) + "\r\n\r\n" + next,
		[]int{431}, false},
	// A chunked body's Trailer may not announce a framing field: net/http
	// answers that itself (400, no request id, no record); elsewhere, and
	// other names, pass.
	{"Trailer: Content-Length on a chunked body", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: Content-Length\r\n\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"Trailer naming Transfer-Encoding in a list", "POST /a HTTP/1.1\r\nHost: x\r\ntrailer: x-a , transfer-encoding\t\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"Trailer: trailer", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTRAILER: Trailer\r\n\r\n0\r\n\r\n" + next,
		[]int{400}, false},
	{"Trailers net/http admits", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTrailer: X-Sum, Content-Lengths, Trailers, content length\r\nTrailerx: Trailer\r\n\r\n0\r\nX-Sum: 1\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nTrailer: Content-Length\r\n\r\n" + next, []int{200, 200, 200}, true},
	// A malformed trailer section fails its request with a 400 and ends the
	// connection (not a client gone: net/http's trailer reader hides the
	// refusal behind its own error).
	{"obs-fold in the trailer section", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: a\r\n b\r\n\r\n" + next,
		[]int{400}, false},
	{"bare LF ending the trailer section", "POST /a HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\n" + next,
		[]int{400}, false},

	// Heads net/http would answer itself, with no request id and no
	// record: an Expect other than 100-continue (417); an empty line
	// before a request line, but for one right after a POST (400).
	{"Expect other than 100-continue", "POST /a HTTP/1.1\r\nHost: x\r\nExpect: foo\r\nContent-Length: 5\r\n\r\nhello" + next,
		[]int{417}, false},
	{"Expect beside 100-continue", "GET /a HTTP/1.1\r\nHost: x\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\nEXPECT:  100-continue, foo \r\n\r\n" + next,
		[]int{200, 417}, false},
	{"Expect 100-continue in HTTP/1.0", "GET /a HTTP/1.0\r\nHost: x\r\nConnection: keep-alive\r\nExpect: 100-Continue\r\n\r\n" + next,
		[]int{200, 200}, true},
	{"empty line before the first request", "\r\n" + next, []int{200}, true},
	{"empty lines after a GET", "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\n" + hidden + "\r\n\r\n" + next,
		[]int{200, 200, 200}, true},
	{"empty line after a POST", "POST /a HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello\r\n" + next,
		[]int{200, 200}, true},
	{"three empty lines", "GET /a HTTP/1.1\r\nHost: x\r\n\r\n\r\n\r\n\r\n" + next, []int{200, 400}, false},
	// net/http's own 400s of a Host field and a target's path.
	{"no Host in HTTP/1.1", "GET /a HTTP/1.1\r\nX: y\r\n\r\n" + next, []int{400}, false},
	{"no Host after a good request", next + "GET /a HTTP/1.1\r\n\r\n" + next, []int{200, 400}, false},
	{"two Host fields", "GET /a HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n" + next, []int{400}, false},
	{"Host with a space inside", "GET /a HTTP/1.1\r\nHost: x y\r\n\r\n" + next, []int{400}, false},
	{"Host with a byte no host has", "GET /a HTTP/1.1\r\nHost: x<y\r\n\r\n" + next, []int{400}, false},
	{"Host with obs-text", "GET /a HTTP/1.1\r\nHost: \xe9x\r\n\r\n" + next, []int{400}, false},
	{"bad escape in the path", "GET /a%zz HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"escape cut short by the query", "GET /a%4?x HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"escape cut short by the line", "GET /a% HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	// net/http's own 400s of an absolute-form (or CONNECT's authority-form)
	// target url.ParseRequestURI refuses.
	{"absolute-form, bad escape in the host", "GET http://x%zz/a HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"absolute-form, bad port", "GET http://x:8o/a HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"absolute-form, two colons in an http host", "GET http://x:1:2/a HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"absolute-form, IPv4 in brackets", "GET https://[127.0.0.1]/ HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"absolute-form, bad escape in the path", "GET http://x/a/b%z/c HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"absolute-form, escape cut by a slash", "GET http:/a%2/b HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"no scheme and no path", "GET x/a HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"scheme starting with a digit", "GET 1http://x/ HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"asterisk and more", "OPTIONS *x HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"asterisk and a query", "OPTIONS *?x HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	// net/http makes an absolute-form target's authority the host; the
	// bytes the Host field may not hold are refused there too.
	{"absolute form, a bad host", "GET http://<svg>\"x/ HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"absolute form, a good host", "GET http://y/a HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{200, 200}, true},
	{"absolute form without a path", "GET http://y HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{200, 200}, true},
	{"opaque absolute form", "GET x:admin HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	{"another scheme without a path", "GET mailto:a@b HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{400}, false},
	// What routing and SERVER_NAME would read two ways.
	{"host: text after the brackets", "GET / HTTP/1.1\r\nHost: [admin.example.com]junk\r\n\r\n" + next, []int{400}, false},
	{"host: two colons", "GET / HTTP/1.1\r\nHost: admin.example.com:80:\r\n\r\n" + next, []int{400}, false},
	{"host: a name in brackets", "GET / HTTP/1.1\r\nHost: [admin.example.com]\r\n\r\n" + next, []int{400}, false},
	{"host: IPv6 with a port", "GET / HTTP/1.1\r\nHost: [2001:db8::1]:8080\r\n\r\n" + next, []int{200, 200}, true},
	{"host: a name with a port", "GET / HTTP/1.1\r\nHost: a.example:8080\r\n\r\n" + next, []int{200, 200}, true},
	{"host: an empty port", "GET / HTTP/1.1\r\nHost: a.example:\r\n\r\n" + next, []int{200, 200}, true},
	{"CONNECT, bad port", "CONNECT x:y:z HTTP/1.1\r\n\r\n" + next, []int{400}, false},
	{"CONNECT, bad escape after the authority", "CONNECT x:1/%zz HTTP/1.1\r\n\r\n" + next, []int{400}, false},
	{"absolute-form, over its limit", "GET http://a/" + strings.Repeat("a", maxAbsTarget) + " HTTP/1.1\r\nHost: x\r\n\r\n" + next,
		[]int{400}, false},
	{"what net/http admits of absolute-form", "GET http://x:80/%41/b?%zz/c HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET HTTP://u:p%41@[::1%25en0]:/a/b/c/%42 HTTP/1.1\r\nHost: x\r\n\r\n" +
		"GET http:/a/b/c/d%41 HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{200, 200, 200, 200}, true},
	// CONNECT, whatever its target, runs no program: a front proxy that
	// forwarded it and read a 2xx would tunnel what follows past its own
	// checks (RFC 9112 §6.3). It is a 501, and the connection ends: the
	// GET after it is never read as a request.
	{"CONNECT", "CONNECT /a%41 HTTP/1.1\r\nHost: x\r\n\r\n" + next, []int{501}, false},
	{"CONNECT without a Host", "CONNECT /a HTTP/1.1\r\n\r\n" + next, []int{501}, false},
	{"CONNECT authority-form", "CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n" + next, []int{501}, false},
	{"what net/http admits of them", "GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n" +
		"GET /%41%c3%a9?%zz HTTP/1.1\r\nHost:  [::1]:80 \t\r\n\r\n" +
		"GET /b?q=%4 HTTP/1.1\r\nHost:\r\n\r\n" + next, []int{200, 200, 200, 200}, true},
}

// exchangeRaw writes in on a new connection (plain or TLS), reads n
// responses, and then tells whether the server closed the connection. On
// one it keeps open a further request (GET /extra) is answered, its
// access-log record proving that the answer is that request's, not a
// hidden one's; on one it closes the stream ends with nothing more
// answered. An answer that is not /extra's is returned among the
// responses. The reads have a hang guard of a minute, which fails the
// test: silence is never taken for an answer.
func exchangeRaw(t *testing.T, ts *testServer, pool *x509.CertPool, in string, n int) (resps []*http.Response, closed bool) {
	t.Helper()
	var c net.Conn
	var err error
	if pool != nil {
		c, err = tls.Dial("tcp", ts.Addr, &tls.Config{RootCAs: pool, NextProtos: []string{"http/1.1"}})
	} else {
		c, err = net.Dial("tcp", ts.Addr)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := io.WriteString(c, in); err != nil {
		t.Fatalf("write: %v", err)
	}
	br := bufio.NewReader(c)
	// read returns the next response, or nil once the server closed.
	read := func(what string) *http.Response {
		t.Helper()
		c.SetReadDeadline(time.Now().Add(time.Minute))
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			if errors.Is(err, os.ErrDeadlineExceeded) {
				t.Fatalf("%s: neither answered nor closed within a minute (after %d responses)", what, len(resps))
			}
			return nil // the end of the stream, or a reset: closed
		}
		if _, err := io.Copy(io.Discard, resp.Body); err != nil {
			t.Fatalf("read body: %v", err)
		}
		return resp
	}
	for i := range n {
		resp := read(fmt.Sprintf("response %d", i+1))
		if resp == nil {
			return resps, true
		}
		resps = append(resps, resp)
	}
	if _, err := io.WriteString(c, "GET /extra HTTP/1.1\r\nHost: x\r\n\r\n"); err != nil {
		return resps, true // refused: closed
	}
	resp := read("a further request")
	if resp == nil {
		return resps, true
	}
	if id := resp.Header.Get(RequestIDHeader); id == "" || ts.recs.byID(t, id).Path != "/extra" {
		return append(resps, resp), false
	}
	return resps, false
}

// guardServer is a server whose every route answers 200 "ok".
func guardServer(t testing.TB, cfg Config) *testServer {
	return startServer(t, cfg, Deps{Runner: cgiOutput("Content-Type: text/plain\n\nok", sandbox.CauseOK)}, route("all", "/", "/x"))
}

// TestRequestSmuggling: probes of request smuggling, each followed by a
// normal request on one keep-alive connection, over plain TCP and TLS: a
// refused head gets a 400 (431 when too large, 417 for an expectation)
// with a request id and an access-log record, the connection is closed,
// and nothing after the refused head is ever answered. Every answer,
// refusals and the requests served alike, is cellgate's, never one of
// net/http's own: each has a request id and a record.
func TestRequestSmuggling(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	for _, mode := range []struct {
		name string
		cfg  Config
		pool *x509.CertPool
	}{
		{"tcp", Config{}, nil},
		{"tls", Config{TLSCertFile: certFile, TLSKeyFile: keyFile}, pool},
	} {
		ts := guardServer(t, mode.cfg)
		for _, tt := range guardCases {
			t.Run(mode.name+"/"+tt.name, func(t *testing.T) {
				resps, closed := exchangeRaw(t, ts, mode.pool, tt.in, len(tt.statuses))
				var got []int
				for _, r := range resps {
					got = append(got, r.StatusCode)
				}
				if !slices.Equal(got, tt.statuses) || closed == tt.open {
					t.Fatalf("got statuses %v, closed %v; want %v, closed %v", got, closed, tt.statuses, !tt.open)
				}
				for _, r := range resps {
					id := r.Header.Get(RequestIDHeader)
					if id == "" {
						t.Fatalf("no request id on the %d", r.StatusCode)
					}
					if rec := ts.recs.byID(t, id); rec.Status != r.StatusCode {
						t.Errorf("access log has status %d for the %d", rec.Status, r.StatusCode)
					}
				}
				last := resps[len(resps)-1]
				if !tt.open && !last.Close {
					t.Errorf("the %d does not say Connection: close", last.StatusCode)
				}
			})
		}
	}
}

// TestRequestSmugglingHTTP2: HTTP/2 over TLS is served as before (it
// bypasses the HTTP/1 check).
func TestRequestSmugglingHTTP2(t *testing.T) {
	certFile, keyFile, pool := writeCert(t)
	ts := guardServer(t, Config{TLSCertFile: certFile, TLSKeyFile: keyFile})
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}
	defer tr.CloseIdleConnections()
	resp, body := do(t, &http.Client{Transport: tr}, newRequest(t, "GET", ts.URL+"/", nil))
	if resp.StatusCode != 200 || resp.ProtoMajor != 2 || body != "ok" || resp.TLS == nil {
		t.Fatalf("got %d %s %q", resp.StatusCode, resp.Proto, body)
	}
}

// TestFrameCheckSplits: frameCheck reaches the same verdict, hands on the
// same bytes and drops the same ones however the stream is cut into reads.
func TestFrameCheckSplits(t *testing.T) {
	for _, tt := range guardCases {
		t.Run(tt.name, func(t *testing.T) {
			whole := newFrameCheck(20 << 10)
			_, wantFree, wantErr := whole.feed([]byte(tt.in))
			k := newFrameCheck(20 << 10)
			released, held := 0, 0
			var gotErr *frameError
			for i := 0; i < len(tt.in) && gotErr == nil; i++ {
				n, free, err := k.feed([]byte{tt.in[i]})
				if free > 0 {
					released += held + free
					held = 0
				} else if err == nil {
					held += n // 0: an empty line's byte, dropped
				}
				gotErr = err
			}
			if (gotErr == nil) != (wantErr == nil) || gotErr != nil && *gotErr != *wantErr {
				t.Fatalf("byte by byte: err %v, whole: %v", gotErr, wantErr)
			}
			if released != wantFree {
				t.Fatalf("byte by byte handed on %d bytes, whole %d", released, wantFree)
			}
		})
	}
}

// FuzzRequestHead: whatever a client sends, cellgate never answers more
// requests than a strict reading of the bytes finds (refRequests), plus
// one answer to the first request it refuses: no bytes become a request
// that a strict front end would not see.
func FuzzRequestHead(f *testing.F) {
	for _, tt := range guardCases {
		f.Add([]byte(tt.in))
	}
	f.Add([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n\r\n\r\n" + next))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc" + next))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n0\r\nX: y\nTransfer-Encoding: chunked\r\n\r\n" + next))
	ts := guardServer(f, Config{})
	f.Fuzz(func(t *testing.T, in []byte) {
		in = append(in, end...)
		out := exchangeBytes(t, ts, in)
		answers := bytes.Count(out, []byte("HTTP/1.1 ")) - bytes.Count(out, []byte("HTTP/1.1 100 "))
		if max := refRequests(in) + 1; answers > max {
			t.Fatalf("%d responses to at most %d requests in %q:\n%s", answers, max, in, out)
		}
	})
}

// end is the last request of every fuzz input: it closes the connection
// when the bytes before it are framed as a strict reading frames them.
const end = "GET /end HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"

// exchangeBytes writes in on a new connection and returns all that comes
// back until the server closes it, or a second after nothing more came.
func exchangeBytes(t *testing.T, ts *testServer, in []byte) []byte {
	t.Helper()
	c, err := net.Dial("tcp", ts.Addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	go c.Write(in) // the server may stop reading before the end
	var out []byte
	buf := make([]byte, 32<<10)
	for {
		c.SetReadDeadline(time.Now().Add(time.Second))
		n, err := c.Read(buf)
		out = append(out, buf[:n]...)
		if err != nil {
			return out
		}
	}
}

// refRequests counts the requests at the start of b that a strict reading
// of RFC 9112 finds complete and well framed, with no expectation but
// 100-continue. It is written apart from
// frameCheck, line by line with regular expressions, so that the fuzz
// target compares two readings.
func refRequests(b []byte) int {
	b = ascii(b)
	n := 0
	for {
		for i := 0; i < maxEmptyLead && bytes.HasPrefix(b, []byte("\r\n")); i++ {
			b = b[2:]
		}
		end := bytes.Index(b, []byte("\r\n\r\n"))
		if end < 0 {
			return n
		}
		lines := strings.Split(string(b[:end]), "\r\n")
		b = b[end+4:]
		if !reqLine.MatchString(lines[0]) {
			return n
		}
		// What net/http refuses of a request line and Host fields
		// itself: a target url.ParseRequestURI refuses (and, stricter,
		// one not in origin form over maxAbsTarget), a Host value
		// httpguts.ValidHostHeader refuses, more than one Host, and
		// none in HTTP/1.1 but for CONNECT.
		method, target, _ := strings.Cut(lines[0], " ")
		target, version, _ := strings.Cut(target, " ")
		parsed := target
		if method == "CONNECT" && !strings.HasPrefix(target, "/") {
			parsed = "http://" + target // as net/http reads an authority-form target
		}
		if _, err := url.ParseRequestURI(parsed); err != nil || !strings.HasPrefix(target, "/") && len(target) > maxAbsTarget {
			return n
		}
		hosts := 0
		var cl, te []string
		badTrailer := false
		for _, l := range lines[1:] {
			if !fieldLine.MatchString(l) {
				return n
			}
			name, value, _ := strings.Cut(l, ":")
			value = strings.Trim(value, " \t")
			switch strings.ToLower(name) {
			case "content-length":
				cl = append(cl, value)
			case "transfer-encoding":
				te = append(te, value)
			case "expect":
				if value != "" && !strings.EqualFold(value, "100-continue") {
					return n
				}
			case "host":
				hosts++
				if !httpguts.ValidHostHeader(value) {
					return n
				}
			case "trailer":
				for _, name := range strings.Split(value, ",") {
					switch textproto.CanonicalMIMEHeaderKey(strings.Trim(name, " \t")) {
					case "Content-Length", "Transfer-Encoding", "Trailer":
						badTrailer = true
					}
				}
			}
		}
		if hosts > 1 || hosts == 0 && version == "HTTP/1.1" && method != "CONNECT" {
			return n
		}
		switch {
		case len(cl) > 1, len(te) > 1, len(cl) == 1 && len(te) == 1:
			return n
		case len(te) == 1:
			if !strings.EqualFold(te[0], "chunked") || strings.HasSuffix(lines[0], "1.0") || badTrailer {
				return n
			}
			rest, ok := refChunked(b)
			if !ok {
				return n
			}
			b = rest
		case len(cl) == 1:
			if !digits.MatchString(cl[0]) {
				return n
			}
			size, _ := strconv.ParseInt(cl[0], 10, 64)
			if int64(len(b)) < size {
				return n
			}
			b = b[size:]
		}
		n++
	}
}

var (
	// Bytes over 0x7f (obs-text) are read as '"' (see ascii): allowed
	// where VCHAR is, not in tokens.
	reqLine   = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+ [\x21-\x7e]+ HTTP/1\\.[01]$")
	fieldLine = regexp.MustCompile("^[!#$%&'*+.^_`|~0-9A-Za-z-]+:[\t\x20-\x7e]*$")
	chunkLine = regexp.MustCompile("^([0-9a-fA-F]{1,15})(;[\t\x20-\x7e]*)?$")
	digits    = regexp.MustCompile(`^[0-9]{1,18}$`)
)

// ascii returns b with every byte over 0x7f replaced by '"'.
func ascii(b []byte) []byte {
	out := make([]byte, len(b))
	for i, c := range b {
		if c > 0x7f {
			c = '"'
		}
		out[i] = c
	}
	return out
}

// refChunked skips a strict chunked body and its trailer section.
func refChunked(b []byte) ([]byte, bool) {
	for {
		eol := bytes.Index(b, []byte("\r\n"))
		if eol < 0 {
			return nil, false
		}
		m := chunkLine.FindStringSubmatch(string(b[:eol]))
		if m == nil {
			return nil, false
		}
		b = b[eol+2:]
		size, _ := strconv.ParseInt(m[1], 16, 64)
		if size == 0 {
			break
		}
		if int64(len(b)) < size+2 || string(b[size:size+2]) != "\r\n" {
			return nil, false
		}
		b = b[size+2:]
	}
	for {
		eol := bytes.Index(b, []byte("\r\n"))
		if eol < 0 {
			return nil, false
		}
		line := string(b[:eol])
		b = b[eol+2:]
		if line == "" {
			return b, true
		}
		if !fieldLine.MatchString(line) {
			return nil, false
		}
	}
}

// TestGuardConnByteByByte: a client that sends one byte per read gets the
// same stream through guardConn as one that sends everything at once: good
// requests whole without the empty lines before them, a refused head
// replaced by the rejection request and the end of the stream.
func TestGuardConnByteByByte(t *testing.T) {
	reject := func(ferr *frameError) []byte { return rejection("token", ferr) }
	for _, tt := range guardCases {
		t.Run(tt.name, func(t *testing.T) {
			k := newFrameCheck(20 << 10)
			b := []byte(tt.in)
			_, free, ferr := k.feed(b)
			want := string(b[:free])
			if ferr != nil && ferr.Head {
				want += string(reject(ferr))
			}
			client, server := net.Pipe()
			go func() {
				for i := 0; i < len(tt.in); i++ {
					if _, err := client.Write([]byte{tt.in[i]}); err != nil {
						return
					}
				}
				client.Close()
			}()
			g := newGuardConn(server, 20<<10, 0, reject)
			defer g.Close()
			got, err := io.ReadAll(g)
			if ferr != nil && !ferr.Head && !errors.Is(err, errFraming) {
				t.Fatalf("refused body: read error %v, want errFraming", err)
			}
			if string(got) != want {
				t.Fatalf("handed on\n%q\nwant\n%q", got, want)
			}
		})
	}
}

// readerConn is a net.Conn that reads from r and writes nowhere.
type readerConn struct {
	net.Conn
	r io.Reader
}

func (c readerConn) Read(p []byte) (int, error) { return c.r.Read(p) }

// BenchmarkGuardConn measures guardConn on a keep-alive stream of requests
// (a GET, a POST with a 1 KiB Content-Length body, a chunked POST) read
// through a 4 KiB buffer as net/http's bufio.Reader does: bytes per second
// and allocations per request stream (none are expected).
func BenchmarkGuardConn(b *testing.B) {
	one := "GET /a?x=1 HTTP/1.1\r\nHost: example.com\r\nUser-Agent: bench\r\nAccept: */*\r\nCookie: " + strings.Repeat("c", 300) + "\r\n\r\n" +
		"POST /b HTTP/1.1\r\nHost: example.com\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + strings.Repeat("b", 1024) +
		"POST /c HTTP/1.1\r\nHost: example.com\r\nTransfer-Encoding: chunked\r\n\r\n400\r\n" + strings.Repeat("c", 1024) + "\r\n0\r\n\r\n"
	stream := []byte(strings.Repeat(one, 100))
	buf := make([]byte, 4096)
	reject := func(ferr *frameError) []byte { b.Fatalf("refused: %v", ferr); return nil }
	b.SetBytes(int64(len(stream)))
	b.ReportAllocs()
	for b.Loop() {
		g := newGuardConn(readerConn{r: bytes.NewReader(stream)}, 20<<10, 0, reject)
		for {
			if _, err := g.Read(buf); err != nil {
				break
			}
		}
	}
}

// FuzzFrameCheck: frameCheck and refRequests, two strict readings written
// apart, find the same number of complete requests in any bytes, and
// frameCheck keeps the same bytes (drops the same empty lines) fed at
// once as fed byte by byte.
func FuzzFrameCheck(f *testing.F) {
	for _, tt := range guardCases {
		f.Add([]byte(tt.in))
	}
	f.Add([]byte("\r\n\r\nGET / HTTP/1.0\r\n\r\n"))
	f.Add([]byte("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: CHUNKED \r\n\r\n1;a=\"b\"\r\nx\r\n0\r\nA: b\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		k := newFrameCheck(1 << 20) // refRequests has no size limit
		done := 0
		idle := true
		var kept []byte
		for _, c := range in {
			n, _, err := k.feed([]byte{c})
			if err != nil {
				break
			}
			kept = append(kept, []byte{c}[:n]...)
			now := k.st == stHead && k.headLen == 0
			if now && !idle {
				done++
			}
			idle = now
		}
		if want := refRequests(in); done != want {
			t.Fatalf("frameCheck found %d complete requests, the reference %d, in %.2000q", done, want, in)
		}
		whole := newFrameCheck(1 << 20)
		b := bytes.Clone(in)
		n, _, _ := whole.feed(b)
		if !bytes.Equal(b[:n], kept) {
			t.Fatalf("fed at once, frameCheck kept\n%.2000q\nbyte by byte\n%.2000q", b[:n], kept)
		}
	})
}

// TestFrameCheckTargets: frameCheck admits a request target exactly when
// net/http's reading of it, url.ParseRequestURI (after "http://" for a
// CONNECT target not starting with '/'), does; fed whole and byte by
// byte.
func TestFrameCheckTargets(t *testing.T) {
	for _, tt := range []struct {
		method, target string
		ok             bool
	}{
		{"GET", "/a%41?%zz", true},
		{"GET", "*", true},
		{"OPTIONS", "*x", false},
		{"OPTIONS", "*?x", false},
		{"GET", "*?", false},
		{"GET", "http://x/a%41", true},
		{"GET", "http://x?y/%zz", true}, // the query ends the authority
		{"GET", "http://x/?y/%zz", true},
		{"GET", "http:x/a%zz", true}, // opaque: url reads no path
		{"GET", "mailto:a/b/c/%zz", true},
		{"GET", "http:/a/b/c/%4", false},
		{"GET", "http:/a%/b", false},
		{"GET", "http://x%zz/", false},
		{"GET", "http://x:1:2/", false},
		{"GET", "foo://x:1:2/", true}, // colons in hosts of other schemes
		{"GET", "http://[::1%25eth0]:80/", true},
		{"GET", "http://[127.0.0.1]/", false},
		{"GET", "http://u%zz@x/", false},
		{"GET", "http://u:p@x/", true},
		{"GET", "1x://y/", false},
		{"GET", ":x", false},
		{"GET", "x", false},
		{"GET", "a/b:c", false},
		{"GET", "a/b/c/d", false},
		{"GET", "ab?c:d", false},
		{"CONNECT", "x:443", true},
		{"CONNECT", "x:y:z", false},
		{"CONNECT", "x:1/%zz", false},
		{"CONNECT", "x:1?/%zz", true},
		{"CONNECT", "/a%zz", false},
		{"CONNECT", strings.Repeat("a", maxAbsTarget), true},
		{"CONNECT", strings.Repeat("a", maxAbsTarget+1), false},
		{"GET", "http://" + strings.Repeat("a", maxAbsTarget-8) + "/", true},
		{"GET", "http://" + strings.Repeat("a", maxAbsTarget-7) + "/", false}, // over maxAbsTarget: stricter than net/http
		{"GET", "http://a/" + strings.Repeat("a", maxAbsTarget-9), true},
		{"GET", "http://a/" + strings.Repeat("a", maxAbsTarget-8), false},
		{"GET", "http://a?" + strings.Repeat("a", maxAbsTarget-8), false},
		{"GET", "/" + strings.Repeat("a", maxAbsTarget), true},
	} {
		parsed := tt.target
		if tt.method == "CONNECT" && !strings.HasPrefix(parsed, "/") {
			parsed = "http://" + parsed
		}
		if _, err := url.ParseRequestURI(parsed); (err == nil) != tt.ok && len(tt.target) <= maxAbsTarget {
			t.Fatalf("%s %s: url.ParseRequestURI says %v, the case %v", tt.method, tt.target, err, tt.ok)
		}
		head := tt.method + " " + tt.target + " HTTP/1.1\r\nHost: x\r\n\r\n"
		whole := newFrameCheck(16 << 10)
		_, _, err := whole.feed([]byte(head))
		if (err == nil) != tt.ok {
			t.Errorf("%s %.40s: frameCheck says %v, want admitted %v", tt.method, tt.target, err, tt.ok)
		}
		k := newFrameCheck(16 << 10)
		var byByte *frameError
		for i := 0; i < len(head) && byByte == nil; i++ {
			_, _, byByte = k.feed([]byte{head[i]})
		}
		if (byByte == nil) != (err == nil) {
			t.Errorf("%s %.40s: byte by byte %v, whole %v", tt.method, tt.target, byByte, err)
		}
	}
}

// TestFrameCheckDropsEmptyLines: the empty lines before a request line,
// up to maxEmptyLead, are taken out of the bytes fed, wherever they fall
// in them, and a head after them is held as any other.
func TestFrameCheckDropsEmptyLines(t *testing.T) {
	const get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"
	const post = "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n\r\n" // its body: an empty line
	for _, tt := range []struct {
		name, in, kept string
		free           int
	}{
		{"first", "\r\n" + get, get, len(get)},
		{"two first", "\r\n\r\n" + get, get, len(get)},
		{"between", get + "\r\n" + get + "\r\n\r\n" + get, get + get + get, 3 * len(get)},
		{"before an incomplete head", get + "\r\n\r\nGET /", get + "GET /", len(get)},
		{"after the last head", get + "\r\n", get, len(get)},
		{"a body's, kept", post + "\r\n" + get, post + get, len(post + get)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			for _, size := range []int{len(tt.in), 1, 2, 3} {
				k := newFrameCheck(1 << 10)
				var kept []byte
				free := 0
				for in := []byte(tt.in); len(in) > 0; {
					b := in[:min(size, len(in))]
					in = in[len(b):]
					n, f, err := k.feed(b)
					if err != nil {
						t.Fatalf("reads of %d: %v", size, err)
					}
					if f > 0 {
						free = len(kept) + f
					}
					kept = append(kept, b[:n]...)
				}
				if string(kept) != tt.kept || free != tt.free {
					t.Fatalf("reads of %d: kept %q, %d free; want %q, %d", size, kept, free, tt.kept, tt.free)
				}
			}
		})
	}
}

// TestKeepAliveHeadTimeout: a head trickled on a keep-alive connection,
// after a first complete request, is cut within the header timeout from
// its first byte, as on a fresh connection, not after the idle timeout:
// net/http starts its header timeout only once the head is whole, which
// the guard holds back. An idle connection still waits the idle timeout
// for its next request, and a head trickled behind a running request
// does not cut that request short. The idle timeout is ten minutes,
// longer than any wait here (two minutes, a hang guard): a connection
// cut before then was cut by the header timeout.
func TestKeepAliveHeadTimeout(t *testing.T) {
	const header, idle, guard = 300 * time.Millisecond, 10 * time.Minute, 2 * time.Minute
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		if spec.Path == "/slow" {
			select {
			case <-time.After(3 * header):
			case <-ctx.Done():
				return fakeResult(sandbox.CauseKilled), nil
			}
		}
		io.WriteString(spec.Stdout, "Content-Type: text/plain\n\nok")
		return fakeResult(sandbox.CauseOK), nil
	})
	ts := startServer(t, Config{ReadHeaderTimeout: header, IdleTimeout: idle}, Deps{Runner: runner},
		route("fast", "/", "/fast"), route("slow", "/slow", "/slow"))
	const get = "GET / HTTP/1.1\r\nHost: x\r\n\r\n"

	// dial opens a connection and sends first, if any, whole.
	dial := func(t *testing.T, first string) (net.Conn, *bufio.Reader) {
		c, err := net.Dial("tcp", ts.Addr)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		c.SetDeadline(time.Now().Add(guard))
		if first != "" {
			io.WriteString(c, first)
		}
		return c, bufio.NewReader(c)
	}
	// answer reads a response and checks it is a whole 200.
	answer := func(t *testing.T, br *bufio.Reader) *http.Response {
		t.Helper()
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("read response: %v", err)
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil || resp.StatusCode != 200 || string(body) != "ok" {
			t.Fatalf("response %d %q %v", resp.StatusCode, body, err)
		}
		return resp
	}
	// trickle sends a head's start and then a field line every 100 ms
	// until the server closes the connection, and returns how long after
	// the head's first byte that was; it fails the test when the hang
	// guard ends the wait instead. The head stays below the head limit
	// (MaxHeaderBytes) for the guard's two minutes: the limit cannot be
	// what cuts it.
	trickle := func(t *testing.T, c net.Conn, br *bufio.Reader) time.Duration {
		t.Helper()
		start := time.Now()
		io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n")
		type end struct {
			after time.Duration
			err   error
		}
		closed := make(chan end, 1)
		go func() {
			_, err := io.Copy(io.Discard, br) // until the server closes (or the guard)
			closed <- end{time.Since(start), err}
		}()
		tick := time.NewTicker(100 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case e := <-closed:
				// A reset is a cut too: the server closed with the
				// trickle's last lines unread.
				if errors.Is(e.err, os.ErrDeadlineExceeded) {
					t.Fatalf("a trickled head was not cut within %s (header timeout %s, idle timeout %s)", guard, header, idle)
				}
				return e.after
			case <-tick.C:
				io.WriteString(c, "X-A: b\r\n")
			}
		}
	}

	t.Run("fresh connection", func(t *testing.T) {
		c, br := dial(t, "")
		t.Logf("a head trickled on a fresh connection was cut after %s", trickle(t, c, br))
	})
	t.Run("after a request", func(t *testing.T) {
		c, br := dial(t, get)
		answer(t, br)
		// Not before the header timeout either: only later than it can a
		// slow machine make the cut.
		if d := trickle(t, c, br); d < header/2 {
			t.Fatalf("a head trickled on a keep-alive connection was cut after %s, before the header timeout %s", d, header)
		}
	})
	t.Run("idle then a request", func(t *testing.T) {
		c, br := dial(t, get)
		answer(t, br)
		time.Sleep(3 * header) // idle, sending nothing: not a head
		io.WriteString(c, get)
		answer(t, br)
	})
	t.Run("behind a running request", func(t *testing.T) {
		c, br := dial(t, "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n")
		time.Sleep(header / 3)                  // the handler runs, net/http reads in the background
		io.WriteString(c, "GET / HTTP/1.1\r\n") // pipelined, and never finished
		resp := answer(t, br)
		if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Status != 200 || rec.Outcome != accounting.OutcomeOK {
			t.Fatalf("the running request: record status %d outcome %s", rec.Status, rec.Outcome)
		}
		start := time.Now()
		if _, err := io.Copy(io.Discard, br); err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				t.Fatalf("the unfinished pipelined head was not cut: connection still open after %s (header timeout %s, idle timeout %s)", time.Since(start), header, idle)
			}
		}
	})
}
