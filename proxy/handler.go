package proxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/net/http/httpguts"
)

// exchange is one request on its way through the front.
type exchange struct {
	s   *Server
	w   http.ResponseWriter
	r   *http.Request
	rec accounting.Record
	// route is the route of the last cell run (after local redirects).
	route *policy.Route
	// live is the request's entry in the server's in-flight set.
	live *inflight
	rc   *http.ResponseController

	// abort resets the connection (or HTTP/2 stream) after the record is
	// written: a streamed response was cut short and the client must not
	// take it for complete.
	abort bool
	// bodyRead is set once the request body has been read to its end.
	bodyRead bool
	// hopRan is set once a cell of the request ran and answered with a
	// local redirect (recordHop): the request is no longer one of which
	// nothing ran.
	hopRan bool
	// late is the last cell's Result when its accounting is read after
	// the answer, hops the records of local redirects waiting for theirs
	// or for an earlier one's (recordLate).
	late *sandbox.Result
	hops []lateRecord
	// releases are the Router's release funcs of the matches this request
	// holds (the first route and each local redirect's), called when it
	// ends.
	releases []func()
}

// serveHTTP is the server's handler: route, read the body, admit, run the
// cell, answer, log. Every response carries the request id; every request
// ends in exactly one access-log record and one metrics observation for its
// response, after one more for each cell that answered with a local
// redirect (recordHop).
func (s *Server) serveHTTP(w http.ResponseWriter, r *http.Request) {
	start := s.now()
	if g, _ := r.Context().Value(guardKey{}).(*guardConn); g != nil {
		g.began()
	}
	id := s.ids.next()
	w.Header()[RequestIDHeader] = []string{id}
	if r.URL.Path == "" && r.URL.Opaque == "" && r.URL.Host != "" && (strings.EqualFold(r.URL.Scheme, "http") || strings.EqualFold(r.URL.Scheme, "https")) {
		r.URL.Path = "/" // an http URI without a path: "/" (RFC 9112 3.2.2); any other still refused
	}
	var overCap error
	if client, ok := forwardedClient(s.cfg.TrustedProxies, peerIP(r.RemoteAddr), r.Header); ok {
		r.RemoteAddr = client.String()
		if s.clients.acquire(client, capValue(s.cfg.MaxConnsPerIP)) {
			defer s.clients.release(client)
		} else {
			overCap = fmt.Errorf("client %s: %d requests in flight: %w", client, s.cfg.MaxConnsPerIP, ErrTooManyFromClient)
		}
	}
	x := &exchange{s: s, w: w, r: r, rec: accounting.Record{
		Time:       start,
		RequestID:  id,
		Method:     r.Method,
		Host:       r.Host,
		Path:       r.URL.Path,
		Query:      r.URL.RawQuery,
		Proto:      r.Proto,
		UserAgent:  r.Header.Get("User-Agent"),
		Referer:    r.Header.Get("Referer"),
		ClientAddr: r.RemoteAddr,
	}}
	x.rc = http.NewResponseController(w)
	x.boundWrites()
	// The client's strings cut as the access log cuts them: /status lists
	// up to MaxStatusRequests of them (500 paths of 15 KiB of bytes that
	// are not UTF-8 made its JSON 45 MB).
	x.live = &inflight{v: InFlight{RequestID: id, Method: accounting.Clip(r.Method), Host: accounting.Clip(r.Host),
		Path: accounting.Clip(r.URL.Path), Client: accounting.Clip(r.RemoteAddr), Arrived: start, State: StateReading}}
	s.inflight.Store(x.live, nil)
	defer s.inflight.Delete(x.live)
	s.mu.Lock()
	closing := s.closing
	if !closing {
		s.handlers.Add(1)
		defer s.handlers.Done()
	}
	s.mu.Unlock()
	switch {
	case closing:
		// A request that slipped in after Shutdown stopped waiting.
		x.fail(ErrShuttingDown, nil)
	case overCap != nil:
		x.fail(overCap, nil)
	default:
		x.serve()
	}
	x.endUnreadBody()
	x.rec.Duration = s.now().Sub(start)
	if x.recordsWait() {
		s.recordLate(append(x.hops, lateRecord{x.late, x.rec}))
	} else {
		s.record(r.Context(), x.rec)
	}
	if x.abort {
		if !r.ProtoAtLeast(1, 1) {
			resetOnClose(r)
		}
		panic(http.ErrAbortHandler)
	}
	x.tail()
	if s.base.Err() != nil {
		// Cancelled by a Shutdown whose time was up, which closes every
		// connection once the handlers have returned: what net/http
		// still buffers of this answer (a 503 whole) goes out first, or
		// the close drops it and the client reads an empty reply.
		_ = x.rc.Flush()
	}
}

