package proxy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/textproto"
	"net/url"
	"strconv"
	"strings"
)

// cgiHeader is a worker's CGI response header block (RFC 3875 6), checked.
type cgiHeader struct {
	// Status is the HTTP status: the Status field's, else 302 with a
	// Location, else 200.
	Status int
	// Header holds the fields to send, canonical names, without Status and
	// Content-Length (which the proxy computes itself).
	Header http.Header
	// Location is the Location field, "" without one.
	Location string
	// Local is true for a local redirect response (RFC 3875 6.2.2): a
	// Location that is an absolute path and no other field. It is
	// re-run only when the body is empty too (see localRedirectAhead).
	Local bool
	// ContentLength is the worker's Content-Length, -1 without one.
	ContentLength int64
}

// readCGIHeader reads and checks the header block at the start of a
// worker's output. It reads at most max bytes of header; what follows the
// blank line is left in br. Lines end in LF or CRLF.
//
// Refused (ErrInvalidResponse), because they are malformed or because
// passing them on would let a worker corrupt the connection or other
// requests on it:
//   - no header block: empty output, or output ending before the blank line;
//   - a block larger than max;
//   - a line without ':' or with an empty or non-token name, a continuation
//     line (obsolete folding), a value with CR, NUL or another control
//     character except tab;
//   - hop-by-hop fields (Connection, Keep-Alive, Transfer-Encoding, Upgrade,
//     TE, Trailer, Proxy-*): framing is the proxy's;
//   - Status not "NNN[ reason]" with NNN in 200..599 (1xx would be sent as
//     an interim response); a second Status, Content-Type or Location;
//   - Location neither an absolute path nor an absolute URI;
//   - Content-Length that is not a decimal number;
//   - none of Content-Type, Location and Status.
//
// X-Request-Id is dropped: the proxy sets its own.
// maxFieldName is the longest field name a worker may send. Registered
// names are under 40 bytes; a longer one is a mistake or an attempt to
// make the client (or a proxy behind cellgate) choke, and the whole header
// block's limit alone would let one name take 64 KiB.
const maxFieldName = 256

func readCGIHeader(br *bufio.Reader, max int) (*cgiHeader, error) {
	h := &cgiHeader{Header: make(http.Header), ContentLength: -1}
	var (
		used                     int
		lines                    int
		hasStatus, hasCT, others bool
		line                     []byte
		err                      error
	)
	for {
		var n int
		line, n, err = readLine(br, max-used, line[:0])
		used += n
		if err != nil {
			switch {
			case errors.Is(err, errLineTooLong):
				return nil, fmt.Errorf("%w: header block larger than %d bytes", ErrInvalidResponse, max)
			case err == io.EOF && lines == 0 && len(line) == 0:
				return nil, fmt.Errorf("%w: no output", ErrInvalidResponse)
			case err == io.EOF || err == io.ErrUnexpectedEOF:
				return nil, fmt.Errorf("%w: output ended inside the header block (after %d lines; a blank line must end it)", ErrInvalidResponse, lines)
			default:
				return nil, fmt.Errorf("read CGI header: %w", err)
			}
		}
		if len(line) == 0 {
			break
		}
		lines++
		if line[0] == ' ' || line[0] == '\t' {
			return nil, fmt.Errorf("%w: line %d is a folded continuation line", ErrInvalidResponse, lines)
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return nil, fmt.Errorf("%w: line %d %q is not a header field", ErrInvalidResponse, lines, clip(line))
		}
		rawName := line[:colon]
		if len(rawName) > maxFieldName {
			return nil, fmt.Errorf("%w: line %d: field name of %d bytes, limit %d", ErrInvalidResponse, lines, len(rawName), maxFieldName)
		}
		if !validFieldName(rawName) {
			return nil, fmt.Errorf("%w: line %d: invalid field name %q", ErrInvalidResponse, lines, clip(rawName))
		}
		value := bytes.Trim(line[colon+1:], " \t")
		if !validFieldValue(value) {
			return nil, fmt.Errorf("%w: line %d: control character in the value of %s", ErrInvalidResponse, lines, rawName)
		}
		name := textproto.CanonicalMIMEHeaderKey(string(rawName))
		if hopByHop(name) {
			return nil, fmt.Errorf("%w: hop-by-hop field %s", ErrInvalidResponse, name)
		}
		switch name {
		case "Status":
			if hasStatus {
				return nil, fmt.Errorf("%w: Status given twice", ErrInvalidResponse)
			}
			hasStatus = true
			code, ok := parseStatus(value)
			if !ok {
				return nil, fmt.Errorf("%w: Status %q is not NNN[ reason] with NNN in 200-599", ErrInvalidResponse, clip(value))
			}
			h.Status = code
			others = true
		case "Location":
			if h.Location != "" {
				return nil, fmt.Errorf("%w: Location given twice", ErrInvalidResponse)
			}
			loc := string(value)
			if !validLocation(loc) {
				return nil, fmt.Errorf("%w: Location %q is neither an absolute path nor an absolute URI", ErrInvalidResponse, clip(value))
			}
			h.Location = loc
			h.Header["Location"] = []string{loc}
		case "Content-Length":
			n, err := strconv.ParseInt(string(value), 10, 64)
			if err != nil || n < 0 || (h.ContentLength >= 0 && n != h.ContentLength) {
				return nil, fmt.Errorf("%w: Content-Length %q", ErrInvalidResponse, clip(value))
			}
			h.ContentLength = n
			others = true
		case "X-Request-Id":
			others = true
		default:
			if name == "Content-Type" {
				if hasCT {
					return nil, fmt.Errorf("%w: Content-Type given twice", ErrInvalidResponse)
				}
				if len(value) == 0 {
					return nil, fmt.Errorf("%w: empty Content-Type", ErrInvalidResponse)
				}
				hasCT = true
			}
			others = true
			h.Header[name] = append(h.Header[name], string(value))
		}
	}
	if lines == 0 {
		return nil, fmt.Errorf("%w: empty header block", ErrInvalidResponse)
	}
	if !hasCT && !hasStatus && h.Location == "" {
		return nil, fmt.Errorf("%w: none of Content-Type, Location and Status", ErrInvalidResponse)
	}
	switch {
	case hasStatus:
	case h.Location != "":
		h.Status = http.StatusFound
	default:
		h.Status = http.StatusOK
	}
	h.Local = h.Location != "" && !others && isLocalPath(h.Location)
	return h, nil
}

