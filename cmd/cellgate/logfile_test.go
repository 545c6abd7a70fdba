package main

import (
	"os"
	"path/filepath"
	"testing"
)

// After the file is renamed (logrotate), Reopen sends later records to a
// new file at the path; the rotated file keeps the earlier ones.
func TestLogFileReopen(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "access.log")
	l, err := openLogFile(path)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	if _, err := l.Write([]byte("one\n")); err != nil {
		t.Fatal(err)
	}
	rotated := path + ".1"
	if err := os.Rename(path, rotated); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Write([]byte("two\n")); err != nil {
		t.Fatal(err)
	}
	if err := l.Reopen(); err != nil {
		t.Fatal(err)
	}
	if _, err := l.Write([]byte("three\n")); err != nil {
		t.Fatal(err)
	}
	if got, _ := os.ReadFile(rotated); string(got) != "one\ntwo\n" {
		t.Errorf("rotated file = %q", got)
	}
	if got, _ := os.ReadFile(path); string(got) != "three\n" {
		t.Errorf("new file = %q", got)
	}

	// A reopen that fails keeps the old file.
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(dir, 0o500); err != nil {
		t.Fatal(err)
	}
	defer os.Chmod(dir, 0o755)
	if os.Geteuid() != 0 {
		if err := l.Reopen(); err == nil {
			t.Error("Reopen in a read-only directory succeeded")
		}
		if _, err := l.Write([]byte("four\n")); err != nil {
			t.Errorf("Write after a failed Reopen: %v", err)
		}
	}
}