// record makes one metrics observation and writes one access-log record,
// in that order: once a request's record is in the log, the metrics count
// it (the record may come after the response: recordLate).
func (s *Server) record(ctx context.Context, rec accounting.Record) {
	if s.deps.Metrics != nil {
		s.deps.Metrics.ObserveRequest(rec)
	}
	if err := accounting.Log(ctx, s.deps.AccessLog, rec); err != nil {
		s.log.Warn("access log", "request_id", rec.RequestID, "err", err)
	}
}

// maxLateRecords bounds the requests whose records wait, after their
// responses, for their cells' accounting (recordLate). Beyond it a
// handler waits itself, before returning, as when the access log cannot
// keep up: the connection is then held and the connection caps apply.
const maxLateRecords = 256

// lateRecord is a record whose cell's accounting is read after the
// response (sandbox.Spec.LateUsage); res is nil for one that waits for
// nothing but the records before it.
type lateRecord struct {
	res *sandbox.Result
	rec accounting.Record
}

// recordsWait reports whether the next record must wait (recordLate): its
// cell's accounting is read late, or a record before it waits.
func (x *exchange) recordsWait() bool { return x.late != nil || len(x.hops) > 0 }

// recordLate writes recs, in order, once each one's accounting has been
// read: from a goroutine of its own while fewer than maxLateRecords wait
// so, else before returning. Shutdown waits for them. The wait for an
// accounting is the rest of its cell's teardown, bounded by the Runner's
// EmptyWait.
func (s *Server) recordLate(recs []lateRecord) {
	write := func() {
		for _, l := range recs {
			if l.res != nil {
				if err := l.res.Account(); err != nil {
					s.log.Warn("cell accounting", "request_id", l.rec.RequestID, "route", l.rec.Route, "err", err)
				}
				l.rec.Usage = l.res.Usage
			}
			s.record(context.Background(), l.rec)
		}
	}
	select {
	case s.lateSlots <- struct{}{}:
		s.lateRecords.Go(func() {
			defer func() { <-s.lateSlots }()
			write()
		})
	default:
		write()
	}
}

// serve runs the request to its verdict and answers.
func (x *exchange) serve() {
	s, r := x.s, x.r
	if err := x.checkRequest(); err != nil {
		x.fail(err, nil)
		return
	}
	defer x.releaseMatches()
	m, err := x.match(r.Method, r.URL.Path)
	if err != nil {
		x.fail(err, nil)
		return
	}

	maxBody := s.cfg.MaxBody
	if m.Route.MaxBody != nil {
		maxBody = *m.Route.MaxBody // 0: no body accepted
	}
	body, n, err := s.readBody(x.w, r, maxBody)
	x.rec.BytesIn = n
	if err != nil {
		x.fail(err, nil)
		return
	}
	defer body.Close()
	x.bodyRead = true

	req := x.cgiRequest(m, body.Len())
	stdin, closeStdin, err := body.StdinReader()
	if err != nil {
		x.fail(err, nil)
		return
	}
	defer closeStdin()
	hopStart, hopPath := s.now(), r.URL.Path
	for hop := 0; ; hop++ {
		run := x.runCell(m, req, stdin)
		redirect := run.err == nil && run.hdr != nil && run.hdr.Local && run.bodyEmpty() && run.res != nil &&
			(run.res.Cause == sandbox.CauseOK || run.res.Cause == sandbox.CauseExit)
		if run.res != nil {
			x.recordCell(run.res)
		}
		if !redirect {
			x.finish(run)
			run.close()
			return
		}
		run.close()
		if hop == s.cfg.MaxLocalRedirects {
			x.fail(fmt.Errorf("local redirect %d to %q: %w", hop+1, clip([]byte(run.hdr.Location)), ErrRedirectLoop), run.res)
			return
		}
		x.recordHop(req, hopPath, hopStart)
		hopStart = s.now()
		// RFC 3875 6.2.2: answer as if the client had asked for the
		// Location, with a GET and no body.
		req, m, hopPath, err = x.redirect(req, run.hdr.Location)
		if err != nil {
			x.fail(err, run.res)
			return
		}
		stdin = nil
	}
}

