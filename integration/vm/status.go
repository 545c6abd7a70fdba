package vm

import (
	"bytes"
	"fmt"
	"io"
	"strconv"
	"strings"
	"sync"
)

// StatusFilter passes the guest's console output through to W, line by
// line, up to the status line that begins with Marker: it keeps the status
// and drops that line and what follows (the kernel's power-down message).
// It also notes a kernel panic, and the guest's sign of life: the line
// Alive, which the guest's /init prints first (dropped from the output;
// OnAlive, when set, is called once when it is seen).
type StatusFilter struct {
	W       io.Writer
	Marker  string
	Alive   string
	OnAlive func()

	mu       sync.Mutex
	buf      []byte
	status   int
	found    bool
	panicked bool
	alive    bool
}

// panicText is how the kernel announces a panic on the console.
const panicText = "Kernel panic"

// Write implements io.Writer. Complete lines are passed on at once; a
// partial line waits for its newline (or Close).
func (f *StatusFilter) Write(p []byte) (int, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.buf = append(f.buf, p...)
	for {
		i := bytes.IndexByte(f.buf, '\n')
		if i < 0 {
			break
		}
		if err := f.line(f.buf[:i+1]); err != nil {
			return len(p), err
		}
		f.buf = f.buf[i+1:]
	}
	return len(p), nil
}

// Close passes on a last partial line.
func (f *StatusFilter) Close() error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.buf) == 0 {
		return nil
	}
	err := f.line(f.buf)
	f.buf = nil
	return err
}

func (f *StatusFilter) line(l []byte) error {
	if f.found {
		return nil
	}
	if bytes.Contains(l, []byte(panicText)) {
		f.panicked = true
	}
	if f.Alive != "" && !f.alive && bytes.Contains(l, []byte(f.Alive)) {
		f.alive = true
		if f.OnAlive != nil {
			f.OnAlive()
		}
		return nil
	}
	if i := bytes.Index(l, []byte(f.Marker)); i >= 0 {
		code, err := parseStatus(string(l[i+len(f.Marker):]))
		if err == nil {
			f.status, f.found = code, true
			// Output before the marker had no newline of its own.
			_, werr := f.W.Write(l[:i])
			return werr
		}
	}
	_, err := f.W.Write(l)
	return err
}

func parseStatus(rest string) (int, error) {
	s := strings.TrimSpace(rest)
	code, err := strconv.Atoi(s)
	if err != nil || code < 0 || code > 255 {
		return 0, fmt.Errorf("parse exit status %q: not 0-255", s)
	}
	return code, nil
}

// SawLife reports whether the guest's sign of life was seen.
func (f *StatusFilter) SawLife() bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.alive
}

// Status returns the guest's exit status, whether one was seen, and whether
// the kernel panicked.
func (f *StatusFilter) Status() (code int, found, panicked bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.status, f.found, f.panicked
}
