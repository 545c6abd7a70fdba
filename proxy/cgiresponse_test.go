package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"reflect"
	"strings"
	"testing"
)

func TestReadCGIHeader(t *testing.T) {
	tests := []struct {
		name       string
		out        string
		max        int // 0 = 1024
		wantErr    string
		wantStatus int
		wantHeader http.Header
		wantLocal  bool
		wantCL     int64
		wantRest   string
	}{
		{
			name:       "content type only",
			out:        "Content-Type: text/plain\n\nbody",
			wantStatus: 200, wantHeader: http.Header{"Content-Type": {"text/plain"}}, wantCL: -1, wantRest: "body",
		},
		{
			name:       "CRLF lines, status with reason, extra fields, repeated Set-Cookie",
			out:        "Status: 404 Not Here\r\nContent-Type: text/html\r\nset-cookie: a=1\r\nSet-Cookie: b=2\r\nX-Thing:  spaced \t\r\n\r\nrest",
			wantStatus: 404,
			wantHeader: http.Header{"Content-Type": {"text/html"}, "Set-Cookie": {"a=1", "b=2"}, "X-Thing": {"spaced"}},
			wantCL:     -1, wantRest: "rest",
		},
		{
			name:       "status alone",
			out:        "Status: 204\n\n",
			wantStatus: 204, wantHeader: http.Header{}, wantCL: -1,
		},
		{
			name:       "local redirect",
			out:        "Location: /other?x=1\n\n",
			wantStatus: 302, wantHeader: http.Header{"Location": {"/other?x=1"}}, wantLocal: true, wantCL: -1,
		},
		{
			name:       "local path with other fields is a client redirect",
			out:        "Location: /other\nStatus: 301 Moved\n\n",
			wantStatus: 301, wantHeader: http.Header{"Location": {"/other"}}, wantCL: -1,
		},
		{
			name:       "client redirect",
			out:        "Location: https://example.com/x\n\n",
			wantStatus: 302, wantHeader: http.Header{"Location": {"https://example.com/x"}}, wantCL: -1,
		},
		{
			name:       "client redirect with document",
			out:        "Location: https://example.com/x\nStatus: 303 See Other\nContent-Type: text/html\n\n<a>",
			wantStatus: 303, wantHeader: http.Header{"Location": {"https://example.com/x"}, "Content-Type": {"text/html"}}, wantCL: -1, wantRest: "<a>",
		},
		{
			name:       "content length kept aside",
			out:        "Content-Type: text/plain\nContent-Length: 4\n\nbody",
			wantStatus: 200, wantHeader: http.Header{"Content-Type": {"text/plain"}}, wantCL: 4, wantRest: "body",
		},
		{
			name:       "worker's X-Request-Id dropped",
			out:        "Content-Type: text/plain\nX-Request-Id: forged\n\n",
			wantStatus: 200, wantHeader: http.Header{"Content-Type": {"text/plain"}}, wantCL: -1,
		},
		{name: "no output", out: "", wantErr: "no output"},
		{name: "body without header", out: "hello world\n", wantErr: "not a header field"},
		{name: "blank line first", out: "\nhello", wantErr: "empty header block"},
		{name: "header block not ended", out: "Content-Type: text/plain\n", wantErr: "ended inside the header block"},
		{name: "last line without newline", out: "Content-Type: text/plain", wantErr: "ended inside the header block"},
		{name: "none of the three", out: "X-Foo: bar\n\n", wantErr: "none of Content-Type, Location and Status"},
		{name: "CR inside a value", out: "Content-Type: text/plain\rSet-Cookie: x=1\n\n", wantErr: "control character"},
		{name: "NUL in a value", out: "Content-Type: text/pl\x00ain\n\n", wantErr: "control character"},
		{name: "folded line", out: "Content-Type: text/plain\n X-More: 1\n\n", wantErr: "folded"},
		{name: "space in name", out: "Content Type: text/plain\n\n", wantErr: "invalid field name"},
		{name: "name over the limit", out: "X-" + strings.Repeat("n", 8<<10) + ": v\nContent-Type: text/plain\n\n", max: 64 << 10,
			wantErr: "field name of 8194 bytes, limit 256"},
		{name: "name at the limit", out: "X-" + strings.Repeat("n", 254) + ": v\nContent-Type: text/plain\n\n",
			wantStatus: 200, wantHeader: http.Header{"Content-Type": {"text/plain"}, "X-" + strings.Repeat("N", 1) + strings.Repeat("n", 253): {"v"}}, wantCL: -1},
		{name: "empty name", out: ": x\nContent-Type: text/plain\n\n", wantErr: "not a header field"},
		{name: "non-ASCII name", out: "Cönt: x\nContent-Type: text/plain\n\n", wantErr: "invalid field name"},
		{name: "Transfer-Encoding", out: "Content-Type: text/plain\nTransfer-Encoding: chunked\n\n", wantErr: "hop-by-hop"},
		{name: "Connection", out: "Content-Type: text/plain\nConnection: close\n\n", wantErr: "hop-by-hop"},
		{name: "Upgrade", out: "Content-Type: text/plain\nupgrade: h2c\n\n", wantErr: "hop-by-hop"},
		{name: "Keep-Alive", out: "Content-Type: text/plain\nKeep-Alive: 5\n\n", wantErr: "hop-by-hop"},
		{name: "TE", out: "Content-Type: text/plain\nTE: trailers\n\n", wantErr: "hop-by-hop"},
		{name: "Trailer", out: "Content-Type: text/plain\nTrailer: X\n\n", wantErr: "hop-by-hop"},
		{name: "Proxy-Authenticate", out: "Content-Type: text/plain\nProxy-Authenticate: Basic\n\n", wantErr: "hop-by-hop"},
		{name: "status 1xx", out: "Status: 101 Switching\n\n", wantErr: "Status"},
		{name: "status 600", out: "Status: 600\n\n", wantErr: "Status"},
		{name: "status not numeric", out: "Status: OK\n\n", wantErr: "Status"},
		{name: "status without space", out: "Status: 200OK\n\n", wantErr: "Status"},
		{name: "status twice", out: "Status: 200\nStatus: 500\n\n", wantErr: "Status given twice"},
		{name: "content type twice", out: "Content-Type: a/b\nContent-Type: c/d\n\n", wantErr: "Content-Type given twice"},
		{name: "empty content type", out: "Content-Type:\n\n", wantErr: "empty Content-Type"},
		{name: "location twice", out: "Location: /a\nLocation: /b\n\n", wantErr: "Location given twice"},
		{name: "relative location", out: "Location: other\n\n", wantErr: "neither an absolute path"},
		{name: "protocol-relative location", out: "Location: //evil.example/\n\n", wantErr: "neither an absolute path"},
		{name: "bad content length", out: "Content-Type: a/b\nContent-Length: -1\n\n", wantErr: "Content-Length"},
		{name: "header block too large", out: "Content-Type: text/plain\nX-Big: " + strings.Repeat("x", 2000) + "\n\n", wantErr: "larger than 1024"},
		{name: "many small lines too large", out: strings.Repeat("X-A: 1\n", 200) + "Content-Type: a/b\n\n", wantErr: "larger than 1024"},
		// The limit counts the CRs of CRLF lines: 1,061 bytes written
		// were read as 929 before, a block of two-byte lines up to 1.33x
		// the limit.
		{name: "CRLF lines too large", out: "Content-Type: a/b\r\n" + strings.Repeat("X-A: 1\r\n", 130) + "\r\n", wantErr: "larger than 1024"},
		{name: "CRLF block one over the limit", out: "Content-Type: a/b\r\nX-Big: " + strings.Repeat("x", 995) + "\r\n\r\n", wantErr: "larger than 1024"},
		{name: "CRLF block at the limit", out: "Content-Type: a/b\r\nX-Big: " + strings.Repeat("x", 994) + "\r\n\r\n",
			wantStatus: 200, wantHeader: http.Header{"Content-Type": {"a/b"}, "X-Big": {strings.Repeat("x", 994)}}, wantCL: -1},
		{name: "LF block at the limit", out: "Content-Type: a/b\nX-Big: " + strings.Repeat("x", 997) + "\n\n",
			wantStatus: 200, wantHeader: http.Header{"Content-Type": {"a/b"}, "X-Big": {strings.Repeat("x", 997)}}, wantCL: -1},
		{name: "LF block one over the limit", out: "Content-Type: a/b\nX-Big: " + strings.Repeat("x", 998) + "\n\n", wantErr: "larger than 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			max := tt.max
			if max == 0 {
				max = 1024
			}
			// A small buffer makes long lines span several ReadSlice calls.
			br := bufio.NewReaderSize(strings.NewReader(tt.out), 16)
			h, err := readCGIHeader(br, max)
			if tt.wantErr != "" {
				if err == nil {
					t.Fatalf("no error, want one with %q (got %+v)", tt.wantErr, h)
				}
				if !errors.Is(err, ErrInvalidResponse) || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("error %q, want ErrInvalidResponse with %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("error %v", err)
			}
			if h.Status != tt.wantStatus || h.Local != tt.wantLocal || h.ContentLength != tt.wantCL {
				t.Errorf("status %d local %v content-length %d, want %d %v %d", h.Status, h.Local, h.ContentLength, tt.wantStatus, tt.wantLocal, tt.wantCL)
			}
			if !reflect.DeepEqual(h.Header, tt.wantHeader) {
				t.Errorf("header %v, want %v", h.Header, tt.wantHeader)
			}
			rest, _ := io.ReadAll(br)
			if string(rest) != tt.wantRest {
				t.Errorf("rest %q, want %q", rest, tt.wantRest)
			}
		})
	}
}

