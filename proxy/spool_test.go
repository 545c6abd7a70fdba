package proxy

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/accounting"
	"github.com/cellgate/cellgate/sandbox"
)

func TestSpoolThreshold(t *testing.T) {
	tests := []struct {
		name      string
		threshold int
		limit     int64
		writes    []string
		wantFile  bool
		wantFull  bool
		want      string
	}{
		{name: "empty", threshold: 8, limit: 100, want: ""},
		{name: "below threshold stays in memory", threshold: 8, limit: 100, writes: []string{"abc", "defgh"}, want: "abcdefgh"},
		{name: "one byte over moves to a file", threshold: 8, limit: 100, writes: []string{"abcd", "efghi"}, wantFile: true, want: "abcdefghi"},
		{name: "later writes go to the file", threshold: 4, limit: 100, writes: []string{"abcdef", "gh", "ij"}, wantFile: true, want: "abcdefghij"},
		{name: "zero threshold: always a file", threshold: 0, limit: 100, writes: []string{"a"}, wantFile: true, want: "a"},
		{name: "limit in memory", threshold: 100, limit: 5, writes: []string{"abc", "def"}, wantFull: true, want: "abcde"},
		{name: "limit in a file", threshold: 2, limit: 5, writes: []string{"abc", "def"}, wantFile: true, wantFull: true, want: "abcde"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sp := newSpool(t.TempDir(), tt.threshold, tt.limit, &spoolBudget{})
			defer sp.Close()
			var err error
			for _, w := range tt.writes {
				if _, err = sp.Write([]byte(w)); err != nil {
					break
				}
			}
			if full := errors.Is(err, ErrSpoolFull); full != tt.wantFull || (err != nil && !full) {
				t.Fatalf("write error %v, want full=%v", err, tt.wantFull)
			}
			f, err := sp.File()
			if err != nil {
				t.Fatal(err)
			}
			if (f != nil) != tt.wantFile {
				t.Fatalf("file %v, want a file: %v", f, tt.wantFile)
			}
			if sp.Len() != int64(len(tt.want)) {
				t.Errorf("Len %d, want %d", sp.Len(), len(tt.want))
			}
			r, closeR, err := sp.StdinReader()
			if err != nil {
				t.Fatal(err)
			}
			defer closeR()
			if tt.want == "" {
				if r != nil {
					t.Fatalf("StdinReader of an empty spool is %T, want nil", r)
				}
				return
			}
			if f, isFile := r.(*os.File); isFile != tt.wantFile {
				t.Errorf("StdinReader is %T, want *os.File: %v", r, tt.wantFile)
			} else if isFile {
				if _, err := f.Write([]byte("x")); err == nil {
					t.Errorf("the worker's stdin file is writable")
				}
			}
			got, err := io.ReadAll(r)
			if err != nil {
				t.Fatal(err)
			}
			if string(got) != tt.want {
				t.Errorf("content %q, want %q", got, tt.want)
			}
			if !tt.wantFile && !bytes.Equal(sp.Bytes(), []byte(tt.want)) {
				t.Errorf("Bytes %q, want %q", sp.Bytes(), tt.want)
			}
		})
	}
}

// TestSpoolFileUnlinked: the spool file has no name, in the directory or
// elsewhere, so nothing is left behind whatever happens to the process.
func TestSpoolFileUnlinked(t *testing.T) {
	dir := t.TempDir()
	sp := newSpool(dir, 1, 1<<20, &spoolBudget{})
	defer sp.Close()
	if _, err := sp.Write([]byte(strings.Repeat("x", 100))); err != nil {
		t.Fatal(err)
	}
	f, err := sp.File()
	if err != nil || f == nil {
		t.Fatalf("File: %v %v", f, err)
	}
	var st syscall.Stat_t
	if err := syscall.Fstat(int(f.Fd()), &st); err != nil {
		t.Fatal(err)
	}
	if st.Nlink != 0 {
		t.Errorf("spool file has %d links, want 0", st.Nlink)
	}
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("spool directory holds %v, want nothing", entries)
	}
	if err := sp.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
}

func TestSpoolBadDir(t *testing.T) {
	sp := newSpool("/nonexistent/cellgate", 1, 100, &spoolBudget{})
	defer sp.Close()
	_, err := sp.Write([]byte("abc"))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/cellgate") || !strings.Contains(err.Error(), "TempDir") {
		t.Fatalf("error %v, want one naming the directory and the remedy", err)
	}
}

