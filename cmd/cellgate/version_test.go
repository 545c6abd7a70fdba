package main

import (
	"context"
	"os"
	"path/filepath"
	"runtime"
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
