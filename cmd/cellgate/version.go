package main

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/prometheus/client_golang/prometheus"
)

// version and commit are set at link time by `make build`:
//
//	go build -ldflags "-X main.version=v1.2.3 -X main.commit=$(git rev-parse HEAD)"
//
// When they are empty, buildVersion reads what the Go toolchain recorded
// in the binary (the module's version, and the VCS revision of a build
// from a git checkout).
var (
	version string
	commit  string
)

// buildInfo is what `cellgate version` prints, SERVER_SOFTWARE carries
// and cellgate_build_info exports.
type buildInfo struct {
	Version   string // "v1.2.3", a pseudo-version, or "devel"
	Commit    string // VCS revision, "unknown" when none was recorded
	Modified  bool   // built from a working tree with uncommitted changes
	GoVersion string
}

// buildVersion combines the link-time values with the binary's build
// information.
func buildVersion() buildInfo {
	b := buildInfo{Version: version, Commit: commit, GoVersion: runtime.Version()}
	if bi, ok := debug.ReadBuildInfo(); ok {
		if b.Version == "" && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
			b.Version = bi.Main.Version
		}
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				if b.Commit == "" {
					b.Commit = s.Value
				}
			case "vcs.modified":
				b.Modified = s.Value == "true"
			}
		}
	}
	if b.Version == "" {
		b.Version = "devel"
	}
	if b.Commit == "" {
		b.Commit = "unknown"
	}
	return b
}

func (b buildInfo) String() string {
	c := b.Commit
	if b.Modified {
		c += " (modified)"
	}
	return fmt.Sprintf("cellgate %s\ncommit %s\n%s %s/%s\n", b.Version, c, b.GoVersion, runtime.GOOS, runtime.GOARCH)
}

const versionUsage = "usage: cellgate version\n\nPrints the version, the VCS commit and the Go version cellgate was built with.\n"

// versionMain is `cellgate version` (and `cellgate --version`).
func versionMain(_ context.Context, args []string, std stdio) int {
	if len(args) == 1 && (args[0] == "-h" || args[0] == "-help" || args[0] == "--help") {
		fmt.Fprint(std.out, versionUsage)
		return exitOK
	}
	if len(args) > 0 {
		fmt.Fprintf(std.err, "cellgate version: takes no arguments, got %q\n%s", args, versionUsage)
		return exitUsage
	}
	fmt.Fprint(std.out, buildVersion())
	return exitOK
}

// buildInfoCollector is cellgate_build_info{version,commit,goversion} 1,
// the usual way to put the running build beside the other metrics.
func buildInfoCollector(b buildInfo) prometheus.Collector {
	g := prometheus.NewGauge(prometheus.GaugeOpts{
		Namespace: "cellgate", Name: "build_info",
		Help:        "The running cellgate's version, VCS commit and Go version; always 1.",
		ConstLabels: prometheus.Labels{"version": b.Version, "commit": b.Commit, "goversion": b.GoVersion},
	})
	g.Set(1)
	return g
}