// errLineTooLong: a header line would take the block past its limit.
var errLineTooLong = errors.New("line too long")

// readLine appends the next line of br to buf, without its LF or CRLF, and
// says how many bytes it read (its CR and LF included: the block's limit
// counts what the worker wrote). At most max bytes are read; a longer line
// is errLineTooLong. A last line without LF returns what there is with
// io.EOF, or io.ErrUnexpectedEOF if there is something.
func readLine(br *bufio.Reader, max int, buf []byte) ([]byte, int, error) {
	for {
		frag, err := br.ReadSlice('\n')
		if len(buf)+len(frag) > max {
			return buf, 0, errLineTooLong
		}
		buf = append(buf, frag...)
		switch {
		case err == nil:
			n := len(buf)
			buf = buf[:n-1]
			if k := len(buf); k > 0 && buf[k-1] == '\r' {
				buf = buf[:k-1]
			}
			return buf, n, nil
		case errors.Is(err, bufio.ErrBufferFull):
			continue
		case err == io.EOF && len(buf) > 0:
			return buf, len(buf), io.ErrUnexpectedEOF
		default:
			return buf, len(buf), err
		}
	}
}

// parseStatus parses a Status value: three digits, then nothing or a space
// and a reason phrase (which is dropped: net/http sends the standard one).
func parseStatus(v []byte) (int, bool) {
	if len(v) < 3 || (len(v) > 3 && v[3] != ' ') {
		return 0, false
	}
	code := 0
	for _, c := range v[:3] {
		if c < '0' || c > '9' {
			return 0, false
		}
		code = code*10 + int(c-'0')
	}
	return code, code >= 200 && code <= 599
}

// validFieldName reports whether b is an RFC 9110 token.
func validFieldName(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if c >= 0x80 || !isTchar[c] {
			return false
		}
	}
	return true
}

// isTchar is RFC 9110's tchar.
var isTchar = func() (t [128]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

// validFieldValue reports whether b has no control character but tab (so no
// CR, LF or NUL) and no DEL.
func validFieldValue(b []byte) bool {
	for _, c := range b {
		if (c < ' ' && c != '\t') || c == 0x7f {
			return false
		}
	}
	return true
}

// hopByHop reports whether the canonical field name describes a connection
// rather than a response.
func hopByHop(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Transfer-Encoding", "Upgrade", "Te", "Trailer":
		return true
	}
	return name == "Proxy" || strings.HasPrefix(name, "Proxy-")
}

// validLocation accepts an absolute path ("/x?y") or an absolute URI with a
// scheme ("https://example.com/"), as RFC 3875 6.3.2 allows.
func validLocation(loc string) bool {
	if loc == "" {
		return false
	}
	u, err := url.Parse(loc)
	if err != nil {
		return false
	}
	return isLocalPath(loc) || u.Scheme != ""
}

// isLocalPath reports whether loc is a path on this server: "/" then not
// "/" or "\" (a browser reads "//host" and "/\host" as another host).
func isLocalPath(loc string) bool {
	return len(loc) > 0 && loc[0] == '/' && (len(loc) == 1 || (loc[1] != '/' && loc[1] != '\\'))
}

// clip shortens a worker's bytes for an error message.
func clip(b []byte) string {
	const n = 64
	if len(b) > n {
		return string(b[:n]) + "..."
	}
	return string(b)
}
