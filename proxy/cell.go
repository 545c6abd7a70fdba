package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"path/filepath"
	"sync"
	"time"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// cellRun is one run of a worker and what it wrote.
type cellRun struct {
	hdr  *cgiHeader      // nil when the output had no valid header
	res  *sandbox.Result // nil when no worker ran
	err  error           // the first failure (see decide)
	body *spool          // the spooled response body (spool mode)
	sent bool            // streaming: the status and headers were sent
}

// bodyEmpty reports whether the run's response has no body. A streamed
// one went to the client as it came, whatever it held: never empty, so
// that a Location it sent is not also followed as a local redirect.
func (c *cellRun) bodyEmpty() bool { return !c.sent && (c.body == nil || c.body.Len() == 0) }

func (c *cellRun) close() {
	if c.body != nil {
		c.body.Close()
		c.body = nil
	}
}

// readerPool recycles the buffered readers of workers' stdout.
var readerPool = sync.Pool{New: func() any { return bufio.NewReaderSize(nil, 4<<10) }}

// runCell admits the request, runs its worker with stdout on a pipe the
// proxy reads, and returns with the cell ended and its room released. In
// spool mode (the default) the response body is in run.body; with
// policy.ResponseStream it has been copied to the client as it came
// (run.sent).
func (x *exchange) runCell(m *policy.Match, req *cgiRequest, stdin io.Reader) *cellRun {
	s, route := x.s, m.Route
	run := &cellRun{}
	spec := sandbox.Spec{
		Path:    m.Program,
		Args:    []string{m.Program},
		Env:     buildEnv(req, route, &s.envOpt),
		Dir:     filepath.Dir(m.Program),
		Stdin:   stdin,
		Timeout: route.Timeout,
	}
	if err := s.deps.CellSpec(route, &spec); err != nil {
		run.err = fmt.Errorf("cell spec for route %s: %w", route.Name, err)
		return run
	}
	// Only Server-Timing puts the accounting in the response.
	spec.LateUsage = !route.ServerTiming

	live := x.live
	spec.Started = func(cellPath string, cpuBefore uint64) {
		live.update(func(v *InFlight) {
			v.State, v.CellPath, v.CellStarted, v.CellCPUBefore = StateRunning, cellPath, time.Now(), cpuBefore
		})
	}
	defer live.update(func(v *InFlight) {
		v.State, v.CellPath, v.CellStarted, v.CellCPUBefore = StateResponding, "", time.Time{}, 0
	})

	ctx := x.r.Context()
	if s.deps.Admitter != nil {
		live.queued(s.now())
		release, waited, err := s.deps.Admitter.Admit(ctx, route.Tenant, route.Memory)
		live.admitted(waited)
		x.rec.QueueWait, x.rec.Queued = x.rec.QueueWait+waited, true
		if err != nil {
			if reason := x.cancelReason(); reason != nil {
				err = fmt.Errorf("admission to tenant %s: %w: %w", route.Tenant, reason, err)
			}
			run.err = err
			return run
		}
		defer release()
	}
	live.update(func(v *InFlight) { v.State = StateRunning })

	// The read end ends once Run has returned (sandbox.OutputPipe): every
	// process of the cell is dead by then, and a copy of the write end
	// that another request's clone still holds would otherwise keep the
	// response open. A runner that leaves a process writing (PlainExec
	// with a daemon that left its process group) is so cut off too.
	pr, pw, err := sandbox.OutputPipe()
	if err != nil {
		run.err = fmt.Errorf("stdout pipe for route %s: %w", route.Name, err)
		return run
	}
	defer pr.Close()
	stderr := &capBuffer{limit: s.cfg.StderrLimit}
	spec.Stdout, spec.Stderr = pw, stderr

	streaming := route.Response == policy.ResponseStream
	runCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	type outcome struct {
		res sandbox.Result
		err error
	}
	done := make(chan outcome, 1)
	go func() {
		res, err := s.deps.Runner.Run(runCtx, spec)
		pw.Close()
		pr.WritersGone()
		done <- outcome{res, err}
	}()

	br := readerPool.Get().(*bufio.Reader)
	br.Reset(pr)
	defer func() { br.Reset(nil); readerPool.Put(br) }()
	var outErr error // what the proxy found wrong with the output
	hdr, err := readCGIHeader(br, s.cfg.MaxResponseHeader)
	if err != nil {
		outErr = err
		cancel()
	} else if streaming && !x.localRedirectAhead(hdr, br) {
		outErr = x.stream(hdr, br, cancel)
		run.sent = true
	} else {
		run.body = newSpool(s.cfg.TempDir, s.cfg.ResponseMemory, s.cfg.MaxResponse, s.spools)
		if _, err := io.Copy(run.body, br); err != nil {
			switch {
			case errors.Is(err, ErrSpoolFull):
				err = fmt.Errorf("%w: over %d bytes", ErrResponseTooLarge, s.cfg.MaxResponse)
			case errors.Is(err, ErrSpoolBudget):
				err = fmt.Errorf("spool response: %w", err)
			default:
				err = fmt.Errorf("spool response: %w", err)
			}
			outErr = err
			cancel()
		} else if hdr.ContentLength >= 0 && hdr.ContentLength != run.body.Len() && x.r.Method != http.MethodHead && bodyAllowed(hdr.Status) {
			// (A 304's length is the one its 200 would have, RFC 9110
			// §8.6, and a 204's or 205's body is dropped.)
			outErr = fmt.Errorf("%w: Content-Length %d but %d body bytes", ErrInvalidResponse, hdr.ContentLength, run.body.Len())
		}
	}
	// Whatever is left (after an error) is read and dropped so that the
	// worker never blocks on a full pipe while its cell is being killed.
	_, _ = io.Copy(io.Discard, br)
	o := <-done
	x.logStderr(stderr)

	if outErr == nil {
		run.hdr = hdr
	}
	if o.err != nil && o.res.Started.IsZero() {
		// The worker never ran.
		if reason := x.cancelReason(); reason != nil {
			o.err = fmt.Errorf("%w: %w", reason, o.err)
		}
		run.err = o.err
		return run
	}
	run.res = &o.res
	if o.err != nil {
		// The worker ran and the Result is complete; the runner reports
		// a problem of its own (a stream, a cell that did not empty).
		s.log.Warn("cell", "request_id", x.rec.RequestID, "route", route.Name, "err", o.err)
	}
	// A kill explains the output it cut short: the client leaving or a
	// shutdown comes before what the proxy found wrong with the output.
	reason := x.cancelReason()
	switch {
	case o.res.Cause == sandbox.CauseKilled && reason != nil:
		run.err = reason
	case outErr != nil:
		run.err = outErr
	}
	return run
}

