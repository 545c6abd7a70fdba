package proxy

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"testing"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

func TestDecide(t *testing.T) {
	valid := &cgiHeader{Status: 201, Header: http.Header{}, ContentLength: -1}
	res := func(c sandbox.Cause) *sandbox.Result { r := fakeResult(c); return &r }
	wrap := func(err error) error { return fmt.Errorf("op on value: %w", err) }
	tests := []struct {
		name        string
		err         error
		res         *sandbox.Result
		hdr         *cgiHeader
		wantStatus  int
		wantOutcome accounting.Outcome
		wantPass    bool
		wantRetry   bool
		wantClose   bool
		wantMessage string
	}{
		{name: "ok passes the worker's status", res: res(sandbox.CauseOK), hdr: valid, wantStatus: 201, wantOutcome: accounting.OutcomeOK, wantPass: true},
		{name: "non-zero exit with a valid response passes it", res: res(sandbox.CauseExit), hdr: valid, wantStatus: 201, wantOutcome: accounting.OutcomeExit, wantPass: true},
		{name: "non-zero exit without output", res: res(sandbox.CauseExit), err: wrap(ErrInvalidResponse), wantStatus: 502, wantOutcome: accounting.OutcomeBadGateway},
		{name: "ok with invalid output", res: res(sandbox.CauseOK), err: wrap(ErrInvalidResponse), wantStatus: 502, wantOutcome: accounting.OutcomeBadGateway},
		{name: "oom", res: res(sandbox.CauseOOM), hdr: valid, wantStatus: 502, wantOutcome: accounting.OutcomeOOM, wantMessage: "the request exceeded its memory limit"},
		{name: "oom at the tenant's budget", res: res(sandbox.CauseOOMBudget), hdr: valid, wantStatus: 503, wantOutcome: accounting.OutcomeOOMBudget, wantRetry: false, wantMessage: "the server ran out of memory for this service; the request may have been processed"},
		{name: "oom beats invalid output", res: res(sandbox.CauseOOM), err: wrap(ErrInvalidResponse), wantStatus: 502, wantOutcome: accounting.OutcomeOOM, wantMessage: "the request exceeded its memory limit"},
		{name: "deadline", res: res(sandbox.CauseDeadline), hdr: valid, wantStatus: 504, wantOutcome: accounting.OutcomeDeadline},
		{name: "pids", res: res(sandbox.CausePids), wantStatus: 502, wantOutcome: accounting.OutcomePids},
		{name: "crash", res: res(sandbox.CauseSignal), hdr: valid, wantStatus: 502, wantOutcome: accounting.OutcomeSignal},
		{name: "response too large", res: res(sandbox.CauseKilled), err: wrap(ErrResponseTooLarge), wantStatus: 502, wantOutcome: accounting.OutcomeBadGateway},
		{name: "redirect loop", res: res(sandbox.CauseOK), err: wrap(ErrRedirectLoop), wantStatus: 502, wantOutcome: accounting.OutcomeBadGateway},
		{name: "killed: client gone", res: res(sandbox.CauseKilled), err: wrap(ErrClientGone), wantStatus: StatusClientClosed, wantOutcome: accounting.OutcomeClientGone},
		// A worker that ran may have done what the request asked: no
		// Retry-After, which says it was not processed.
		{name: "killed: shutdown", res: res(sandbox.CauseKilled), err: wrap(ErrShuttingDown), wantStatus: 503, wantOutcome: accounting.OutcomeShutdown, wantRetry: false},
		{name: "response over the spool budget", res: res(sandbox.CauseKilled), err: wrap(ErrSpoolBudget), wantStatus: 503, wantOutcome: accounting.OutcomeSpoolFull, wantRetry: false},
		{name: "body over the spool budget", err: wrap(ErrSpoolBudget), wantStatus: 503, wantOutcome: accounting.OutcomeSpoolFull, wantRetry: true},
		{name: "killed by the runner", res: res(sandbox.CauseKilled), wantStatus: 502, wantOutcome: accounting.OutcomeKilled},
		{name: "runner error after the worker ran", res: res(sandbox.CauseOK), hdr: valid, err: wrap(sandbox.ErrStreams), wantStatus: 500, wantOutcome: accounting.OutcomeInternal},
		{name: "spawn failed", err: wrap(sandbox.ErrSpawn), wantStatus: 502, wantOutcome: accounting.OutcomeSpawnFailed},
		{name: "no cell", err: wrap(sandbox.ErrNoCell), wantStatus: 503, wantOutcome: accounting.OutcomeNoCell, wantRetry: true},
		{name: "no uid", err: wrap(sandbox.ErrNoUID), wantStatus: 503, wantOutcome: accounting.OutcomeNoCell, wantRetry: true},
		{name: "no preloader", err: wrap(sandbox.ErrNoPreloader), wantStatus: 503, wantOutcome: accounting.OutcomeNoCell, wantRetry: true},
		{name: "preloader lost after it took the request", err: wrap(sandbox.ErrPreloaderLost), wantStatus: 502, wantOutcome: accounting.OutcomePreloaderLost},
		{name: "bad spec", err: wrap(sandbox.ErrSpec), wantStatus: 500, wantOutcome: accounting.OutcomeInternal},
		{name: "too large for the preloader", err: wrap(sandbox.ErrRequestTooLarge), wantStatus: 431, wantOutcome: accounting.OutcomeHeaderTooLarge},
		{name: "queue full", err: wrap(policy.ErrQueueFull), wantStatus: 503, wantOutcome: accounting.OutcomeQueueFull, wantRetry: true},
		{name: "queue timeout", err: wrap(policy.ErrQueueTimeout), wantStatus: 503, wantOutcome: accounting.OutcomeQueueTimeout, wantRetry: true},
		{name: "unknown tenant", err: wrap(policy.ErrUnknownTenant), wantStatus: 503, wantOutcome: accounting.OutcomeNoTenant, wantRetry: true},
		{name: "memory over the budget", err: wrap(policy.ErrTooLarge), wantStatus: 503, wantOutcome: accounting.OutcomeOverBudget, wantRetry: true},
		{name: "client left the queue", err: fmt.Errorf("admit: %w: %w", ErrClientGone, context.Canceled), wantStatus: StatusClientClosed, wantOutcome: accounting.OutcomeClientGone},
		{name: "shutdown while waiting for a cell", err: fmt.Errorf("%w: %w", ErrShuttingDown, wrap(sandbox.ErrNoCell)), wantStatus: 503, wantOutcome: accounting.OutcomeShutdown, wantRetry: true},
		{name: "shutdown while waiting for a preloader", err: fmt.Errorf("%w: %w", ErrShuttingDown, wrap(sandbox.ErrNoPreloader)), wantStatus: 503, wantOutcome: accounting.OutcomeShutdown, wantRetry: true},
		{name: "shutdown in the queue", err: fmt.Errorf("admit: %w: %w", ErrShuttingDown, context.Canceled), wantStatus: 503, wantOutcome: accounting.OutcomeShutdown, wantRetry: true},
		{name: "no route", err: wrap(policy.ErrNoRoute), wantStatus: 404, wantOutcome: accounting.OutcomeNoRoute},
		{name: "bad path", err: wrap(policy.ErrBadPath), wantStatus: 400, wantOutcome: accounting.OutcomeBadRequest, wantClose: true},
		{name: "method not allowed", err: &policy.MethodError{Method: "PUT", Allow: []string{"GET", "POST"}}, wantStatus: 405, wantOutcome: accounting.OutcomeMethodNotAllowed},
		{name: "body too large", err: wrap(ErrBodyTooLarge), wantStatus: 413, wantOutcome: accounting.OutcomeBodyTooLarge, wantClose: true},
		{name: "client too slow", err: wrap(ErrClientTimeout), wantStatus: 408, wantOutcome: accounting.OutcomeClientTimeout, wantClose: true},
		{name: "header too large", err: wrap(ErrHeaderTooLarge), wantStatus: 431, wantOutcome: accounting.OutcomeHeaderTooLarge, wantClose: true},
		{name: "bad request body", err: wrap(ErrBadRequest), wantStatus: 400, wantOutcome: accounting.OutcomeBadRequest, wantClose: true},
		{name: "expectation", err: wrap(ErrExpectationFailed), wantStatus: 417, wantOutcome: accounting.OutcomeExpectationFailed, wantClose: true},
		{name: "proxy failure before a cell", err: fmt.Errorf("spool: disk full"), wantStatus: 500, wantOutcome: accounting.OutcomeInternal},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			v := decide(tt.err, tt.res, tt.hdr)
			if v.Status != tt.wantStatus || v.Outcome != tt.wantOutcome || v.Pass != tt.wantPass ||
				v.RetryAfter != tt.wantRetry || v.Close != tt.wantClose {
				t.Errorf("decide = %+v, want status %d outcome %s pass %v retry %v close %v",
					v, tt.wantStatus, tt.wantOutcome, tt.wantPass, tt.wantRetry, tt.wantClose)
			}
			if !v.Pass && v.Status != StatusClientClosed && v.Message == "" {
				t.Errorf("error verdict without a message")
			}
			if tt.wantMessage != "" && v.Message != tt.wantMessage {
				t.Errorf("message %q, want %q", v.Message, tt.wantMessage)
			}
			if tt.wantStatus == 405 && !slices.Equal(v.Allow, []string{"GET", "POST"}) {
				t.Errorf("Allow %v", v.Allow)
			}
		})
	}
}