// recordHop writes the record of a cell that answered with a local
// redirect: every cell that ran has a record of its own (same request id,
// outcome local_redirect, no status: nothing was sent for it), and the
// request's last record has the response. Queue waits are per record.
//
// A hop whose cell's accounting is read late (recordLate), and every
// record after it, waits in x.hops: records keep the order the cells ran
// in, and the next cell does not wait for the last one's teardown.
func (x *exchange) recordHop(req *cgiRequest, path string, start time.Time) {
	hop := x.rec
	hop.Method, hop.Path, hop.Query = req.Method, path, req.Query
	hop.Outcome = accounting.OutcomeLocalRedirect
	hop.Status, hop.BytesOut = 0, 0
	hop.Time, hop.Duration = start, x.s.now().Sub(start)
	if x.recordsWait() {
		x.hops = append(x.hops, lateRecord{x.late, hop})
		x.late = nil
	} else {
		x.s.record(x.r.Context(), hop)
	}
	x.rec.QueueWait, x.rec.Queued, x.rec.BytesIn = 0, false, 0
	x.clearCell()
	x.hopRan = true
}

// unreadBody reports whether the request has a body the handler did not
// read to its end (it was refused before, or reading it failed).
func (x *exchange) unreadBody() bool {
	return !x.bodyRead && x.r.Body != nil && x.r.Body != http.NoBody && x.r.ContentLength != 0
}

// unreadBodyDrain is how long net/http may go on reading an unread request
// body after the response (see endUnreadBody).
const unreadBodyDrain = time.Second

// endUnreadBody makes sure an unread request body cannot hold the
// connection. After the handler returns, net/http reads up to 256 KiB of
// what is left of a body (so that the client, still sending, can read the
// response instead of a reset), with no deadline of its own: a client that
// stalls there would hold the connection for ever. So the read deadline is
// moved to unreadBodyDrain from now, or left in the past when the client
// was already too slow; the connection is then closed (sendError has said
// "Connection: close" on HTTP/1.x).
func (x *exchange) endUnreadBody() {
	if !x.unreadBody() || x.rec.Outcome == accounting.OutcomeClientTimeout {
		return
	}
	_ = http.NewResponseController(x.w).SetReadDeadline(time.Now().Add(unreadBodyDrain))
}

