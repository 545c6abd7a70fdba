package sandbox

import (
	"bytes"
	"io"
	"os"
	"syscall"
	"testing"
	"time"
)

// A copy of an output pipe's write end held elsewhere (another clone of
// the daemon's that has not exec'd yet) does not keep the copy going once
// the cell is empty: wait drains what the pipe holds and ends cleanly.
func TestStreamsWaitIgnoresHeldCopy(t *testing.T) {
	devNull, err := os.OpenFile(os.DevNull, os.O_RDWR, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer devNull.Close()
	var out, errOut bytes.Buffer
	st, err := newStreams(&Spec{Stdout: &out, Stderr: &errOut}, devNull)
	if err != nil {
		t.Fatal(err)
	}
	var held []int
	defer func() {
		for _, fd := range held {
			syscall.Close(fd)
		}
	}()
	for i, text := range []string{"", "to stdout", "to stderr"} {
		if i == 0 {
			continue
		}
		if _, err := io.WriteString(st.child[i], text); err != nil {
			t.Fatal(err)
		}
		fd, err := syscall.Dup(int(st.child[i].Fd()))
		if err != nil {
			t.Fatal(err)
		}
		held = append(held, fd)
	}
	st.started() // the worker ran and exited; the copies stay held
	if err := st.wait(10 * time.Second); err != nil {
		t.Fatalf("wait: %v", err)
	}
	if out.String() != "to stdout" || errOut.String() != "to stderr" {
		t.Errorf("copied %q and %q", out.String(), errOut.String())
	}
}

// Before WritersGone a reader waits for data as on any pipe; after it, it
// returns what the pipe holds and then io.EOF, although a write end is
// still open.
func TestOutputReaderEndsAtWritersGone(t *testing.T) {
	r, w, err := OutputPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close() // held open throughout: a copy elsewhere
	got := make(chan string, 1)
	go func() {
		b, err := io.ReadAll(r)
		if err != nil {
			b = append(b, " error: "+err.Error()...)
		}
		got <- string(b)
	}()
	io.WriteString(w, "first ")
	select {
	case s := <-got:
		t.Fatalf("the reader ended before WritersGone: %q", s)
	case <-time.After(100 * time.Millisecond):
	}
	io.WriteString(w, "second")
	r.WritersGone()
	select {
	case s := <-got:
		if s != "first second" {
			t.Errorf("read %q, want %q", s, "first second")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the reader did not end after WritersGone")
	}
}

// TestOutputPipeWritersGoneRace: what a writer wrote before WritersGone is
// read, however the reader's first read falls around it. The reader
// read the pipe empty, then found WritersGone called (the writer having
// written, closed and called it in between) and returned EOF: the
// output was lost, and the proxy answered 502 "no output" (one request
// in a thousand of TestInFlight).
func TestOutputPipeWritersGoneRace(t *testing.T) {
	for i := 0; i < 20000; i++ {
		pr, pw, err := OutputPipe()
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			pw.Write([]byte("out"))
			pw.Close()
			pr.WritersGone()
		}()
		b, err := io.ReadAll(pr)
		pr.Close()
		if err != nil || string(b) != "out" {
			t.Fatalf("round %d: read %q, %v; want \"out\"", i, b, err)
		}
	}
}

// A copy of the write end that writes after WritersGone (a fork route's
// preloader that kept one) gets no further than what the pipe held then:
// the reader returns that and io.EOF, not what the copy writes on.
func TestOutputReaderStopsAtWhatWasThere(t *testing.T) {
	r, w, err := OutputPipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	if _, err := io.WriteString(w, "the answer"); err != nil {
		t.Fatal(err)
	}
	r.WritersGone()
	if _, err := io.WriteString(w, " and what a kept copy writes after"); err != nil {
		t.Fatal(err)
	}
	got, err := io.ReadAll(r)
	if err != nil || string(got) != "the answer" {
		t.Errorf("read %q (%v), want %q", got, err, "the answer")
	}
}
