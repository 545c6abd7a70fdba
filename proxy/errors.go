package proxy

import "errors"

// Errors the request path branches on (errors.Is). Each is wrapped with what
// happened and the value involved; status.go maps them to HTTP statuses.
var (
	// ErrHeaderTooLarge: the request line and header fields exceed
	// Config.MaxHeaderBytes (431).
	ErrHeaderTooLarge = errors.New("request header too large")
	// ErrBodyTooLarge: the request body exceeds the route's limit (413).
	ErrBodyTooLarge = errors.New("request body too large")
	// ErrClientTimeout: the client sent its body slower than
	// Config.BodyMinRate after the grace period (408).
	ErrClientTimeout = errors.New("client too slow")
	// ErrClientGone: the client closed the connection or cancelled the
	// request before the response was written (logged as 499, nothing is
	// sent).
	ErrClientGone = errors.New("client went away")
	// ErrBadRequest: the request cannot be served as sent (a NUL in the
	// path, a malformed chunked body) (400).
	ErrBadRequest = errors.New("bad request")
	// ErrExpectationFailed: the request has an Expect other than
	// 100-continue (417).
	ErrExpectationFailed = errors.New("expectation failed")
	// ErrTunnel: a CONNECT request (501). cellgate runs programs; it is
	// no tunnelling proxy, and a 2xx to CONNECT would tell a front proxy
	// that the connection is a tunnel from there on (RFC 9112 §6.3).
	ErrTunnel = errors.New("CONNECT is not supported")
	// ErrInvalidResponse: the worker's output is not a valid CGI response
	// (502).
	ErrInvalidResponse = errors.New("invalid CGI response")
	// ErrResponseTooLarge: the worker's response body exceeds
	// Config.MaxResponse (502); the cell is killed.
	ErrResponseTooLarge = errors.New("response too large")
	// ErrRedirectLoop: local redirects (RFC 3875 6.2.2) went on for more
	// than Config.MaxLocalRedirects hops (502).
	ErrRedirectLoop = errors.New("too many local redirects")
	// ErrSpoolBudget: the spools of all requests together hold
	// Config.SpoolDisk bytes already (503 with Retry-After).
	ErrSpoolBudget = errors.New("spool budget reached")
	// ErrTooManyFromClient: a client forwarded by a trusted proxy has
	// Config.MaxConnsPerIP requests in flight already (503).
	ErrTooManyFromClient = errors.New("too many requests in flight from one client")
	// ErrShuttingDown: the server is shutting down and the request's cell
	// was cancelled (503).
	ErrShuttingDown = errors.New("server shutting down")
)
