package proxy

import (
	"net/url"
	"strconv"

	"golang.org/x/net/http/httpguts"
)

// frameCheck follows the bytes a client sends on one HTTP/1.x connection,
// request after request, and says where each request head starts and ends
// and whether it is one that net/http and every proxy in front of cellgate
// read alike (RFC 9112). It exists because net/http's parser is lenient
// where leniency is request smuggling: it joins obs-fold continuation lines
// into the field above, takes a bare LF as a line end, and honours
// Transfer-Encoding beside Content-Length by dropping the latter. A front
// end that reads the same bytes differently sees a different second
// request. frameCheck refuses those heads instead (guardConn answers them
// with a 400 and closes), and tracks each admitted request's body framing
// (Content-Length or chunked) so that it knows where the next head starts.
//
// It also takes from net/http the heads that net/http would answer itself,
// before any handler, with no request id and no record: an Expect other
// than 100-continue is refused here (417), and so are (400) an HTTP/1.1
// request without a Host field but CONNECT, more than one Host field, a
// Host value with a byte net/http refuses (httpguts.ValidHostHeader:
// whitespace inside it, a control byte, '"', '<', '{' ...), a chunked
// request whose Trailer field names Content-Length, Transfer-Encoding or
// Trailer, and a target
// url.ParseRequestURI refuses, as net/http reads it: one whose path (up to
// the first '?') has a '%' not followed by two hex digits, and one that is
// neither a path nor '*' nor an absolute URI with a valid scheme, host
// and port (a CONNECT target not starting with '/' read after "http://");
// the empty lines that may precede a request line (RFC 9112 §2.2;
// net/http skips them only after a POST, and answers a 400 otherwise) are
// dropped, never handed on.
//
// It is a pure state machine over bytes, one byte at a time except inside
// body data, which it skips by count; it holds no buffer and allocates
// nothing, but for a target not in origin form (absolute-form, '*',
// CONNECT's authority-form: rare from clients that are not proxies), whose
// start up to its path it copies to ask url.ParseRequestURI about it; such
// a target may be maxAbsTarget bytes long, no more. Being stricter than
// net/http everywhere is the point: a request it admits is framed by
// net/http exactly as here, and one it refuses never reaches net/http.
type frameCheck struct {
	maxHead int // largest head, leading empty lines included

	st      frameState
	trailer bool  // the field lines are a chunked body's trailer section
	headLen int   // bytes of the head (or trailer section) so far
	lead    int   // empty lines before the request line
	n       int   // bytes of the current token (method, target, version, name, chunk line)
	remain  int64 // body or chunk data bytes still to come

	// The head's framing fields, and the field whose value is being read.
	http10    bool
	connect   bool       // the method read so far is a prefix of CONNECT
	path      bool       // the target's path is being read (origin form, or after an absolute URI's authority) and not yet ended by '?'
	pct       int8       // hex digits still due of a percent-escape in the path
	notOrigin bool       // the target is not in origin form
	abs       *absTarget // its start, while copied
	// Fields seen of Host, Content-Length, Transfer-Encoding: a second is
	// refused as it comes.
	hostCount, clCount, teCount int8
	hostWS                      bool // whitespace after a byte of the Host value
	teChunked                   bool
	// Trailer: the name read so far may be "trailer" (its initial is
	// transfer-encoding's); the element of its value being read
	// (trailerNames still possible, its length, whitespace after it);
	// and whether an element named one of trailerNames, which net/http
	// answers itself (400) on a chunked request.
	trailerName   bool
	tokMask       uint8
	tokLen        uint8
	tokWS         bool
	badTrailer    bool
	field         fieldKind
	cand          fieldKind // the field whose name the name read so far begins (fieldNames), or fieldOther
	cl            int64
	val           [16]byte
	valLen        int // bytes of val used; past len(val) the value is too long to matter
	valDigits     int // Content-Length: digits seen; -1 once OWS followed them
	chunkHexCount int
}

type frameState uint8

const (
	stHead      frameState = iota // before a request line: nothing of the head yet
	stLeadLF                      // CR of an empty line before the request line
	stMethod                      // method token
	stTarget                      // request-target
	stVersion                     // HTTP-version
	stLineLF                      // CR at the end of a line (request or field)
	stFieldLine                   // start of a field line or of the empty line
	stName                        // field name
	stValue                       // field value
	stEndLF                       // CR of the empty line that ends the head
	stBody                        // Content-Length body data
	stChunkSize                   // chunk size
	stChunkExt                    // chunk extensions
	stChunkLF                     // CR after the chunk-size line
	stChunkData                   // chunk data
	stChunkCR                     // CRLF after the chunk data
	stChunkDataLF
)

