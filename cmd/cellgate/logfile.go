package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
)

// logFile is a log file that can be reopened by name: after logrotate
// (or an operator) renames it, SIGUSR1 makes cellgate open a new file at
// the same path, as nginx does, so records stop going to the rotated one.
// Writes and the reopen are serialized: a record is written whole to one
// file or the other.
type logFile struct {
	path string
	mu   sync.Mutex
	f    *os.File
}

func openLogFile(path string) (*logFile, error) {
	l := &logFile{path: filepath.Clean(path)}
	f, err := l.open()
	if err != nil {
		return nil, err
	}
	l.f = f
	return l, nil
}

func (l *logFile) open() (*os.File, error) {
	f, err := os.OpenFile(l.path, os.O_WRONLY|os.O_APPEND|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("open log file %s: %w", l.path, err)
	}
	return f, nil
}

func (l *logFile) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Write(p)
}

// Reopen opens the path again and switches to it. When that fails the
// old file stays in use (records keep going somewhere) and the error says
// why.
func (l *logFile) Reopen() error {
	f, err := l.open()
	if err != nil {
		return fmt.Errorf("reopen: %w (still writing to the file opened before)", err)
	}
	l.mu.Lock()
	old := l.f
	l.f = f
	l.mu.Unlock()
	return old.Close()
}

func (l *logFile) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.f.Close()
}

// reopenAll reopens every log file, joining the errors.
func reopenAll(files []*logFile) error {
	var errs []error
	for _, f := range files {
		if err := f.Reopen(); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}
