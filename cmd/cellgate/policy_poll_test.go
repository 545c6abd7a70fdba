package main

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cellgate/cellgate/policy"
)

// inForceOf is a policy in force the test sets, as reloads would.
func inForceOf(content string) (func() [sha256.Size]byte, func(string)) {
	var cur atomic.Pointer[[sha256.Size]byte]
	set := func(content string) {
		sum := sha256.Sum256([]byte(content))
		cur.Store(&sum)
	}
	set(content)
	return func() [sha256.Size]byte { return *cur.Load() }, set
}

// TestPolicyPollerDue: only a content other than the policy in force is
// due; an unreadable file is not (the running policy stays).
func TestPolicyPollerDue(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	inForce, _ := inForceOf("a")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), time.Second, inForce)
	steps := []struct {
		name  string
		write func()
		want  bool
	}{
		{"untouched", func() {}, false},
		{"same content rewritten", func() { writeFile(t, path, "a") }, false},
		{"new content", func() { writeFile(t, path, "b") }, true},
		{"removed", func() { os.Remove(path) }, false},
		{"back with the same content", func() { writeFile(t, path, "b") }, true},
		{"replaced by a symlink swap", func() {
			next := path + ".next"
			writeFile(t, next, "c")
			if err := os.Rename(next, path); err != nil {
				t.Fatal(err)
			}
		}, true},
		{"back to the policy in force", func() { writeFile(t, path, "a") }, false},
	}
	for _, s := range steps {
		s.write()
		if _, got := p.due(time.Now()); got != s.want {
			t.Errorf("%s: due = %v, want %v", s.name, got, s.want)
		}
	}
}

// TestPolicyPollerComparesWithPolicyInForce: the poller compares the file
// with the policy serving, whoever loaded it: a file changed while serve
// started up is due, and one a reload by SIGHUP (or cellgate reload)
// applied is not. The poller kept the content it had read or started
// from, and reloaded what a SIGHUP had applied already (restarting every
// preloader).
func TestPolicyPollerComparesWithPolicyInForce(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyA)
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), time.Second, d.policyInForce)
	if _, due := p.due(time.Now()); due {
		t.Errorf("the file serve loaded, untouched, is due")
	}
	writeFile(t, path, reloadPolicyA+"# edited during start-up\n")
	if _, due := p.due(time.Now()); !due {
		t.Errorf("a file changed after serve loaded it is not due")
	}
	writeFile(t, path, reloadPolicyB)
	if err := d.reload(context.Background()); err != nil { // a SIGHUP
		t.Fatal(err)
	}
	if _, due := p.due(time.Now()); due {
		t.Errorf("the file a SIGHUP reloaded is due again")
	}
}

// TestPolicyPollerRetries: a content whose reload failed for a reason
// that may pass is due again after a back-off (the poll interval,
// doubling), until it serves; one refused as invalid is not due again
// until the file changes. The poller took a content as loaded as soon as
// it asked for its reload: one that failed (a preloader's start timing
// out) was never retried until the file changed again.
func TestPolicyPollerRetries(t *testing.T) {
	const every = 10 * time.Second
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	inForce, setInForce := inForceOf("a")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), every, inForce)
	t0 := time.Now()
	transient := errors.New("route app: preloader of route app: not ready within 30s")
	invalid := &policy.InvalidError{File: path, Problems: []policy.Problem{{File: path, Msg: "bad"}}}
	// want checks whether a reload is due at t0+d; with a verdict, it
	// is asked for and gets it.
	want := func(d time.Duration, due bool, verdict error) {
		t.Helper()
		sum, got := p.due(t0.Add(d))
		if got != due {
			t.Fatalf("at %s: due = %v, want %v", d, got, due)
		}
		if got {
			p.record(sum, verdict, t0.Add(d))
		}
	}
	writeFile(t, path, "b")
	want(every, true, transient)
	want(every+every/2, false, nil) // half the back-off
	want(2*every, true, transient)  // the back-off doubles
	want(3*every, false, nil)
	want(4*every, true, nil)
	setInForce("b")
	want(5*every, false, nil) // it serves

	writeFile(t, path, "c")
	want(6*every, true, invalid)
	want(time.Hour, false, nil) // an invalid content, unchanged
	writeFile(t, path, "d")
	want(time.Hour+every, true, transient)
	writeFile(t, path, "e")
	want(time.Hour+every+time.Second, true, nil) // a new content does not wait for d's back-off
}

