package proxy

import (
	"bytes"
	"context"
	"errors"
	"io/fs"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/sandbox"
)

func TestPlainExec(t *testing.T) {
	tests := []struct {
		name      string
		script    string
		env       []string
		stdin     string
		timeout   time.Duration
		cancel    bool
		wantCause sandbox.Cause
		wantCode  int
		wantSig   syscall.Signal
		wantOut   string
	}{
		{name: "ok", script: `echo hi`, wantCause: sandbox.CauseOK, wantOut: "hi\n"},
		{name: "exit status", script: `exit 7`, wantCause: sandbox.CauseExit, wantCode: 7},
		{name: "crash", script: `kill -SEGV $$`, wantCause: sandbox.CauseSignal, wantCode: -1, wantSig: syscall.SIGSEGV},
		{name: "deadline", script: `exec sleep 60`, timeout: 50 * time.Millisecond, wantCause: sandbox.CauseDeadline, wantCode: -1, wantSig: syscall.SIGKILL},
		{name: "cancelled", script: `exec sleep 60`, cancel: true, wantCause: sandbox.CauseKilled, wantCode: -1, wantSig: syscall.SIGKILL},
		{name: "only the given environment", script: `env | sort`, env: []string{"A=1", "B=2"}, wantCause: sandbox.CauseOK, wantOut: "A=1\nB=2\nPWD=/\n"},
		{name: "stdin", script: `cat`, stdin: "body", wantCause: sandbox.CauseOK, wantOut: "body"},
		{name: "children in the group are killed", script: `sleep 60 & echo started`, wantCause: sandbox.CauseOK, wantOut: "started\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			prog := script(t, "w", tt.script)
			var out bytes.Buffer
			spec := sandbox.Spec{Path: prog, Env: tt.env, Stdout: &out, Timeout: tt.timeout}
			if tt.stdin != "" {
				spec.Stdin = strings.NewReader(tt.stdin)
			}
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if tt.cancel {
				time.AfterFunc(50*time.Millisecond, cancel)
			}
			res, err := (&PlainExec{}).Run(ctx, spec)
			if err != nil {
				t.Fatalf("Run: %v", err)
			}
			if res.Cause != tt.wantCause || res.ExitCode != tt.wantCode || res.Signal != tt.wantSig {
				t.Errorf("cause %s code %d signal %v, want %s %d %v", res.Cause, res.ExitCode, res.Signal, tt.wantCause, tt.wantCode, tt.wantSig)
			}
			if tt.wantOut != "" && out.String() != tt.wantOut {
				t.Errorf("stdout %q, want %q", out.String(), tt.wantOut)
			}
			if res.Started.IsZero() || len(res.Usage.Missing) == 0 || len(res.Unenforced) == 0 {
				t.Errorf("result %+v: want Started, Usage.Missing and Unenforced set", res)
			}
		})
	}
}

func TestPlainExecErrors(t *testing.T) {
	_, err := (&PlainExec{}).Run(context.Background(), sandbox.Spec{})
	if !errors.Is(err, sandbox.ErrSpec) {
		t.Errorf("empty Path: %v, want ErrSpec", err)
	}
	res, err := (&PlainExec{}).Run(context.Background(), sandbox.Spec{Path: "/nonexistent/program"})
	if !errors.Is(err, sandbox.ErrSpawn) || !errors.Is(err, fs.ErrNotExist) || !res.Started.IsZero() {
		t.Errorf("missing program: %v (started %v), want ErrSpawn and ErrNotExist", err, res.Started)
	}
}
