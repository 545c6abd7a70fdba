package sandbox

import (
	"testing"
)

// TestTeardownsBounded: teardowns run in the background while a slot is
// free, and in the caller once all are busy; wait waits for the
// background ones.
func TestTeardownsBounded(t *testing.T) {
	td := newTeardowns(2)
	release := make(chan struct{})
	started := make(chan struct{}, 2)
	for range 2 {
		td.run(func() {
			started <- struct{}{}
			<-release
		})
	}
	<-started
	<-started
	if n := td.pending(); n != 2 {
		t.Fatalf("pending = %d with two teardowns blocked, want 2", n)
	}
	ranInline := false
	td.run(func() { ranInline = true }) // no slot: runs before run returns
	if !ranInline {
		t.Fatal("a third teardown with both slots busy did not run in the caller")
	}
	close(release)
	td.wait()
	if n := td.pending(); n != 0 {
		t.Errorf("pending = %d after wait, want 0", n)
	}
	done := false
	td.run(func() { done = true })
	td.wait()
	if !done {
		t.Error("a teardown with a free slot did not run by wait's return")
	}
}

// TestTeardownsNone: with no slots (Config.Teardowns < 0) every teardown
// runs in the caller.
func TestTeardownsNone(t *testing.T) {
	td := newTeardowns(0)
	ran := false
	td.run(func() { ran = td.pending() == 0 })
	if !ran {
		t.Error("a teardown without slots did not run in the caller")
	}
}
