package vm

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"
)

const testMarker = "vmrun-exit-status-0123456789abcdef:"

func TestStatusFilter(t *testing.T) {
	for _, tc := range []struct {
		name      string
		writes    []string
		wantOut   string
		wantCode  int
		wantFound bool
		wantPanic bool
	}{
		{
			name:      "status line stripped",
			writes:    []string{"=== RUN TestX\nPASS\n" + testMarker + " 0\n"},
			wantOut:   "=== RUN TestX\nPASS\n",
			wantFound: true,
		},
		{
			name:      "failing status",
			writes:    []string{"FAIL\n" + testMarker + " 1\n"},
			wantOut:   "FAIL\n",
			wantCode:  1,
			wantFound: true,
		},
		{
			name:      "split across writes",
			writes:    []string{"ok\nvmrun-exit-sta", "tus-0123456789abcdef: 4", "2\n"},
			wantOut:   "ok\n",
			wantCode:  42,
			wantFound: true,
		},
		{
			name:      "after output without a newline",
			writes:    []string{"partial" + testMarker + " 3\n"},
			wantOut:   "partial",
			wantCode:  3,
			wantFound: true,
		},
		{
			name:      "what follows the status is dropped",
			writes:    []string{"x\n" + testMarker + " 0\n[    3.5] reboot: Power down\n"},
			wantOut:   "x\n",
			wantFound: true,
		},
		{
			name:    "another run's marker is output, not status",
			writes:  []string{"vmrun-exit-status-ffffffffffffffff: 0\n"},
			wantOut: "vmrun-exit-status-ffffffffffffffff: 0\n",
		},
		{
			name:    "garbled status is output, not status",
			writes:  []string{testMarker + " zero\n" + testMarker + " 300\n"},
			wantOut: testMarker + " zero\n" + testMarker + " 300\n",
		},
		{
			name:      "kernel panic",
			writes:    []string{"[ 1.2] Kernel panic - not syncing: Attempted to kill init!\n"},
			wantOut:   "[ 1.2] Kernel panic - not syncing: Attempted to kill init!\n",
			wantPanic: true,
		},
		{
			name:    "last partial line kept",
			writes:  []string{"a\nb"},
			wantOut: "a\nb",
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out strings.Builder
			f := &StatusFilter{W: &out, Marker: testMarker}
			for _, w := range tc.writes {
				if n, err := f.Write([]byte(w)); n != len(w) || err != nil {
					t.Fatalf("Write(%q) = %d, %v", w, n, err)
				}
			}
			if err := f.Close(); err != nil {
				t.Fatal(err)
			}
			code, found, panicked := f.Status()
			if out.String() != tc.wantOut {
				t.Errorf("output %q, want %q", out.String(), tc.wantOut)
			}
			if code != tc.wantCode || found != tc.wantFound || panicked != tc.wantPanic {
				t.Errorf("Status() = %d, found %v, panicked %v; want %d, %v, %v",
					code, found, panicked, tc.wantCode, tc.wantFound, tc.wantPanic)
			}
		})
	}
}

func TestVerdict(t *testing.T) {
	exitErr := errors.New("exit status 1")
	for _, tc := range []struct {
		name     string
		code     int
		found    bool
		panicked bool
		ctxErr   error
		qemuErr  error
		wantCode int
		wantErr  string // "" for success
	}{
		{name: "passed", found: true},
		{name: "failed", code: 1, found: true, wantCode: 1},
		{name: "status wins over a later panic", code: 2, found: true, panicked: true, wantCode: 2},
		{name: "panic", panicked: true, wantErr: "panicked"},
		{name: "no status", wantErr: "without printing an exit status"},
		{name: "qemu failed", qemuErr: exitErr, wantErr: "qemu failed"},
		{name: "timeout", found: true, ctxErr: context.DeadlineExceeded, wantErr: "timed out"},
		{name: "interrupted", ctxErr: context.Canceled, wantErr: "interrupted"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			code, err := Verdict(tc.code, tc.found, tc.panicked, tc.ctxErr, time.Minute, tc.qemuErr)
			if tc.wantErr == "" {
				if err != nil || code != tc.wantCode {
					t.Errorf("Verdict = %d, %v; want %d, nil", code, err, tc.wantCode)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Verdict = %d, %v; want an error containing %q", code, err, tc.wantErr)
			}
		})
	}
}