// checkRequest refuses what no route should see: a head guardConn refused
// (400, 431 when too large, 417 for an Expect other than 100-continue), a
// header block over Config.MaxHeaderBytes (see there) and a path with a
// NUL, which no program could receive in its environment.
func (x *exchange) checkRequest() error {
	r := x.r
	if status, reason, ok := rejectedHead(x.s.rejectToken, r); ok {
		// The request stands for a head guardConn refused: its method,
		// host, path and query are not the client's.
		x.rec.Method, x.rec.Host, x.rec.Path, x.rec.Query = "", "", "", ""
		x.live.update(func(v *InFlight) { v.Method, v.Host, v.Path = "", "", "" })
		sentinel := ErrBadRequest
		switch status {
		case http.StatusRequestHeaderFieldsTooLarge:
			sentinel = ErrHeaderTooLarge
		case http.StatusExpectationFailed:
			sentinel = ErrExpectationFailed
		}
		x.s.log.Debug("request head refused", "request_id", x.rec.RequestID, "client", r.RemoteAddr, "reason", reason)
		return fmt.Errorf("request head refused: %s: %w", reason, sentinel)
	}
	if n := headerSize(r); n > x.s.cfg.MaxHeaderBytes {
		return fmt.Errorf("request header of %d bytes, limit %d: %w", n, x.s.cfg.MaxHeaderBytes, ErrHeaderTooLarge)
	}
	if strings.IndexByte(r.URL.Path, 0) >= 0 {
		return fmt.Errorf("path %q: NUL byte: %w", r.URL.Path, ErrBadRequest)
	}
	if !httpguts.ValidHostHeader(r.Host) || !hostPort(r.Host) {
		// Bytes the Host field may not hold (the head check refuses them
		// there; an absolute-form target's authority, which net/http makes
		// the host, is held to the same), or not host[:port]: routing and
		// the worker's SERVER_NAME would read it two ways
		// ("[admin.example.com]junk" routed as admin.example.com).
		return fmt.Errorf("host %q: %w", r.Host, ErrBadRequest)
	}
	if r.Method == http.MethodConnect {
		return fmt.Errorf("CONNECT %s: %w", r.RequestURI, ErrTunnel)
	}
	return nil
}

