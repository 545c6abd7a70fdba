package proxy

import (
	"slices"
	"sync"
	"time"
)

// InFlight is one request being served now, as the status page shows it.
type InFlight struct {
	RequestID string
	Method    string
	Host      string
	Path      string
	Client    string
	// Route and Tenant are "" until the request is routed.
	Route  string
	Tenant string
	// Arrived is when the request arrived.
	Arrived time.Time
	// State is where the request is: StateReading (its header or body),
	// StateQueued (waiting for admission), StateRunning (its cell starts
	// or runs) or
	// StateResponding (the cell has ended; the response is being sent).
	State string
	// QueueWait is the time spent waiting for admission, the current wait
	// included while Queued.
	QueueWait time.Duration
	// CellPath is the running cell's cgroup directory ("" when none runs
	// or the runner has no cells), for its live figures; CellStarted is
	// when its worker started; CellCPUBefore is the CPU its group had used
	// before the request (a reused group's, sandbox.Spec.Started), which
	// its live CPU figure leaves out.
	CellPath      string
	CellStarted   time.Time
	CellCPUBefore uint64
}

// The states of an InFlight request.
const (
	StateReading    = "reading"
	StateQueued     = "queued"
	StateRunning    = "running"
	StateResponding = "responding"
)

// inflight is the live entry of one request, updated as it goes; the
// server's set holds every entry until its request ends.
type inflight struct {
	mu          sync.Mutex
	v           InFlight
	queuedSince time.Time
}

func (e *inflight) update(f func(v *InFlight)) {
	e.mu.Lock()
	f(&e.v)
	e.mu.Unlock()
}

// queued marks the start of an admission wait.
func (e *inflight) queued(now time.Time) {
	e.mu.Lock()
	e.v.State, e.queuedSince = StateQueued, now
	e.mu.Unlock()
}

// admitted ends an admission wait that took waited.
func (e *inflight) admitted(waited time.Duration) {
	e.mu.Lock()
	e.v.QueueWait, e.queuedSince = e.v.QueueWait+waited, time.Time{}
	e.mu.Unlock()
}

func (e *inflight) snapshot(now time.Time) InFlight {
	e.mu.Lock()
	defer e.mu.Unlock()
	v := e.v
	if !e.queuedSince.IsZero() {
		v.QueueWait += now.Sub(e.queuedSince)
	}
	return v
}

// InFlight returns the requests being served now, oldest first.
func (s *Server) InFlight() []InFlight {
	now := s.now()
	var out []InFlight
	s.inflight.Range(func(k, _ any) bool {
		out = append(out, k.(*inflight).snapshot(now))
		return true
	})
	slices.SortFunc(out, func(a, b InFlight) int { return a.Arrived.Compare(b.Arrived) })
	return out
}