type fieldKind uint8

const (
	fieldOther fieldKind = iota
	fieldCL
	fieldTE
	fieldExpect
	fieldHost
	fieldTrailer // named by trailerName, not fieldByInitial
)

// trailerNames are the fields a Trailer field may not name on a chunked
// request: net/http refuses it (400) before any handler.
var trailerNames = [...]string{"content-length", "transfer-encoding", "trailer"}

const allTrailerNames = 1<<len(trailerNames) - 1

// Limits of the chunked coding, as net/http's: a chunk-size line up to
// 4 KiB; sizes of at most 15 hex digits, so that every size fits an int64.
const (
	maxChunkLine   = 4096
	maxChunkDigits = 15
	maxEmptyLead   = 2    // empty lines dropped before a request line (RFC 9112 §2.2); a third is refused
	maxAbsTarget   = 4096 // a target not in origin form (the copy of its start, absByte, is no longer)
)

// frameError is a request that frameCheck refuses. Head is set when the
// bytes belong to a request head (nothing of it has reached net/http: the
// client gets an answer); otherwise they are in a body that net/http is
// reading, and its read fails.
type frameError struct {
	Head   bool
	Status int    // a refused head's status when not 400: 431 (over maxHead), 417 (Expect)
	Reason string // fixed text, never the client's bytes
}

func (e *frameError) Error() string {
	if e.Head {
		return "malformed request head: " + e.Reason
	}
	return "malformed request body framing: " + e.Reason
}

// StatusCode is the status the client gets for a refused head.
func (e *frameError) StatusCode() int {
	if e.Status != 0 {
		return e.Status
	}
	return 400
}

func newFrameCheck(maxHead int) frameCheck { return frameCheck{maxHead: maxHead} }

// inHead reports whether bytes of a request head that is not complete yet
// have been examined, from its method on: they must be held back from
// net/http until the head is complete and found good. The empty lines
// before a request line are dropped, not held.
func (k *frameCheck) inHead() bool {
	return k.st >= stMethod && k.st <= stEndLF && !k.trailer
}

// feed examines b, the bytes that follow everything fed before, and drops
// from it the empty lines before a request line: the bytes after them are
// moved down in place, and b[:n] is what is left. free is the number of
// leading bytes of b[:n] after which no head was in progress: those bytes,
// and every byte held back before them, may go to net/http now; the rest
// of b[:n] belongs to a head still incomplete. On error, free bytes of
// b[:n] precede the refused head (or the point where a body went wrong)
// and may still go; nothing after them may.
func (k *frameCheck) feed(b []byte) (n, free int, err *frameError) {
	i := 0
	// dropped bytes so far; the kept bytes b[:moved] are in their place,
	// those of b[moved+dropped:i] still to move down.
	dropped, moved := 0, 0
	for i < len(b) && err == nil {
		if k.st == stBody || k.st == stChunkData {
			m := int(min(k.remain, int64(len(b)-i)))
			i += m
			k.remain -= int64(m)
			if k.remain == 0 {
				if k.st == stBody {
					k.nextHead()
				} else {
					k.st = stChunkCR
				}
			}
			free = i - dropped
			continue
		}
		if m := k.run(b[i:]); m > 0 {
			i += m
			k.headLen += m
			if k.headLen > k.maxHead {
				err = k.tooLarge()
			} else if !k.inHead() {
				free = i - dropped // a trailer section's bytes
			}
			continue
		}
		lead := k.st == stLeadLF || k.st == stHead && b[i] == '\r'
		if err = k.step(b[i]); err != nil {
			break
		}
		i++
		if lead {
			// The bytes kept since the last drop move down, each once.
			if dropped > 0 {
				moved += copy(b[moved:], b[moved+dropped:i-1])
			} else {
				moved = i - 1
			}
			dropped++
		} else if !k.inHead() {
			free = i - dropped
		}
	}
	if dropped > 0 {
		copy(b[moved:], b[moved+dropped:i])
	}
	return i - dropped, free, err
}