// hostPort reports whether h is a Host field's host[:port] (RFC 9110
// 7.2): a name or IPv4 address, or an IPv6 one in brackets, then a colon
// and digits (or none) at most; empty (HTTP/1.0) passes.
func hostPort(h string) bool {
	port := ""
	if strings.HasPrefix(h, "[") {
		end := strings.IndexByte(h, ']')
		if end < 0 {
			return false
		}
		if a, err := netip.ParseAddr(h[1:end]); err != nil || !a.Is6() {
			return false
		}
		rest := h[end+1:]
		if rest != "" {
			if rest[0] != ':' {
				return false
			}
			port = rest[1:]
		}
	} else if i := strings.IndexByte(h, ':'); i >= 0 {
		port = h[i+1:]
		if strings.ContainsAny(h[:i], "[]") {
			return false
		}
	} else if strings.ContainsAny(h, "[]") {
		return false
	}
	for _, c := range []byte(port) {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// headerSize is the size of r's request line and header fields as an
// HTTP/1.1 client would send them ("Name: value\r\n" per value, and the
// blank line). For HTTP/2 it measures the same fields, not HPACK's encoding.
func headerSize(r *http.Request) int {
	n := len(r.Method) + 1 + len(r.RequestURI) + 1 + len(r.Proto) + 2
	if r.Host != "" {
		n += len("Host: ") + len(r.Host) + 2
	}
	for k, vv := range r.Header {
		for _, v := range vv {
			n += len(k) + 2 + len(v) + 2
		}
	}
	return n + 2
}

// cgiRequest describes the client's request for buildEnv.
func (x *exchange) cgiRequest(m *policy.Match, bodyLen int64) *cgiRequest {
	r := x.r
	req := &cgiRequest{
		Method:     r.Method,
		RequestURI: r.RequestURI,
		Query:      r.URL.RawQuery,
		ScriptName: m.ScriptName,
		PathInfo:   m.PathInfo,
		BodyLen:    bodyLen,
		Header:     r.Header,
		Host:       r.Host,
		Proto:      r.Proto,
		RemoteAddr: r.RemoteAddr,
		TLS:        r.TLS != nil,
		RequestID:  x.rec.RequestID,
	}
	if la, ok := r.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		req.LocalAddr = la
	}
	if req.RequestURI == "" || !strings.HasPrefix(req.RequestURI, "/") {
		// HTTP/2 and absolute-form requests: the origin form.
		req.RequestURI = r.URL.RequestURI()
	}
	return req
}

// match routes method and urlPath on the request's host, holding the match
// until releaseMatches; the route becomes the request's (x.route and the
// record's route and tenant).
func (x *exchange) match(method, urlPath string) (*policy.Match, error) {
	m, release, err := x.s.deps.Router.Match(x.r.Host, method, urlPath)
	if err != nil {
		return nil, err
	}
	x.releases = append(x.releases, release)
	x.route = m.Route
	x.rec.Route, x.rec.Tenant = m.Route.Name, m.Route.Tenant
	x.live.update(func(v *InFlight) { v.Route, v.Tenant = m.Route.Name, m.Route.Tenant })
	if err := dirProgram(m); err != nil {
		return nil, err
	}
	return m, nil
}

// releaseMatches lets go of every match the request held, once its cells
// have ended.
func (x *exchange) releaseMatches() {
	for _, release := range x.releases {
		release()
	}
	x.releases = nil
}

// redirect turns req into the GET of a local redirect to loc and routes it;
// the string is the new URL path.
func (x *exchange) redirect(prev *cgiRequest, loc string) (*cgiRequest, *policy.Match, string, error) {
	u, err := url.Parse(loc)
	if err != nil {
		return nil, nil, "", fmt.Errorf("local redirect to %q: %w: %w", clip([]byte(loc)), ErrInvalidResponse, err)
	}
	if strings.IndexByte(u.Path, 0) >= 0 {
		return nil, nil, "", fmt.Errorf("local redirect to %q: NUL byte: %w", clip([]byte(loc)), ErrInvalidResponse)
	}
	m, err := x.match(http.MethodGet, u.Path)
	if errors.Is(err, policy.ErrBadPath) {
		// The worker's mistake, not the client's: a 502, and the cause
		// is kept out of the chain (%v) so that it is not taken for a
		// bad request (400).
		return nil, nil, "", fmt.Errorf("local redirect to %q: %w: %v", clip([]byte(loc)), ErrInvalidResponse, err)
	}
	if err != nil {
		return nil, nil, "", fmt.Errorf("local redirect to %q: %w", clip([]byte(loc)), err)
	}
	req := *prev
	req.Method = http.MethodGet
	req.RequestURI = u.RequestURI()
	req.Query = u.RawQuery
	req.ScriptName, req.PathInfo = m.ScriptName, m.PathInfo
	req.BodyLen = 0
	return &req, m, u.Path, nil
}

// recordCell puts a cell's result in the record (the last cell's, after
// local redirects).
func (x *exchange) recordCell(res *sandbox.Result) {
	x.late = nil
	if res.Late() {
		// Its accounting is read after the answer (recordLate).
		x.late = res
	}
	x.rec.Cell = true
	x.rec.Wall = res.Wall
	x.rec.Usage = res.Usage
	x.rec.ExitCode = res.ExitCode
	x.rec.Signal = res.Signal
	x.rec.UID = res.UID
	x.rec.Unenforced = res.Unenforced
	x.rec.Spawn, x.rec.Clone = res.Spawn, res.Clone
}

// clearCell drops what recordCell put in the request's record (the same
// fields: keep the two in step): a cell's figures belong to its own
// record only, and the next hop may run none (its Location has no route,
// admission refuses it).
func (x *exchange) clearCell() {
	x.rec.Cell, x.rec.Wall, x.rec.Usage = false, 0, cgroup.Usage{}
	x.rec.ExitCode, x.rec.Signal, x.rec.UID, x.rec.Unenforced = 0, 0, 0, nil
	x.rec.Spawn, x.rec.Clone = 0, 0
}

// cancelReason says why a context ended for the request: the server is
// shutting down, or the client went away.
func (x *exchange) cancelReason() error {
	if x.s.base.Err() != nil {
		return ErrShuttingDown
	}
	if x.r.Context().Err() != nil {
		return ErrClientGone
	}
	return nil
}

// finish answers with the verdict on a run.
func (x *exchange) finish(run *cellRun) {
	v := x.verdict(run.err, run.res, run.hdr)
	x.rec.Outcome = v.Outcome
	if run.sent {
		// A streamed response: the status is out already, and in the
		// record (stream); run.hdr is nil when the stream was cut short.
		if !v.Pass {
			x.abort = true
		} else {
			x.addServerTiming(true)
		}
		x.logFailure(run.err, run.res, v)
		return
	}
	if !v.Pass {
		x.logFailure(run.err, run.res, v)
		x.sendError(v)
		return
	}
	x.sendSpooled(run)
}

// fail answers with the verdict on a request that did not get as far as a
// cell response.
func (x *exchange) fail(err error, res *sandbox.Result) {
	v := x.verdict(err, res, nil)
	x.rec.Outcome = v.Outcome
	x.logFailure(err, res, v)
	x.sendError(v)
}

// verdict is decide's verdict for the request, less a Retry-After when
// a cell of an earlier hop of its local redirects ran: what that cell did
// (a POST that charged a card) is done, and a Retry-After says that
// nothing of the request was processed.
func (x *exchange) verdict(err error, res *sandbox.Result, hdr *cgiHeader) verdict {
	v := decide(err, res, hdr)
	if x.hopRan && v.RetryAfter {
		v.RetryAfter = false
		v.Message = strings.TrimSuffix(v.Message, ", retry later") + "; the request may have been processed"
	}
	return v
}

// logFailure logs what the client is not told: the error behind a 5xx.
// When how the cell ended decided the status (decide's precedence: OOM
// kill, deadline, pids limit, crash), that is the error logged, and what
// the proxy found in the output (often "no output": the worker was killed
// before writing) is only the detail.
func (x *exchange) logFailure(err error, res *sandbox.Result, v verdict) {
	if v.Status < 500 {
		return
	}
	attrs := []any{"request_id", x.rec.RequestID, "route", x.rec.Route, "status", v.Status, "outcome", string(v.Outcome)}
	if cause := cellFailure(res); cause != nil {
		attrs = append(attrs, "err", cause)
		if err != nil {
			attrs = append(attrs, "detail", loggedError(err))
		}
	} else if err == nil || errors.Is(err, context.Canceled) {
		return
	} else {
		attrs = append(attrs, "err", loggedError(err))
	}
	x.s.log.Warn("request failed", attrs...)
}

// maxLoggedError bounds the text of a request's error in a log line: a
// worker's bytes or a client's may be in it (a Location, a path), and
// its escaping may multiply them by six; a line past 16 KiB is split by
// a container runtime's log into pieces that are not JSON.
const maxLoggedError = 1024

// loggedError is err's text for a log line, its middle cut beyond
// maxLoggedError: its start says what failed, its end why.
func loggedError(err error) string {
	s := err.Error()
	if len(s) <= maxLoggedError {
		return s
	}
	i, j := maxLoggedError/2, len(s)-maxLoggedError/2
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	for j < len(s) && !utf8.RuneStart(s[j]) {
		j++
	}
	return s[:i] + "...(" + strconv.Itoa(j-i) + " bytes cut)..." + s[j:]
}

// cellFailure says how a cell's end failed the request, nil when it ended
// by itself (an exit status, whatever it is, or a kill the proxy caused).
func cellFailure(res *sandbox.Result) error {
	if res == nil {
		return nil
	}
	switch res.Cause {
	case sandbox.CauseOOM:
		return fmt.Errorf("cell OOM-killed at its memory limit after %s", res.Wall)
	case sandbox.CauseDeadline:
		return fmt.Errorf("cell killed at its deadline after %s", res.Wall)
	case sandbox.CausePids:
		return fmt.Errorf("worker failed at the cell's process limit (pids.max) after %s, exit code %d", res.Wall, res.ExitCode)
	case sandbox.CauseSignal:
		return fmt.Errorf("worker killed by signal %d (%s) after %s", int(res.Signal), res.Signal, res.Wall)
	}
	return nil
}
