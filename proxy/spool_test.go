package proxy

import (
	"bytes"
	"errors"
	"io"
	"os"
	"strings"
	"syscall"
	"testing"
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
			sp := newSpool(t.TempDir(), tt.threshold, tt.limit)
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
	sp := newSpool(dir, 1, 1<<20)
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
	sp := newSpool("/nonexistent/cellgate", 1, 100)
	defer sp.Close()
	_, err := sp.Write([]byte("abc"))
	if err == nil || !strings.Contains(err.Error(), "/nonexistent/cellgate") || !strings.Contains(err.Error(), "TempDir") {
		t.Fatalf("error %v, want one naming the directory and the remedy", err)
	}
}