// run returns how many leading bytes of b are plain bytes of a request
// target or of a field value that does not frame the body: the bulk of a
// head (cookies, user agents, long URLs), taken in one loop rather than a
// step each. 0 in any other state, or before a byte step must see.
func (k *frameCheck) run(b []byte) int {
	n := 0
	switch k.st {
	case stTarget:
		switch {
		case k.n == 0 || k.pct > 0 || k.abs != nil:
			return 0 // the target's first byte, an escape's digits, an absolute URI's start: step's
		case k.path: // up to a '%' or the '?', which are step's
			for n < len(b) && b[n] > ' ' && b[n] != 0x7f && b[n] != '%' && b[n] != '?' {
				n++
			}
		default:
			for n < len(b) && b[n] > ' ' && b[n] != 0x7f {
				n++
			}
		}
		k.n += n
	case stName:
		if k.cand != fieldOther || k.trailerName {
			return 0 // a name step follows (fieldNames, "trailer")
		}
		for n < len(b) && tchar(b[n]) {
			n++
		}
		k.n += n
	case stValue:
		switch {
		case k.field == fieldOther:
			for n < len(b) && (b[n] >= ' ' && b[n] != 0x7f || b[n] == '\t') {
				n++
			}
		case k.field == fieldHost && !k.hostWS:
			for n < len(b) && hostByte[b[n]] {
				n++
			}
			k.valLen += n
		}
	}
	return n
}

// tooLarge is the error of a head (or trailer section) over maxHead.
func (k *frameCheck) tooLarge() *frameError {
	if k.trailer {
		return k.headErr("trailer section over " + strconv.Itoa(k.maxHead) + " bytes")
	}
	return &frameError{Head: true, Status: 431, Reason: "head over " + strconv.Itoa(k.maxHead) + " bytes"}
}

// nextHead readies the check for the next request's head.
func (k *frameCheck) nextHead() {
	*k = frameCheck{maxHead: k.maxHead}
}

func (k *frameCheck) headErr(reason string) *frameError {
	if k.trailer {
		return &frameError{Reason: "trailer: " + reason}
	}
	return &frameError{Head: true, Reason: reason}
}

