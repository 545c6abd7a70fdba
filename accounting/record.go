package accounting

import (
	"syscall"
	"time"

	"github.com/cellgate/cellgate/cgroup"
)

// Outcome says how a request ended. The cell outcomes have the same values
// as sandbox.Cause, so proxy converts with Outcome(result.Cause); the others
// are decided by the front end. The set is fixed so that it can be a metric
// label: Metrics reports any other value as OutcomeOther.
type Outcome string

// Outcomes of a request that ran in a cell (the values of sandbox.Cause).
const (
	OutcomeOK     Outcome = "ok"     // exit status 0
	OutcomeExit   Outcome = "exit"   // non-zero exit status
	OutcomeSignal Outcome = "signal" // the worker crashed on a signal
	OutcomeOOM    Outcome = "oom"    // the kernel OOM-killed the cell at its own memory limit
	// OutcomeOOMBudget: the kernel OOM-killed the cell because its tenant's
	// (or the global) memory budget ran out, not its own limit: 503.
	OutcomeOOMBudget Outcome = "oom_budget"
	OutcomeDeadline  Outcome = "deadline" // the wall-clock deadline passed
	OutcomePids      Outcome = "pids"     // pids.max refused a fork and the worker failed
	OutcomeKilled    Outcome = "killed"   // cellgate killed the cell (cancelled, shutdown)
)

// Outcomes decided by the front end, with or without a cell.
const (
	OutcomeQueueFull         Outcome = "queue_full"         // admission queue full: 503
	OutcomeQueueTimeout      Outcome = "queue_timeout"      // waited too long for admission: 503
	OutcomeNoRoute           Outcome = "no_route"           // no route matched: 404
	OutcomeBadRequest        Outcome = "bad_request"        // malformed request: 400
	OutcomeExpectationFailed Outcome = "expectation_failed" // an Expect other than 100-continue: 417
	OutcomeMethodNotAllowed  Outcome = "method_not_allowed" // 405
	OutcomeBodyTooLarge      Outcome = "body_too_large"     // 413
	OutcomeHeaderTooLarge    Outcome = "header_too_large"   // 431
	OutcomeClientTimeout     Outcome = "client_timeout"     // client too slow sending the request: 408
	OutcomeClientGone        Outcome = "client_gone"        // client went away before the response was written
	OutcomeSlowReader        Outcome = "slow_reader"        // client cut off: it read the response slower than the minimum rate
	OutcomeBadGateway        Outcome = "bad_gateway"        // the worker's CGI response was invalid: 502
	OutcomeSpawnFailed       Outcome = "spawn_failed"       // the cell or worker could not be started
	OutcomeNoCell            Outcome = "no_cell"            // the runner had no cell or uid free: 503
	OutcomePreloaderLost     Outcome = "preloader_lost"     // a fork route's preloader died after it took the request, which may have run: 502
	OutcomeSpoolFull         Outcome = "spool_full"         // the spools of all requests hold their disk budget: 503
	OutcomeShutdown          Outcome = "shutdown"           // cancelled by a shutdown: 503
	OutcomeNoTenant          Outcome = "no_tenant"          // admission does not know the route's tenant: 503
	OutcomeOverBudget        Outcome = "over_budget"        // the route's memory exceeds its tenant's or the global budget: 503
	OutcomeClientCap         Outcome = "client_cap"         // a forwarded client over its requests-in-flight cap: 503
	OutcomeInternal          Outcome = "internal"           // any other server-side failure
	OutcomeLocalRedirect     Outcome = "local_redirect"     // a cell answered with a local redirect (RFC 3875 6.2.2); the request went on in another cell
	OutcomeOther             Outcome = "other"              // a value outside this set (metrics only)
)

// known reports whether o is one of the Outcome constants.
func (o Outcome) known() bool {
	switch o {
	case OutcomeOK, OutcomeExit, OutcomeSignal, OutcomeOOM, OutcomeOOMBudget, OutcomeDeadline, OutcomePids, OutcomeKilled,
		OutcomeQueueFull, OutcomeQueueTimeout, OutcomeNoRoute, OutcomeBadRequest, OutcomeExpectationFailed, OutcomeMethodNotAllowed,
		OutcomeBodyTooLarge, OutcomeHeaderTooLarge, OutcomeClientTimeout, OutcomeClientGone, OutcomeSlowReader,
		OutcomeBadGateway, OutcomeSpawnFailed, OutcomeNoCell, OutcomePreloaderLost, OutcomeSpoolFull, OutcomeShutdown, OutcomeNoTenant, OutcomeOverBudget, OutcomeClientCap, OutcomeInternal, OutcomeLocalRedirect, OutcomeOther:
		return true
	}
	return false
}

// Record is everything cellgate knows about one request when it is done.
// proxy fills it as the request goes (front end, route, admission, cell) and
// hands it to Log, Metrics.ObserveRequest and, when the route asks,
// ServerTiming. The cell fields mean something only when Cell is true.
type Record struct {
	// Time is when the request arrived (the access log's "time"; the
	// record is written Duration later); zero means the time the record
	// is written.
	Time      time.Time
	RequestID string
	Method    string
	// Host is the request's Host header (or the URL's host for HTTP/2),
	// as the client sent it: what routing matched on.
	Host string
	// Path is the URL path, Query the raw query string without "?". The
	// query is logged: keep secrets out of URLs (tokens belong in
	// headers, which are not logged).
	Path  string
	Query string
	// Proto is the protocol, "HTTP/1.1" or "HTTP/2.0".
	Proto string
	// UserAgent and Referer are those headers ("" when absent).
	UserAgent  string
	Referer    string
	Status     int   // HTTP status sent to the client
	BytesIn    int64 // request body bytes read from the client
	BytesOut   int64 // response body bytes written to the client
	ClientAddr string
	// Route and Tenant come from the policy ("" when no route matched).
	Route   string
	Tenant  string
	Outcome Outcome
	// QueueWait is the time between the request being ready to run and its
	// cell starting (or the admission wait giving up). Queued says
	// admission was asked: the wait was measured, whatever came of it
	// (a cell, a timeout, the client gone while it waited, no cell).
	QueueWait time.Duration
	Queued    bool
	// Duration is the whole request, from arrival to the response written.
	Duration time.Duration

	// Cell is true when a cell ran for this request; the fields below are
	// then sandbox.Result's.
	Cell       bool
	Wall       time.Duration  // from the worker's start to the cell being empty
	Usage      cgroup.Usage   // what the kernel reported for the cell
	ExitCode   int            // exit status, or -1 when ended by a signal
	Signal     syscall.Signal // the signal that ended the worker, or 0
	UID        uint32         // the uid the worker ran as
	Unenforced []string       // controllers whose limits were not enforced
	// Spawn is a fork request's hand-off to its preloader, Clone the
	// preloader's own part of it (0 for cgi).
	Spawn, Clone time.Duration
}
