package sandbox

import (
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// heldWriter is a Writer whose Write blocks until release is closed,
// and which says when a Write has begun and whether one is in progress.
type heldWriter struct {
	entered chan struct{} // closed at the first Write
	release chan struct{}
	in      atomic.Bool // a Write has begun and not returned
	once    atomic.Bool
}

func newHeldWriter() *heldWriter {
	return &heldWriter{entered: make(chan struct{}), release: make(chan struct{})}
}

func (w *heldWriter) Write(p []byte) (int, error) {
	w.in.Store(true)
	defer w.in.Store(false)
	if w.once.CompareAndSwap(false, true) {
		close(w.entered)
	}
	<-w.release
	return len(p), nil
}

// TestAbortWaitsForOutputCopiers: a start that failed before the request
// ran may run it again (runOnceMore) with the same Writers, so abort
// returns only once this attempt's output copiers have ended, or says
// that one had not (the request is then not run again). abort used to
// wait for the stdin's copier alone, and a retry's copier then called
// into a Writer that the first attempt's still used (seen as a data race
// on the test's bytes.Buffer, TestResidentStubGone under -race).
func TestAbortWaitsForOutputCopiers(t *testing.T) {
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	start := func(t *testing.T) (*streams, *heldWriter) {
		t.Helper()
		w := newHeldWriter()
		st, err := newStreams(&Spec{Stdin: strings.NewReader("body"), Stdout: w}, devNull)
		if err != nil {
			t.Fatal(err)
		}
		// What a process wrote before the start failed: the copier
		// takes it and writes it into w, where it stays.
		if _, err := io.WriteString(st.child[1], "early"); err != nil {
			t.Fatal(err)
		}
		st.started()
		select {
		case <-w.entered:
		case <-time.After(10 * time.Second):
			t.Fatal("the stdout copier never wrote")
		}
		return st, w
	}

	t.Run("ended", func(t *testing.T) {
		st, w := start(t)
		go func() {
			time.Sleep(50 * time.Millisecond)
			close(w.release)
		}()
		if errors.Is(st.abort(errInitGone, 10*time.Second), errCopiersLeft) {
			t.Fatal("abort: a copier left, want all ended")
		}
		if w.in.Load() {
			t.Error("abort returned while the stdout copier was still in the Writer")
		}
		// Idempotent: nothing is left to wait for.
		if errors.Is(st.abort(errInitGone, 0), errCopiersLeft) {
			t.Error("a second abort: a copier left")
		}
		if err := st.wait(time.Second); err != nil {
			t.Errorf("wait after abort: %v", err)
		}
	})

	t.Run("left", func(t *testing.T) {
		st, w := start(t)
		defer close(w.release)
		if !errors.Is(st.abort(errInitGone, 100*time.Millisecond), errCopiersLeft) {
			t.Fatal("abort: all copiers ended, want one left (blocked in the Writer)")
		}
	})
}

// TestRetryNotAfterCopiersLeft: an attempt whose copiers had not ended
// is not run again, even when nothing of it ran.
func TestRetryNotAfterCopiersLeft(t *testing.T) {
	for _, tc := range []struct {
		name string
		err  error
		want bool
	}{
		{"never ran", errInitGone, true},
		{"never ran, copiers left", fmt.Errorf("%w (%w)", errInitGone, errCopiersLeft), false},
		{"ran", io.ErrUnexpectedEOF, false},
	} {
		if got := mayRunAgain(tc.err, errInitGone); got != tc.want {
			t.Errorf("%s: mayRunAgain = %v, want %v", tc.name, got, tc.want)
		}
	}
}