// step examines one byte outside body data.
func (k *frameCheck) step(c byte) *frameError {
	if k.st <= stEndLF {
		k.headLen++
		if k.headLen > k.maxHead {
			return k.tooLarge()
		}
	}
	switch k.st {
	case stHead:
		// The bytes of an empty line here are dropped by feed.
		switch {
		case c == '\r':
			k.st = stLeadLF
		case tchar(c):
			k.st, k.n, k.connect = stMethod, 1, c == method[0]
		default:
			return k.headErr("request line does not start with a method")
		}
	case stLeadLF:
		if c != '\n' {
			return k.headErr("bare CR")
		}
		k.lead++
		if k.lead > maxEmptyLead {
			return k.headErr("empty lines before the request line")
		}
		k.st = stHead
	case stMethod:
		switch {
		case tchar(c):
			k.connect = k.connect && k.n < len(method) && method[k.n] == c
			k.n++
		case c == ' ':
			k.connect = k.connect && k.n == len(method)
			k.st, k.n = stTarget, 0
		default:
			return k.headErr("invalid byte in method")
		}
	case stTarget:
		switch {
		case c == ' ' && k.n > 0:
			if k.pct > 0 {
				return k.headErr("'%' not followed by two hex digits in the request target's path")
			}
			if k.notOrigin {
				if err := k.endTarget(); err != nil {
					return err
				}
			}
			k.st, k.n = stVersion, 0
		case c > ' ' && c != 0x7f:
			if k.n == 0 {
				k.path = c == '/'
				if k.notOrigin = !k.path; k.notOrigin {
					k.startAbs()
				}
			}
			k.n++
			switch {
			case k.abs != nil:
				return k.absByte(c)
			case k.path:
				return k.pathByte(c)
			}
		default:
			return k.headErr("invalid byte in request target")
		}
	case stVersion:
		const v = "HTTP/1."
		switch {
		case k.n < len(v) && c == v[k.n]:
			k.n++
		case k.n == len(v) && (c == '0' || c == '1'):
			k.http10 = c == '0'
			k.n++
		case k.n == len(v)+1 && c == '\r':
			k.st = stLineLF
		default:
			return k.headErr("request line is not METHOD SP TARGET SP HTTP/1.0 or HTTP/1.1")
		}
	case stLineLF:
		if c != '\n' {
			return k.headErr("bare CR")
		}
		k.st = stFieldLine
	case stFieldLine:
		switch {
		case c == '\r':
			k.st = stEndLF
		case c == ' ' || c == '\t':
			return k.headErr("obs-fold (a line starting with whitespace)")
		case c == '\n':
			return k.headErr("bare LF")
		case tchar(c):
			k.st, k.n, k.cand = stName, 1, fieldByInitial[lower(c)]
			k.trailerName = lower(c) == 't'
		default:
			return k.headErr("invalid byte in field name")
		}
	case stName:
		switch {
		case tchar(c):
			if name := fieldNames[k.cand]; k.n >= len(name) || name[k.n] != lower(c) {
				k.cand = fieldOther
			}
			const trailer = "trailer"
			k.trailerName = k.trailerName && k.n < len(trailer) && trailer[k.n] == lower(c)
			k.n++
		case c == ':':
			k.field = fieldOther
			switch {
			case k.trailer:
			case k.cand != fieldOther && k.n == len(fieldNames[k.cand]):
				k.field = k.cand
			case k.trailerName && k.n == len("trailer"):
				k.field, k.tokMask, k.tokLen, k.tokWS = fieldTrailer, allTrailerNames, 0, false
			}
			k.st, k.valLen, k.valDigits, k.hostWS = stValue, 0, 0, false
		default:
			return k.headErr("invalid byte in field name (whitespace before the colon?)")
		}
	case stValue:
		switch {
		case c == '\r':
			if err := k.endField(); err != nil {
				return err
			}
			k.st = stLineLF
		case c == '\t' || (c >= ' ' && c != 0x7f):
			if err := k.valueByte(c); err != nil {
				return err
			}
		case c == '\n':
			return k.headErr("bare LF")
		default:
			return k.headErr("control byte in field value")
		}
	case stEndLF:
		if c != '\n' {
			return k.headErr("bare CR")
		}
		if k.trailer {
			k.nextHead()
			return nil
		}
		return k.endHead()
	case stChunkSize:
		switch {
		case hexVal(c) >= 0:
			k.chunkHexCount++
			if k.chunkHexCount > maxChunkDigits {
				return &frameError{Reason: "chunk size over " + strconv.Itoa(maxChunkDigits) + " hex digits"}
			}
			k.remain = k.remain<<4 | int64(hexVal(c))
		case k.chunkHexCount > 0 && c == ';':
			k.st = stChunkExt
		case k.chunkHexCount > 0 && c == '\r':
			k.st = stChunkLF
		default:
			return &frameError{Reason: "invalid chunk size"}
		}
		k.n++
	case stChunkExt:
		switch {
		case c == '\r':
			k.st = stChunkLF
		case c == '\t' || (c >= ' ' && c != 0x7f):
		default:
			return &frameError{Reason: "invalid byte in chunk extension"}
		}
		k.n++
		if k.n > maxChunkLine {
			return &frameError{Reason: "chunk-size line over " + strconv.Itoa(maxChunkLine) + " bytes"}
		}
	case stChunkLF:
		if c != '\n' {
			return &frameError{Reason: "bare CR in chunk-size line"}
		}
		if k.remain == 0 {
			// The last chunk: a trailer section follows.
			k.st, k.trailer, k.headLen = stFieldLine, true, 0
			return nil
		}
		k.st = stChunkData
	case stChunkCR:
		if c != '\r' {
			return &frameError{Reason: "chunk data longer than its size"}
		}
		k.st = stChunkDataLF
	case stChunkDataLF:
		if c != '\n' {
			return &frameError{Reason: "bare CR after chunk data"}
		}
		k.st, k.n, k.chunkHexCount, k.remain = stChunkSize, 0, 0, 0
	}
	return nil
}

// fieldNames are the names of the fields step follows, lower case; each
// begins with a letter of its own (fieldByInitial).
var fieldNames = [...]string{fieldCL: "content-length", fieldTE: "transfer-encoding", fieldExpect: "expect", fieldHost: "host"}

// fieldByInitial maps a name's first byte, lower case, to the one field
// of fieldNames it may be.
var fieldByInitial = func() (t [256]fieldKind) {
	for f, name := range fieldNames {
		if name != "" {
			t[name[0]] = fieldKind(f)
		}
	}
	return t
}()

// method is the one method that needs no Host.
const method = "CONNECT"

