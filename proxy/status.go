package proxy

import (
	"errors"
	"net/http"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// StatusClientClosed is the status logged (never sent) when the client went
// away before its response was written, as nginx logs it.
const StatusClientClosed = 499

// verdict is how a request ends for the client.
type verdict struct {
	Status  int
	Outcome accounting.Outcome
	// Message is the text/plain error body (one line, no internals);
	// "" when the worker's response is passed through.
	Message string
	// RetryAfter adds the Retry-After header (503).
	RetryAfter bool
	// Allow is the Allow header of a 405.
	Allow []string
	// Close asks for the connection to be closed after the response (the
	// request body was not read to its end).
	Close bool
	// Pass: send the worker's response (hdr) as it is.
	Pass bool
}

// decide maps how a request ended to what the client gets. It is the only
// place where an outcome becomes an HTTP status.
//
// err is the first failure on the request's path (front end, routing,
// admission, runner, the worker's output), nil when there was none; res is
// the cell's result when a worker ran (nil otherwise); hdr the worker's
// checked CGI header, nil when it had none or an invalid one.
//
// Precedence: failures before any cell (the request itself, routing,
// admission, no cell) decide alone. Once a worker ran, how its cell ended
// comes first, since it explains any damage to the output: OOM kill,
// deadline, pids limit, crash. Then the proxy's findings on the output
// (too large, invalid, a redirect loop), then a kill the proxy caused
// (client gone, shutdown). Only a worker that exited by itself with a valid
// header, whatever its exit status, has its response passed on (RFC 3875:
// the response counts, not the status).
func decide(err error, res *sandbox.Result, hdr *cgiHeader) verdict {
	var me *policy.MethodError
	switch {
	case err == nil:
	case errors.Is(err, ErrClientGone):
		return verdict{Status: StatusClientClosed, Outcome: lostOutcome(err)}
	case errors.Is(err, ErrHeaderTooLarge):
		return verdict{Status: http.StatusRequestHeaderFieldsTooLarge, Outcome: accounting.OutcomeHeaderTooLarge,
			Message: "request header fields too large", Close: true}
	case errors.Is(err, sandbox.ErrRequestTooLarge):
		// The meta-variables (query and headers) do not fit in a fork
		// route's spawn; the body was read, the connection can stay.
		return verdict{Status: http.StatusRequestHeaderFieldsTooLarge, Outcome: accounting.OutcomeHeaderTooLarge,
			Message: "request header fields too large"}
	case errors.Is(err, ErrBodyTooLarge):
		return verdict{Status: http.StatusRequestEntityTooLarge, Outcome: accounting.OutcomeBodyTooLarge,
			Message: "request body too large", Close: true}
	case errors.Is(err, ErrClientTimeout):
		return verdict{Status: http.StatusRequestTimeout, Outcome: accounting.OutcomeClientTimeout,
			Message: "request body sent too slowly", Close: true}
	case errors.Is(err, ErrBadRequest), errors.Is(err, policy.ErrBadPath):
		return verdict{Status: http.StatusBadRequest, Outcome: accounting.OutcomeBadRequest, Message: "bad request", Close: true}
	case errors.Is(err, ErrExpectationFailed):
		return verdict{Status: http.StatusExpectationFailed, Outcome: accounting.OutcomeExpectationFailed,
			Message: "expectation failed", Close: true}
	case errors.Is(err, ErrTunnel):
		// No route may run it: a front proxy that forwarded it and read a
		// 2xx would tunnel the connection's next bytes past its own
		// checks. Closed: the front must not go on with it either.
		return verdict{Status: http.StatusNotImplemented, Outcome: accounting.OutcomeMethodNotAllowed,
			Message: "CONNECT is not supported", Close: true}
	case errors.As(err, &me):
		return verdict{Status: http.StatusMethodNotAllowed, Outcome: accounting.OutcomeMethodNotAllowed,
			Message: "method not allowed", Allow: me.Allow}
	case errors.Is(err, policy.ErrNoRoute):
		return verdict{Status: http.StatusNotFound, Outcome: accounting.OutcomeNoRoute, Message: "not found"}
	case errors.Is(err, policy.ErrQueueFull):
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeQueueFull,
			Message: "server busy, retry later", RetryAfter: true}
	case errors.Is(err, policy.ErrQueueTimeout):
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeQueueTimeout,
			Message: "server busy, retry later", RetryAfter: true}
	case errors.Is(err, policy.ErrUnknownTenant):
		// Defence in depth: a request holds the policy it was routed under
		// (Router), so a reload cannot make its tenant unknown.
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeNoTenant,
			Message: "service unavailable, retry later", RetryAfter: true}
	case errors.Is(err, policy.ErrTooLarge):
		// A reload shrank a budget below a route's memory limit.
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeOverBudget,
			Message: "service unavailable, retry later", RetryAfter: true}
	case errors.Is(err, ErrSpoolBudget) && res == nil:
		// The front has no room for the body: like a full queue.
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeSpoolFull,
			Message: "server busy, retry later", RetryAfter: true}
	case errors.Is(err, ErrSpoolBudget):
		// No room for the response of a worker that ran, and may have
		// done what the request asked (a POST that charged a card): not
		// a Retry-After, which says it was not processed.
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeSpoolFull,
			Message: "server busy: the response could not be held; the request may have been processed"}
	case errors.Is(err, sandbox.ErrPreloaderLost):
		// The preloader died (or answered garbage) after it took the
		// spawn, and its child may have run the request (a POST that
		// charged a card): not a 503 with Retry-After, which says it was
		// not processed.
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomePreloaderLost,
			Message: "the request handler was lost; the request may have been processed"}
	case errors.Is(err, ErrShuttingDown) && res == nil:
		// Before the waits it cut short (for a cell, a uid, a
		// preloader): the stop is why they failed.
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeShutdown,
			Message: "server shutting down, retry later", RetryAfter: true}
	case errors.Is(err, sandbox.ErrNoCell), errors.Is(err, sandbox.ErrNoUID), errors.Is(err, sandbox.ErrNoPreloader):
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeNoCell,
			Message: "server busy, retry later", RetryAfter: true}
	case errors.Is(err, ErrTooManyFromClient):
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeClientCap,
			Message: "too many requests in flight from this client, retry later", RetryAfter: true}
	case errors.Is(err, sandbox.ErrSpawn):
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeSpawnFailed,
			Message: "the request handler could not be started"}
	case res == nil:
		// A failure of the proxy itself (a spool file, a bad Spec, a
		// route user without credentials).
		return verdict{Status: http.StatusInternalServerError, Outcome: accounting.OutcomeInternal,
			Message: "internal server error"}
	}

	switch res.Cause {
	case sandbox.CauseOOM:
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeOOM,
			Message: "the request exceeded its memory limit"}
	case sandbox.CauseOOMBudget:
		// Not the request's fault: its tenant's (or the global) budget
		// ran out under it, and it may succeed later; but it ran, and may
		// have done what it was asked: no Retry-After (as for
		// ErrPreloaderLost).
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeOOMBudget,
			Message: "the server ran out of memory for this service; the request may have been processed"}
	case sandbox.CauseDeadline:
		return verdict{Status: http.StatusGatewayTimeout, Outcome: accounting.OutcomeDeadline,
			Message: "the request exceeded its time limit"}
	case sandbox.CausePids:
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomePids,
			Message: "the request exceeded its process limit"}
	case sandbox.CauseSignal:
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeSignal,
			Message: "the request handler crashed"}
	}
	switch {
	case errors.Is(err, ErrResponseTooLarge):
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeBadGateway,
			Message: "the response was too large"}
	case errors.Is(err, ErrInvalidResponse), errors.Is(err, ErrRedirectLoop):
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeBadGateway,
			Message: "the request handler sent an invalid response"}
	case errors.Is(err, ErrShuttingDown):
		// Its worker, killed at the drain's end, ran: no Retry-After,
		// as above.
		return verdict{Status: http.StatusServiceUnavailable, Outcome: accounting.OutcomeShutdown,
			Message: "server shutting down: the request was stopped and may have been processed"}
	case err != nil:
		// A runner or spool failure although the worker ran.
		return verdict{Status: http.StatusInternalServerError, Outcome: accounting.OutcomeInternal,
			Message: "internal server error"}
	case res.Cause == sandbox.CauseKilled:
		// Killed by a cancelled context that was neither the client
		// leaving (ErrClientGone above) nor a shutdown: the runner's own
		// reason.
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeKilled,
			Message: "the request handler was stopped"}
	case hdr == nil:
		return verdict{Status: http.StatusBadGateway, Outcome: accounting.OutcomeBadGateway,
			Message: "the request handler sent an invalid response"}
	}
	return verdict{Status: hdr.Status, Outcome: accounting.Outcome(res.Cause), Pass: true}
}