// FuzzReadCGIHeader: whatever a worker writes, an accepted header holds
// nothing that could corrupt the connection: no CR, LF or NUL, no
// hop-by-hop field, a status net/http sends as a final response, and never
// more than the limit read.
func FuzzReadCGIHeader(f *testing.F) {
	for _, seed := range []string{
		"Content-Type: text/plain\n\nbody",
		"Status: 302\r\nLocation: /x\r\n\r\n",
		"Location: https://e.example/\n\n",
		"Content-Type: a\rb\n\n",
		"X: 1\nTransfer-Encoding: chunked\nContent-Type: a/b\n\n",
		"Status: 99\n\n",
		"",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		const max = 512
		cr := &countingReader{r: bytes.NewReader(out)}
		h, err := readCGIHeader(bufio.NewReaderSize(cr, 16), max)
		// The header is read through a 16-byte buffer: one buffer past the
		// limit at most.
		if cr.n > max+16 {
			t.Fatalf("read %d bytes for a %d-byte header limit", cr.n, max)
		}
		if err != nil {
			if h != nil {
				t.Fatalf("header %+v with error %v", h, err)
			}
			return
		}
		if h.Status < 200 || h.Status > 599 {
			t.Fatalf("status %d accepted", h.Status)
		}
		for k, vv := range h.Header {
			if !validFieldName([]byte(k)) || hopByHop(k) || k == "Status" || k == "Content-Length" {
				t.Fatalf("field %q accepted", k)
			}
			for _, v := range vv {
				if strings.ContainsAny(v, "\r\n\x00") {
					t.Fatalf("value %q of %s accepted", v, k)
				}
			}
		}
		if h.Local && !isLocalPath(h.Location) {
			t.Fatalf("local redirect to %q", h.Location)
		}
	})
}

// countingReader counts the bytes read through it.
type countingReader struct {
	r io.Reader
	n int
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	return n, err
}