// hostByte: the bytes net/http admits in a Host value (its whitespace
// trimmed), as httpguts.ValidHostHeader says.
var hostByte = func() (t [256]bool) {
	for c := range t {
		t[c] = httpguts.ValidHostHeader(string([]byte{byte(c)}))
	}
	return t
}()

// absTarget is the copy of a target not in origin form, up to where its
// path would start (absByte).
type absTarget struct {
	b       []byte
	slashes int8 // '/' in b
	colon   int8 // b has no ':' (0), ends with its first (1), has one before its end (2)
}

// startAbs begins the copy of a target not in origin form. net/http reads
// a CONNECT target that does not start with '/' as the authority of
// "http://" + target.
func (k *frameCheck) startAbs() {
	k.abs = &absTarget{b: make([]byte, 0, 64)}
	if k.connect {
		k.abs.b = append(k.abs.b, "http://"...)
		k.abs.slashes, k.abs.colon = 2, 2
	}
}

// absByte takes one byte of a target not in origin form, up to where
// url.ParseRequestURI would start reading a path: at a '?' (the query is
// not checked), at the third '/' ("scheme://authority/": the path
// follows, checked by pathByte), after the scheme's ':' when no '/'
// follows it (an opaque URI, not checked further), or at the target's
// end. There the copy goes to url.ParseRequestURI: its errors come from
// the scheme, the user, host and port, and a path's escapes before the
// cut, which ends at a '/' and so splits no escape.
func (k *frameCheck) absByte(c byte) *frameError {
	if c == '?' {
		if k.abs.colon == 0 {
			// No scheme before it: "*?x" (url.ParseRequestURI takes the
			// "*" the copy holds, net/http then not the whole target, and
			// answered its own 400), "ab?c".
			return k.headErr("request target is neither a path, '*' nor an absolute URI url.ParseRequestURI reads")
		}
		return k.endAbs(false)
	}
	if k.n > maxAbsTarget {
		return k.absTooLong()
	}
	a := k.abs
	a.b = append(a.b, c)
	switch {
	case a.colon == 1 && c != '/':
		return k.endAbs(false)
	case c == ':' && a.colon == 0:
		a.colon = 1
		return nil
	case c == '/':
		if a.slashes++; a.slashes == 3 {
			return k.endAbs(true)
		}
	}
	if a.colon == 1 {
		a.colon = 2 // "scheme:/"
	}
	return nil
}

// endTarget ends a target not in origin form.
func (k *frameCheck) endTarget() *frameError {
	if k.abs != nil {
		return k.endAbs(false)
	}
	if k.n > maxAbsTarget {
		return k.absTooLong()
	}
	return nil
}

func (k *frameCheck) absTooLong() *frameError {
	return k.headErr("request target not in origin form over " + strconv.Itoa(maxAbsTarget) + " bytes")
}

// endAbs asks url.ParseRequestURI about the copy of a target's start and
// drops it; path says a path follows.
func (k *frameCheck) endAbs(path bool) *frameError {
	_, err := url.ParseRequestURI(string(k.abs.b))
	k.abs, k.path = nil, path
	if err != nil {
		return k.headErr("request target is neither a path, '*' nor an absolute URI url.ParseRequestURI reads")
	}
	return nil
}

// pathByte takes one byte of a target's path: after a '%'
// two hex digits, as url.ParseRequestURI wants them (its one check of a
// path); a '?' ends the path (the query is not checked).
func (k *frameCheck) pathByte(c byte) *frameError {
	switch {
	case k.pct > 0:
		if hexVal(c) < 0 {
			return k.headErr("'%' not followed by two hex digits in the request target's path")
		}
		k.pct--
	case c == '%':
		k.pct = 2
	case c == '?':
		k.path = false
	}
	return nil
}

// valueByte takes one byte of a field value.
func (k *frameCheck) valueByte(c byte) *frameError {
	switch k.field {
	case fieldCL:
		switch {
		case c == ' ' || c == '\t':
			if k.valDigits > 0 {
				k.valDigits = -1
			}
		case c >= '0' && c <= '9' && k.valDigits >= 0:
			k.valDigits++
			if k.valDigits > 18 {
				return k.headErr("Content-Length over 18 digits")
			}
			k.cl = k.cl*10 + int64(c-'0')
		default:
			return k.headErr("Content-Length is not one decimal number")
		}
	case fieldHost:
		// net/http trims the value's whitespace and refuses it for any
		// other byte outside its set, whitespace inside included.
		switch {
		case c == ' ' || c == '\t':
			k.hostWS = k.valLen > 0
		case k.hostWS || !hostByte[c]:
			return k.headErr("Host value with a byte a host cannot have")
		default:
			k.valLen++
		}
	case fieldTE, fieldExpect:
		if k.valLen < len(k.val) {
			k.val[k.valLen] = lower(c)
		}
		k.valLen++
	case fieldTrailer:
		k.trailerByte(c)
	}
	return nil
}

