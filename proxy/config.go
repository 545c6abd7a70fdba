package proxy

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"time"
)

// Defaults for the Config fields left zero.
const (
	DefaultAddr              = ":8080"
	DefaultReadHeaderTimeout = 10 * time.Second
	DefaultIdleTimeout       = 60 * time.Second
	DefaultMaxHeaderBytes    = 16 << 10
	DefaultBodyMinRate       = 1 << 10 // bytes per second
	DefaultBodyRateGrace     = 5 * time.Second
	DefaultWriteMinRate      = 1 << 10 // bytes per second
	DefaultWriteRateGrace    = 10 * time.Second
	DefaultWriteTimeout      = 30 * time.Second
	DefaultMaxBody           = 10 << 20
	DefaultBodyMemory        = 256 << 10
	DefaultMaxResponseHeader = 64 << 10
	DefaultResponseMemory    = 256 << 10
	DefaultMaxResponse       = 100 << 20
	DefaultSpoolMemory       = 256 << 20
	DefaultSpoolDisk         = 4 << 30
	DefaultMaxConns          = 10000
	DefaultMaxConnsPerIP     = 100
	DefaultMaxStreams        = 100
	DefaultMaxLocalRedirects = 5
	DefaultStderrLimit       = 4 << 10
	DefaultRetryAfter        = 1 * time.Second
	DefaultTempDir           = "/tmp"
	DefaultVersion           = "dev"
	// DefaultPath is the worker's PATH unless the route's env sets one.
	DefaultPath = "/usr/local/bin:/usr/bin:/bin"
)

