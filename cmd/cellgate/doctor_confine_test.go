package main

import (
	"io/fs"
	"strings"
	"testing"
)

// TestCheckModuleAutoload: doctor warns, with the fix, where a cell can
// have the kernel start modprobe, and says so where it cannot.
func TestCheckModuleAutoload(t *testing.T) {
	for _, tc := range []struct {
		name     string
		modprobe string
		err      error
		want     string // the finding's level, and a substring of its detail or fix
		has      string
	}{
		{"the default", "/sbin/modprobe\n", nil, "warn", "kernel.modprobe=/sbin/modprobe: a cell that executes a file of a format the kernel does not know"},
		{"the fix", "/sbin/modprobe\n", nil, "warn", "sysctl -w kernel.modprobe="},
		{"emptied", "\n", nil, "ok", "kernel.modprobe is empty"},
		{"no modules", "", fs.ErrNotExist, "ok", "the kernel loads no modules"},
		{"unreadable", "", fs.ErrPermission, "warn", "kernel.modprobe unreadable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var r report
			checkModuleAutoload(&r, tc.modprobe, tc.err)
			if len(r.findings) != 1 {
				t.Fatalf("findings %+v, want one", r.findings)
			}
			f := r.findings[0]
			if f.level != tc.want || !strings.Contains(f.detail+" fix: "+f.fix, tc.has) {
				t.Errorf("%+v, want %s holding %q", f, tc.want, tc.has)
			}
		})
	}
}