// localRedirectAhead reports, for a header that would be a local redirect,
// whether the body is empty too (the worker's output ends): only then is
// the run a local redirect, and it must not be streamed.
func (x *exchange) localRedirectAhead(hdr *cgiHeader, br *bufio.Reader) bool {
	if !hdr.Local {
		return false
	}
	_, err := br.Peek(1)
	return err != nil
}

// logStderr logs what the worker wrote to stderr, with the request id.
func (x *exchange) logStderr(b *capBuffer) {
	text, dropped := b.contents()
	if text == "" {
		return
	}
	x.s.log.Info("worker stderr", "request_id", x.rec.RequestID, "route", x.rec.Route,
		"stderr", text, "dropped_bytes", dropped)
}

// capBuffer keeps the first limit bytes written to it and counts the rest.
// It never fails a write, so a chatty worker is not disturbed.
type capBuffer struct {
	mu      sync.Mutex
	limit   int
	buf     []byte
	dropped int64
}

func (b *capBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	room := b.limit - len(b.buf)
	if room > len(p) {
		room = len(p)
	}
	b.buf = append(b.buf, p[:room]...)
	b.dropped += int64(len(p) - room)
	return len(p), nil
}

// contents returns what was kept and how many bytes were dropped.
func (b *capBuffer) contents() (string, int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return string(b.buf), b.dropped
}
