// Package proxy is cellgate's front: the HTTP/1.1 and HTTP/2 server with its
// timeouts and limits, request buffering, CGI/1.1 meta-variables, parsing and
// spooling of the worker's response, and the one mapping from outcomes to
// HTTP statuses. It does not touch the kernel: cells are run through the
// Runner interface (sandbox.Runner, or PlainExec in tests and for the
// no-cell baseline). It is imported only by cmd/cellgate.
//
// # Construction
//
// cmd/cellgate builds one Config (every field has a documented default) and
// the Deps (Runner, Router, CellSpec, and optionally Admitter, AccessLog,
// Metrics, Logger, LookupEnv), calls New, then Serve on its listener and
// Shutdown on SIGTERM.
//
// # A request's path
//
//  1. Accept: capListener refuses connections over Config.MaxConns or
//     Config.MaxConnsPerIP inside Accept, so no goroutine or request exists
//     for them.
//  2. On HTTP/1.x (plain, or over TLS, whose handshakes tlsListener does
//     itself) a guardConn checks every request head strictly (RFC 9112)
//     before net/http sees a byte of it, and follows each request's body
//     framing to know where the next head starts: obs-fold, bare CR or LF,
//     Transfer-Encoding with Content-Length and the like are answered
//     with a 400 and the connection closed, never parsed (request
//     smuggling; frameCheck). net/http then reads the header
//     (Config.ReadHeaderTimeout, Config.MaxHeaderBytes; see there for the
//     4 KiB of slack net/http adds and how the front still enforces the
//     exact limit).
//  3. serveHTTP gives the request its id (X-Request-Id; the client's is
//     ignored), routes it (Router: the match holds the policy it was made
//     under until the request ends), and reads the whole body before anything
//     is spawned: in memory up to Config.BodyMemory, then in an unlinked
//     temporary file, bounded by the route's MaxBody, at a minimum rate
//     (Config.BodyMinRate) enforced with read deadlines.
//  4. Admission (Admitter), then the cell: the worker's environment is
//     built from the request and the route's allow-list only (buildEnv), its
//     stdin is the body (the temporary file itself when there is one), its
//     stdout a pipe the proxy reads: a shared file would charge the
//     worker's pages to its cell and pin the cell after removal.
//  5. The CGI header block is checked (readCGIHeader); the body is spooled
//     (memory, then an unlinked file, bounded by Config.MaxResponse) so that
//     the cell ends and its room is released before a slow client has read
//     anything, or streamed when the route asks. A local redirect
//     (RFC 3875 6.2.2) runs the Location's route as a GET.
//  6. decide maps how the request ended to a status, in one place; errors
//     are short text/plain bodies that name no internals.
//  7. One access-log record (accounting.Log) and one metrics observation
//     per request, whatever the outcome.
package proxy