// TestSpoolBudget: spools share a budget: one that finds no room in memory
// moves to a file early, one that finds no room on disk fails with
// ErrSpoolBudget, and closing gives everything back.
func TestSpoolBudget(t *testing.T) {
	dir := t.TempDir()
	b := &spoolBudget{memLimit: 100, diskLimit: 1000}
	a := newSpool(dir, 1000, 1<<20, b)
	defer a.Close()
	if _, err := a.Write(make([]byte, 80)); err != nil {
		t.Fatal(err)
	}
	if b.mem.Load() != 80 || a.file != nil {
		t.Fatalf("after 80 bytes: %d in memory, file %v", b.mem.Load(), a.file != nil)
	}
	c := newSpool(dir, 1000, 1<<20, b)
	defer c.Close()
	if _, err := c.Write(make([]byte, 50)); err != nil {
		t.Fatal(err)
	}
	if c.file == nil || b.mem.Load() != 80 || b.disk.Load() != 50 {
		t.Fatalf("no memory room: file %v, memory %d, disk %d; want a file, 80, 50", c.file != nil, b.mem.Load(), b.disk.Load())
	}
	if _, err := c.Write(make([]byte, 951)); !errors.Is(err, ErrSpoolBudget) {
		t.Fatalf("over the disk budget: %v, want ErrSpoolBudget", err)
	}
	if _, err := c.Write(make([]byte, 950)); err != nil {
		t.Fatalf("up to the disk budget: %v", err)
	}
	a.Close()
	c.Close()
	if b.mem.Load() != 0 || b.disk.Load() != 0 {
		t.Fatalf("after Close: %d in memory, %d on disk, want 0", b.mem.Load(), b.disk.Load())
	}
}

// TestSpoolBudgetServer: when the spools of all requests hold SpoolDisk, a
// response that needs more is a 503 and its cell is killed, without
// Retry-After (its worker ran, and may have done what the request asked),
// a request body a 503 with Retry-After (nothing ran); the budget is given
// back either way. Before, the response's 503 said Retry-After too.
func TestSpoolBudgetServer(t *testing.T) {
	big := cgiOutput("Content-Type: text/plain\n\n"+strings.Repeat("r", 256<<10), sandbox.CauseOK)
	ts := startServer(t, Config{SpoolDisk: 64 << 10, ResponseMemory: 1 << 10, BodyMemory: 1 << 10},
		Deps{Runner: big}, route("r", "/", "/x"))
	for _, tt := range []struct {
		name  string
		body  io.Reader
		retry bool
	}{
		{"response", nil, false},
		{"request body", strings.NewReader(strings.Repeat("b", 128<<10)), true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			resp, _ := do(t, nil, newRequest(t, "POST", ts.URL+"/", tt.body))
			if resp.StatusCode != 503 || (resp.Header.Get("Retry-After") != "") != tt.retry {
				t.Fatalf("status %d Retry-After %q, want 503, Retry-After %v", resp.StatusCode, resp.Header.Get("Retry-After"), tt.retry)
			}
			if rec := ts.recs.byID(t, resp.Header.Get(RequestIDHeader)); rec.Outcome != accounting.OutcomeSpoolFull {
				t.Errorf("outcome %s, want %s", rec.Outcome, accounting.OutcomeSpoolFull)
			}
			if st := ts.SpoolStats(); st != (SpoolStats{}) {
				t.Errorf("spools hold %+v after the request, want nothing", st)
			}
		})
	}
}

// TestSpoolWritesBounded: many spools written to files at once share the
// budget's write slots: no more than spoolWriters file writes are ever in
// progress together (each holds an OS thread while it runs), and every
// spool holds exactly what was written to it.
func TestSpoolWritesBounded(t *testing.T) {
	dir := t.TempDir()
	b := newSpoolBudget(0, 0)
	const writers, chunks = 32, 64
	chunk := bytes.Repeat([]byte("0123456789abcdef"), 2<<10) // 32 KiB
	var wg sync.WaitGroup
	errs := make(chan error, writers)
	for i := range writers {
		wg.Go(func() {
			sp := newSpool(dir, 0, 1<<30, b)
			defer sp.Close()
			for range chunks {
				if _, err := sp.Write(chunk); err != nil {
					errs <- err
					return
				}
			}
			f, err := sp.File()
			if err != nil {
				errs <- err
				return
			}
			got, err := io.ReadAll(f)
			if err != nil || !bytes.Equal(got, bytes.Repeat(chunk, chunks)) {
				errs <- fmt.Errorf("spool %d holds %d bytes (%v), want %d", i, len(got), err, chunks*len(chunk))
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if peak := b.ioPeak.Load(); peak < 1 || peak > spoolWriters {
		t.Fatalf("%d spool file writes in progress at once, want 1 to %d", peak, spoolWriters)
	}
}

// A spool file is closed in one of the budget's write slots: the last
// close of an unlinked file frees its pages before it returns.
func TestSpoolCloseTakesSlot(t *testing.T) {
	b := newSpoolBudget(0, 0)
	sp := newSpool(t.TempDir(), 0, 1<<20, b)
	if _, err := sp.Write([]byte("to a file")); err != nil {
		t.Fatal(err)
	}
	if sp.file == nil {
		t.Fatal("the spool holds no file with no memory allowed")
	}
	for range cap(b.io) {
		b.io <- struct{}{}
	}
	closed := make(chan error, 1)
	go func() { closed <- sp.Close() }()
	select {
	case err := <-closed:
		t.Fatalf("Close returned (%v) while every write slot was taken", err)
	case <-time.After(200 * time.Millisecond):
	}
	for range cap(b.io) {
		<-b.io
	}
	if err := <-closed; err != nil {
		t.Fatalf("Close: %v", err)
	}
}
