package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestBuildVersion(t *testing.T) {
	b := buildVersion()
	if b.Version == "" || b.Commit == "" || b.GoVersion != runtime.Version() {
		t.Errorf("buildVersion() = %+v", b)
	}
	// Link-time values (-ldflags -X) win over the recorded build info.
	oldV, oldC := version, commit
	t.Cleanup(func() { version, commit = oldV, oldC })
	version, commit = "v9.8.7", "0123abcd"
	if b := buildVersion(); b.Version != "v9.8.7" || b.Commit != "0123abcd" {
		t.Errorf("with -X values: %+v", b)
	}
}

func TestVersionCommand(t *testing.T) {
	for _, args := range [][]string{{"version"}, {"--version"}} {
		out, err := os.Create(filepath.Join(t.TempDir(), "out"))
		if err != nil {
			t.Fatal(err)
		}
		code := dispatch(context.Background(), args, stdio{out: out, err: out})
		out.Close()
		b, _ := os.ReadFile(out.Name())
		want := buildVersion()
		if code != exitOK || !strings.HasPrefix(string(b), "cellgate "+want.Version+"\n") ||
			!strings.Contains(string(b), "commit "+want.Commit) || !strings.Contains(string(b), runtime.Version()) {
			t.Errorf("cellgate %s: exit %d\n%s", args[0], code, b)
		}
	}
}

func TestBuildInfoMetric(t *testing.T) {
	reg := prometheus.NewRegistry()
	reg.MustRegister(buildInfoCollector(buildInfo{Version: "v1.2.3", Commit: "abc", GoVersion: "go1.26"}))
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	if len(mfs) != 1 || mfs[0].GetName() != "cellgate_build_info" {
		t.Fatalf("gathered %v", mfs)
	}
	m := mfs[0].GetMetric()[0]
	labels := map[string]string{}
	for _, l := range m.GetLabel() {
		labels[l.GetName()] = l.GetValue()
	}
	if labels["version"] != "v1.2.3" || labels["commit"] != "abc" || labels["goversion"] != "go1.26" || m.GetGauge().GetValue() != 1 {
		t.Errorf("cellgate_build_info = %v %v", labels, m.GetGauge().GetValue())
	}
}

// A misspelt CELLGATE_* variable is warned about, with the setting it may
// have meant; known ones, the build's and the tests' are not.
func TestUnknownEnv(t *testing.T) {
	got := unknownEnv([]string{"CELLGATE_LISTN=:80", "CELLGATE_LISTEN=:80", "CELLGATE_UID_RANGE=1-2", "CELLGATE_BIN=/x",
		"CELLGATE_REQUIRE_KERNEL_TESTS=1", "CELLGATE_VM_ACCEL=tcg", "CELLGATE_TRUSTED_PROXIES=10.0.0.0/8", "CELLGATE_WHATEVER=1", "PATH=/bin"})
	want := []string{
		"CELLGATE_LISTN is not a cellgate setting; it is ignored (did you mean CELLGATE_LISTEN?)",
		"CELLGATE_WHATEVER is not a cellgate setting; it is ignored",
	}
	if !slices.Equal(got, want) {
		t.Errorf("unknownEnv = %q, want %q", got, want)
	}
	out, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	dispatch(context.Background(), []string{"version"}, stdio{out: out, err: out, environ: []string{"CELLGATE_POLCY=p.yaml"}})
	out.Close()
	if b, _ := os.ReadFile(out.Name()); !strings.Contains(string(b), "cellgate: warning: CELLGATE_POLCY is not a cellgate setting; it is ignored (did you mean CELLGATE_POLICY?)") {
		t.Errorf("no warning on stderr:\n%s", b)
	}
}

// TestHelpStreams: help asked for (-h of cellgate or of any subcommand) is
// on stdout with status 0, nothing on stderr, so that `cellgate serve -h |
// less` works; help for want of a command is on stderr with status 2.
func TestHelpStreams(t *testing.T) {
	tests := []struct {
		args     []string
		wantCode int
		wantOut  string // on stdout, or stderr when wantCode is 2
	}{
		{nil, exitUsage, "usage: cellgate COMMAND"},
		{[]string{"-h"}, exitOK, "usage: cellgate COMMAND"},
		{[]string{"help"}, exitOK, "usage: cellgate COMMAND"},
		{[]string{"run", "-h"}, exitOK, "usage: cellgate run"},
		{[]string{"doctor", "-h"}, exitOK, "usage: cellgate doctor"},
		{[]string{"serve", "-h"}, exitOK, "usage: cellgate serve"},
		{[]string{"check", "-h"}, exitOK, "usage: cellgate check"},
		{[]string{"reload", "-h"}, exitOK, "usage: cellgate reload"},
		{[]string{"version", "-h"}, exitOK, "usage: cellgate version"},
		{[]string{"version", "now"}, exitUsage, "takes no arguments"},
	}
	for _, tt := range tests {
		dir := t.TempDir()
		out, err := os.Create(filepath.Join(dir, "out"))
		if err != nil {
			t.Fatal(err)
		}
		errF, err := os.Create(filepath.Join(dir, "err"))
		if err != nil {
			t.Fatal(err)
		}
		code := dispatch(context.Background(), tt.args, stdio{out: out, err: errF})
		out.Close()
		errF.Close()
		o, _ := os.ReadFile(out.Name())
		e, _ := os.ReadFile(errF.Name())
		want, other := o, e
		if tt.wantCode != exitOK {
			want, other = e, o
		}
		if code != tt.wantCode || !strings.Contains(string(want), tt.wantOut) || len(other) != 0 {
			t.Errorf("cellgate %q: exit %d, want %d with %q on std%s and nothing on the other\nstdout:\n%s\nstderr:\n%s",
				tt.args, code, tt.wantCode, tt.wantOut, map[bool]string{true: "out", false: "err"}[tt.wantCode == exitOK], o, e)
		}
	}
}