// trailerByte takes one byte of a Trailer value: a list of field names
// net/http reads as strings.Split on ',' and trims of whitespace.
func (k *frameCheck) trailerByte(c byte) {
	switch {
	case c == ',':
		k.endTrailerToken()
		k.tokMask, k.tokLen, k.tokWS = allTrailerNames, 0, false
	case c == ' ' || c == '\t':
		k.tokWS = k.tokLen > 0
	case k.tokWS:
		k.tokMask = 0 // a name with whitespace inside is none of them
	default:
		for i, name := range trailerNames {
			if int(k.tokLen) >= len(name) || name[k.tokLen] != lower(c) {
				k.tokMask &^= 1 << i
			}
		}
		if k.tokMask != 0 {
			k.tokLen++
		}
	}
}

// endTrailerToken ends an element of a Trailer value.
func (k *frameCheck) endTrailerToken() {
	for i, name := range trailerNames {
		if k.tokMask&(1<<i) != 0 && int(k.tokLen) == len(name) {
			k.badTrailer = true
		}
	}
}

// endField ends a field line.
func (k *frameCheck) endField() *frameError {
	switch k.field {
	case fieldCL:
		k.clCount++
		if k.valDigits == 0 {
			return k.headErr("empty Content-Length")
		}
		if k.clCount > 1 {
			return k.headErr("more than one Content-Length field")
		}
	case fieldHost:
		k.hostCount++
		if k.hostCount > 1 {
			return k.headErr("more than one Host field")
		}
	case fieldTE:
		k.teCount++
		if k.teCount > 1 {
			return k.headErr("more than one Transfer-Encoding field")
		}
		v := k.val[:min(k.valLen, len(k.val))]
		k.teChunked = k.valLen <= len(k.val) && string(trimOWS(v)) == "chunked"
	case fieldTrailer:
		k.endTrailerToken()
	case fieldExpect:
		// net/http answers any Expect but 100-continue itself (417), and
		// takes "100-continue, x" as 100-continue: every Expect field
		// here is empty or 100-continue alone, or the head is refused.
		v := trimOWS(k.val[:min(k.valLen, len(k.val))])
		if k.valLen > len(k.val) || len(v) > 0 && string(v) != "100-continue" {
			return &frameError{Head: true, Status: 417, Reason: "Expect other than 100-continue"}
		}
	}
	return nil
}

// endHead decides a complete head's body framing (RFC 9112 §6.3).
func (k *frameCheck) endHead() *frameError {
	if k.hostCount == 0 && !k.http10 && !k.connect {
		return k.headErr("no Host field in an HTTP/1.1 request")
	}
	switch {
	case k.teCount > 0 && k.clCount > 0:
		return k.headErr("both Transfer-Encoding and Content-Length")
	case k.teCount > 0 && k.http10:
		return k.headErr("Transfer-Encoding in an HTTP/1.0 request")
	case k.teCount > 0 && !k.teChunked:
		return k.headErr("Transfer-Encoding other than chunked")
	case k.teCount > 0 && k.badTrailer:
		return k.headErr("Trailer naming Content-Length, Transfer-Encoding or Trailer")
	case k.teCount > 0:
		k.st, k.headLen, k.n, k.chunkHexCount, k.remain = stChunkSize, 0, 0, 0, 0
	case k.cl > 0:
		k.st, k.headLen, k.remain = stBody, 0, k.cl
	default:
		k.nextHead()
	}
	return nil
}

// tchar reports whether c may appear in a token (RFC 9110 §5.6.2).
func tchar(c byte) bool { return c < 0x80 && isTchar[c] }

func lower(c byte) byte {
	if c >= 'A' && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

func hexVal(c byte) int {
	switch {
	case c >= '0' && c <= '9':
		return int(c - '0')
	case c >= 'a' && c <= 'f':
		return int(c-'a') + 10
	case c >= 'A' && c <= 'F':
		return int(c-'A') + 10
	}
	return -1
}

// trimOWS trims spaces and tabs on both sides.
func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}
