package sandbox

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/cellgate/cellgate/confine"
)

// execve says ENOENT for a missing program, a missing working directory
// and a missing interpreter alike; the error says which it was.
func TestExplainSpawn(t *testing.T) {
	dir := t.TempDir()
	file := func(name, content string) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(content), 0o755); err != nil {
			t.Fatal(err)
		}
		return p
	}
	crlf := file("crlf", "#!/bin/sh\r\necho\r\n")
	nointerp := file("nointerp", "#!/nonexistent/python3 -u\n")
	fine := file("fine", "#!/bin/sh\n")
	enoent := &os.PathError{Op: "fork/exec", Path: "x", Err: syscall.ENOENT}
	tests := []struct {
		name, path, dir string
		err             error
		want            []string
	}{
		{"CRLF line ends", crlf, dir, enoent, []string{"carriage return", "LF line ends"}},
		{"missing interpreter", nointerp, dir, enoent, []string{"its interpreter /nonexistent/python3 (the #! line) does not exist"}},
		{"missing working directory", fine, "/nonexistent/dir", enoent, []string{"working directory /nonexistent/dir"}},
		{"missing program", filepath.Join(dir, "gone"), dir, enoent, []string{"no such file"}},
		{"another error", fine, dir, syscall.EACCES, []string{"permission denied"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := explainSpawn(tt.path, tt.dir, tt.err)
			if !errors.Is(got, tt.err) {
				t.Errorf("%v does not wrap %v", got, tt.err)
			}
			for _, w := range tt.want {
				if !strings.Contains(got.Error(), w) {
					t.Errorf("%q lacks %q", got, w)
				}
			}
		})
	}
}

func TestShebang(t *testing.T) {
	tests := []struct {
		head, interp string
		crlf, bad    bool
	}{
		{"#!/bin/sh\n", "/bin/sh", false, false},
		{"#! /usr/bin/env python3\n", "/usr/bin/env", false, false},
		{"#!/bin/sh\r\n", "/bin/sh", true, false},
		{"#!\n", "", false, true},
		{"#!sh\n", "", false, true},
		{"\x7fELF", "", false, true},
	}
	for _, tt := range tests {
		interp, crlf, err := Shebang([]byte(tt.head))
		if interp != tt.interp || crlf != tt.crlf || (err != nil) != tt.bad {
			t.Errorf("Shebang(%q) = %q, %v, %v", tt.head, interp, crlf, err)
		}
	}
}

// An init's failure report names its errno once (the message has it), and
// errors.Is still finds it: "sethostname cell: operation not permitted"
// was reported with the errno's text twice.
func TestNotRunNamesErrnoOnce(t *testing.T) {
	cell := &fakeCell{c: &fakeCells{}}
	rep := confine.Report{Kind: confine.ReportSetup, Errno: int32(syscall.EPERM), Msg: "confine the cell: sethostname cell: operation not permitted"}
	err := notRun(rep, &Spec{Path: "/bin/x"}, cell)
	if n := strings.Count(err.Error(), "operation not permitted"); n != 1 {
		t.Errorf("%q names the errno %d times, want once", err, n)
	}
	if !errors.Is(err, syscall.EPERM) || !errors.Is(err, ErrSpawn) {
		t.Errorf("%v: errors.Is EPERM and ErrSpawn must hold", err)
	}
	if got := reportMsg(rep, true); strings.Count(got, "operation not permitted") != 1 {
		t.Errorf("a preloader's report %q names the errno more than once", got)
	}
}