// TestPolicyPollerRun: at each tick the poller asks serve's loop for the
// reload of a changed content and waits for the verdict; a failed one is
// asked for again at a later tick, a successful one no more.
func TestPolicyPollerRun(t *testing.T) {
	const every = 10 * time.Second
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	inForce, setInForce := inForceOf("a")
	reqs := newReloadRequests()
	tick := make(chan time.Time)
	stop, done := make(chan struct{}), make(chan struct{})
	go func() {
		defer close(done)
		newPolicyPoller(path, slog.New(slog.DiscardHandler), every, inForce).run(stop, tick, reqs)
	}()
	defer func() { close(stop); <-done }()
	t0 := time.Now()
	send := func(d time.Duration) {
		t.Helper()
		select {
		case tick <- t0.Add(d):
		case <-time.After(hangGuard):
			t.Fatalf("the poller did not take the tick at %s: it waits for a verdict of a reload it asked for", d)
		}
	}
	// answer plays serve's loop: it waits for a reload asked for and
	// answers it; nil applies b.
	answer := func(verdict error) {
		t.Helper()
		select {
		case <-reqs.pending:
		case <-time.After(hangGuard):
			t.Fatal("no reload asked for")
		}
		if verdict == nil {
			setInForce("b")
		}
		for _, w := range reqs.take() {
			w <- verdict
		}
	}
	writeFile(t, path, "b")
	send(every)
	answer(errors.New("route app: preloader of route app: not ready within 30s"))
	send(2 * every)
	answer(nil)
	send(3 * every)
	send(4 * every) // taken: the tick before asked for nothing
	if len(reqs.pending) > 0 {
		t.Error("a reload was asked for the content in force")
	}
}

// TestPolicyPollerRetriesHostProblems: a policy serve refuses for what the
// host lacks (here its program, deployed after the policy) is retried with
// back-off, and reloads once the host has it; a policy invalid in itself
// waits for the file to change. Before, both waited: the route's program
// deployed a moment after its ConfigMap was never served.
func TestPolicyPollerRetriesHostProblems(t *testing.T) {
	const every = 10 * time.Second
	d, path := testDaemon(t, reloadPolicyA)
	prog := filepath.Join(t.TempDir(), "app")
	writeFile(t, path, "version: 1\nroutes:\n  - {name: hello, match: {path: /hello}, program: "+prog+"}\n")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), every, d.policyInForce)
	t0 := time.Now()
	sum, due := p.due(t0)
	if !due {
		t.Fatal("a changed policy file is not due")
	}
	err := d.reload(context.Background())
	if !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("reload of a policy whose program is missing: %v, want it refused as invalid", err)
	}
	p.record(sum, err, t0)
	if _, due := p.due(t0.Add(every / 2)); due {
		t.Error("retried before its back-off")
	}
	if err := os.WriteFile(prog, []byte("#!/bin/sh\necho\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	sum, due = p.due(t0.Add(every))
	if !due {
		t.Fatal("the program deployed, the refused policy is not retried")
	}
	if err := d.reload(context.Background()); err != nil {
		t.Fatalf("the retried reload: %v", err)
	}
	p.record(sum, nil, t0.Add(every))
	if _, due := p.due(t0.Add(2 * every)); due {
		t.Error("due again once it serves")
	}

	// Invalid in itself: not retried until the file changes.
	writeFile(t, path, "version: 1\nroutes:\n  - {name: hello, match: {path: /hello}, program: "+prog+", memroy: 1Mi}\n")
	sum, due = p.due(t0.Add(3 * every))
	if !due {
		t.Fatal("a changed policy file is not due")
	}
	err = d.reload(context.Background())
	if !errors.Is(err, policy.ErrInvalid) {
		t.Fatalf("reload of a policy with an unknown key: %v, want it refused as invalid", err)
	}
	p.record(sum, err, t0.Add(3*every))
	if _, due := p.due(t0.Add(time.Hour)); due {
		t.Error("an invalid file, unchanged, is retried")
	}
}