// Config is the front's settings. Every field has a documented default,
// taken when the field is zero. Where a limit may be turned off, the field
// says so: a negative value does it. cmd/cellgate fills it from flags and
// environment; New applies the defaults and validates it once.
type Config struct {
	// Addr is the listen address for ListenAndServe. Default ":8080".
	Addr string
	// TLSCertFile and TLSKeyFile are PEM files; both set serves HTTPS with
	// HTTP/2 (ALPN "h2") and HTTP/1.1, both empty serves plain HTTP/1.1.
	// Default: empty (plain HTTP).
	TLSCertFile string
	TLSKeyFile  string

	// ReadHeaderTimeout is how long a client has to send the request line
	// and header fields, from the head's first byte, on a fresh connection
	// and a keep-alive one alike (guardConn). Default 10 s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout is how long a keep-alive connection may wait for its next
	// request. Default 60 s.
	IdleTimeout time.Duration
	// MaxHeaderBytes is the largest request line plus header fields, in
	// bytes; larger gets 431. Default 16 KiB.
	//
	// net/http's own limit is MaxHeaderBytes plus 4096 bytes of slack for
	// its read buffer. So the front gives net/http exactly this value and
	// checks the size itself in the handler (request line plus "Name: value"
	// lines as sent on HTTP/1.1): requests between MaxHeaderBytes and
	// MaxHeaderBytes+4 KiB get the front's 431 with a request id and an
	// access-log record. On HTTP/1.x larger heads are refused by the head
	// check in front of net/http (guardConn) and answered alike; on
	// HTTP/2 net/http refuses them itself.
	MaxHeaderBytes int
	// BodyMinRate is the slowest a client may send its request body, in
	// bytes per second, once BodyRateGrace has passed; slower gets 408 and
	// the connection closed. Negative disables the check. Default 1 KiB/s.
	BodyMinRate int64
	// BodyRateGrace is the time a body may take before BodyMinRate applies.
	// Default 5 s.
	BodyRateGrace time.Duration
	// WriteMinRate and WriteTimeout hold a client to reading its response
	// steadily: the response is written in pieces of WriteMinRate ×
	// WriteTimeout bytes (at least 4 KiB, at most 1 MiB), each with a write
	// deadline of WriteTimeout (or the piece's size at WriteMinRate, when
	// longer). A client that takes nothing for WriteTimeout, or less than
	// WriteMinRate over any such piece, is cut off: the connection is
	// closed, the spool freed, and the access log says slow_reader. A
	// progress check, not an average over the whole response, which let a
	// client that stalled after a few megabytes of a large response hold
	// it for most of an hour. Negative WriteMinRate disables both.
	// Defaults 1 KiB/s and 30 s.
	WriteMinRate int64
	WriteTimeout time.Duration
	// WriteRateGrace is added to the first piece's deadline. Default 10 s.
	WriteRateGrace time.Duration

	// MaxBody is the largest request body, in bytes, for a route whose
	// limits leave MaxBody nil (neither the route nor the policy's
	// defaults set max_body); larger gets 413. Default 10 MiB.
	MaxBody int64
	// BodyMemory is how much of a request body is held in memory; the rest
	// goes to an unlinked file in TempDir. Default 256 KiB.
	BodyMemory int
	// MaxResponseHeader is the largest CGI header block a worker may write,
	// in bytes; larger is a 502. Default 64 KiB.
	MaxResponseHeader int
	// ResponseMemory is how much of a spooled response body is held in
	// memory; the rest goes to an unlinked file in TempDir. Default 256 KiB.
	ResponseMemory int
	// MaxResponse is the largest response body a worker may write, in
	// bytes; more is a 502 and the cell is killed. It bounds streamed
	// responses too. Default 100 MiB.
	MaxResponse int64
	// SpoolMemory and SpoolDisk bound what the spools of all requests and
	// responses hold at once, in memory and in spool files. A spool that
	// finds no room in memory goes to a file early; one that finds no room
	// on disk fails: a request body with 503 and Retry-After, a response
	// with the same and its cell killed (the work is lost, but neither is
	// the disk filled nor a cell kept alive for a slow client). Negative
	// is no limit. Defaults 256 MiB and 4 GiB.
	SpoolMemory int64
	SpoolDisk   int64
	// TempDir holds the unlinked spool files (O_TMPFILE where the file
	// system supports it). They are written by cellgate, so on a tmpfs their
	// pages are memory charged to cellgate's own group, never to a cell;
	// SpoolDisk bounds them all together.
	// New checks that a spool file can be made there. Default "/tmp".
	TempDir string

	// MaxConns is the number of client connections open at once; more are
	// refused at accept (a fixed 503 on plain HTTP, a close under TLS).
	// Negative disables the cap. Default 10000.
	MaxConns int
	// MaxConnsPerIP is the number of connections one client IP address may
	// hold open; more are refused like MaxConns. Negative disables the cap.
	// Default 100.
	MaxConnsPerIP int
	// TrustedProxies are the peers whose X-Forwarded-For names the client
	// (forwarded.go): REMOTE_ADDR, the access log's client and the per-IP
	// cap's key. Their connections are exempt from MaxConnsPerIP; their
	// forwarded clients' requests in flight are capped by it instead.
	// Default none: the header is never believed.
	TrustedProxies []netip.Prefix
	// MaxStreams is HTTP/2's limit on concurrent requests per connection.
	// Default 100.
	MaxStreams int

	// MaxLocalRedirects bounds RFC 3875 local redirects (a "Location: /..."
	// response re-run as a GET) per request; one more is a 502.
	// Default 5.
	MaxLocalRedirects int
	// StderrLimit is how much of a worker's stderr is kept and logged with
	// the request id; the rest is discarded. It never reaches the client.
	// Default 4 KiB.
	StderrLimit int
	// RetryAfter is the Retry-After of a 503 (rounded up to whole seconds).
	// Default 1 s.
	RetryAfter time.Duration
	// PassAuthorization passes the Authorization header to workers as
	// HTTP_AUTHORIZATION. RFC 3875 4.1.18 says a server should not (the
	// credentials then reach every worker); AUTH_TYPE carries the scheme
	// either way. Default false.
	PassAuthorization bool
	// Version is the <version> of SERVER_SOFTWARE=cellgate/<version>.
	// Default "dev".
	Version string
}

