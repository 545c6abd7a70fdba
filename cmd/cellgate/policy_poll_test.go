package main

import (
	"log/slog"
	"os"
	"path/filepath"
	"syscall"
	"testing"
)

// TestPolicyPollerChanged: only a different content is a change; an
// unreadable file is none (the running policy stays), and the content
// that comes back after it is compared with the last one read.
func TestPolicyPollerChanged(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler))
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

// TestPolicyPollerRun: a change asks serve's loop for a reload with
// SIGHUP.
func TestPolicyPollerRun(t *testing.T) {
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "a")
	p := newPolicyPoller(path, slog.New(slog.DiscardHandler))
	reload := make(chan os.Signal, 1)
	stop := make(chan struct{})
	defer close(stop)
	go p.run(stop, 1e6, reload)
	writeFile(t, path, "b")
	if s := <-reload; s != syscall.SIGHUP {
		t.Errorf("got %v, want SIGHUP", s)
	}
}
