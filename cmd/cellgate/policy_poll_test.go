package main

import (
	"crypto/sha256"
	"log/slog"
	"os"
	"path/filepath"
	"testing"

	"github.com/cellgate/cellgate/policy"
)

// TestPolicyPollerChanged: only a different content is a change; an
// unreadable file is none (the running policy stays), and the content
// that comes back after it is compared with the last one read.
func TestPolicyPollerChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), sha256.Sum256([]byte("a")))
	steps := []struct {
		name  string
		write func()
		want  bool
	}{
		{"untouched", func() {}, false},
		{"same content rewritten", func() { writeFile(t, path, "a") }, false},
		{"new content", func() { writeFile(t, path, "b") }, true},
		{"read again", func() {}, false},
		{"removed", func() { os.Remove(path) }, false},
		{"back with the same content", func() { writeFile(t, path, "b") }, false},
		{"replaced by a symlink swap", func() {
			next := path + ".next"
			writeFile(t, next, "c")
			if err := os.Rename(next, path); err != nil {
				t.Fatal(err)
			}
		}, true},
	}
	for _, s := range steps {
		s.write()
		if got := p.changed(); got != s.want {
			t.Errorf("%s: changed() = %v, want %v", s.name, got, s.want)
		}
	}
}

// TestPolicyPollerFromLoaded: the poller starts from the content serve
// loaded, not from its own first read: a file changed while serve started
// up is a change.
func TestPolicyPollerFromLoaded(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	const loaded = "version: 1\nroutes: [{name: a, match: {path: /}, program: /bin/true}]\n"
	writeFile(t, path, loaded)
	pol, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), pol.Digest)
	if p.changed() {
		t.Errorf("the file serve loaded, untouched, is a change")
	}
	writeFile(t, path, loaded+"# edited during start-up\n")
	p = newPolicyPoller(path, slog.New(slog.DiscardHandler), pol.Digest)
	if !p.changed() {
		t.Errorf("a file changed after serve loaded it is no change")
	}
}

// TestPolicyPollerRun: a change asks serve's loop for a reload.
func TestPolicyPollerRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler), sha256.Sum256([]byte("a")))
	reloads := newReloadRequests()
	stop := make(chan struct{})
	defer close(stop)
	go p.run(stop, 1e6, reloads)
	writeFile(t, path, "b")
	<-reloads.pending
}