// withDefaults returns c with every zero field set to its default.
func (c Config) withDefaults() Config {
	setDefault(&c.Addr, DefaultAddr)
	setDefault(&c.ReadHeaderTimeout, DefaultReadHeaderTimeout)
	setDefault(&c.IdleTimeout, DefaultIdleTimeout)
	setDefault(&c.MaxHeaderBytes, DefaultMaxHeaderBytes)
	setDefault(&c.BodyMinRate, DefaultBodyMinRate)
	setDefault(&c.BodyRateGrace, DefaultBodyRateGrace)
	setDefault(&c.WriteMinRate, DefaultWriteMinRate)
	setDefault(&c.WriteRateGrace, DefaultWriteRateGrace)
	setDefault(&c.WriteTimeout, DefaultWriteTimeout)
	setDefault(&c.SpoolMemory, DefaultSpoolMemory)
	setDefault(&c.SpoolDisk, DefaultSpoolDisk)
	setDefault(&c.MaxBody, DefaultMaxBody)
	setDefault(&c.BodyMemory, DefaultBodyMemory)
	setDefault(&c.MaxResponseHeader, DefaultMaxResponseHeader)
	setDefault(&c.ResponseMemory, DefaultResponseMemory)
	setDefault(&c.MaxResponse, DefaultMaxResponse)
	setDefault(&c.TempDir, DefaultTempDir)
	setDefault(&c.MaxConns, DefaultMaxConns)
	setDefault(&c.MaxConnsPerIP, DefaultMaxConnsPerIP)
	setDefault(&c.MaxStreams, DefaultMaxStreams)
	setDefault(&c.MaxLocalRedirects, DefaultMaxLocalRedirects)
	setDefault(&c.StderrLimit, DefaultStderrLimit)
	setDefault(&c.RetryAfter, DefaultRetryAfter)
	setDefault(&c.Version, DefaultVersion)
	return c
}

// setDefault sets *v to d when it is the zero value.
func setDefault[T comparable](v *T, d T) {
	var zero T
	if *v == zero {
		*v = d
	}
}

// validate checks a Config with defaults applied.
func (c *Config) validate() error {
	var errs []error
	bad := func(format string, args ...any) { errs = append(errs, fmt.Errorf(format, args...)) }
	if (c.TLSCertFile == "") != (c.TLSKeyFile == "") {
		bad("proxy config: TLSCertFile=%q and TLSKeyFile=%q: set both or neither", c.TLSCertFile, c.TLSKeyFile)
	}
	for _, d := range []struct {
		name string
		v    time.Duration
	}{
		{"ReadHeaderTimeout", c.ReadHeaderTimeout}, {"IdleTimeout", c.IdleTimeout},
		{"BodyRateGrace", c.BodyRateGrace}, {"WriteRateGrace", c.WriteRateGrace}, {"WriteTimeout", c.WriteTimeout},
		{"RetryAfter", c.RetryAfter},
	} {
		if d.v < 0 {
			bad("proxy config: %s=%s: must not be negative", d.name, d.v)
		}
	}
	for _, n := range []struct {
		name string
		v    int64
	}{
		{"MaxHeaderBytes", int64(c.MaxHeaderBytes)}, {"MaxBody", c.MaxBody}, {"BodyMemory", int64(c.BodyMemory)},
		{"MaxResponseHeader", int64(c.MaxResponseHeader)}, {"ResponseMemory", int64(c.ResponseMemory)},
		{"MaxResponse", c.MaxResponse}, {"MaxStreams", int64(c.MaxStreams)},
		{"MaxLocalRedirects", int64(c.MaxLocalRedirects)}, {"StderrLimit", int64(c.StderrLimit)},
	} {
		if n.v < 0 {
			bad("proxy config: %s=%d: must not be negative", n.name, n.v)
		}
	}
	if c.MaxHeaderBytes < 1024 {
		bad("proxy config: MaxHeaderBytes=%d: at least 1024 bytes", c.MaxHeaderBytes)
	}
	if c.MaxResponseHeader < 256 {
		bad("proxy config: MaxResponseHeader=%d: at least 256 bytes", c.MaxResponseHeader)
	}
	if st, err := os.Stat(c.TempDir); err != nil {
		bad("proxy config: TempDir=%q: %w", c.TempDir, err)
	} else if !st.IsDir() {
		bad("proxy config: TempDir=%q: not a directory", c.TempDir)
	}
	return errors.Join(errs...)
}
