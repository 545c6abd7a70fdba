package main

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"testing"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
)

// TestServeDirWarningsInOrder: serve logs the programs of dir routes its
// cells cannot see in the policy's order of routes and, within a route,
// by name, every time. Before, it walked its map of routes (Go's order,
// random from one load to the next) and each directory in its file
// system's order, so that two loads of one policy logged them shuffled.
func TestServeDirWarningsInOrder(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "prog") // out of every route's view
	writeFile(t, outside, "#!/bin/sh\n")
	var routes string
	var want []string
	for _, route := range []string{"zeta", "alpha", "mid"} {
		dir := t.TempDir()
		for _, name := range []string{"c", "a", "b"} {
			if err := os.Symlink(outside, filepath.Join(dir, name)); err != nil {
				t.Fatal(err)
			}
			want = append(want, route+"/"+name)
		}
		routes += fmt.Sprintf("  - {name: %s, match: {path: /%s}, dir: %s}\n", route, route, dir)
	}
	slices.Sort(want[0:3]) // by name within a route, routes as listed
	slices.Sort(want[3:6])
	slices.Sort(want[6:9])
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "version: 1\nroutes:\n"+routes)
	pol, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	warned := regexp.MustCompile(`route (\w+) \(line \d+\): program \S+/(\w)`)
	for range 10 {
		var log bytes.Buffer
		d := &daemon{cfg: &serveConfig{Policy: path, Isolation: isolationCells}, log: slog.New(slog.NewTextHandler(&log, nil)),
			tenants: map[string]*cgroup.Tenant{}}
		if _, err := d.buildSpecs(context.Background(), pol); err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, m := range warned.FindAllStringSubmatch(log.String(), -1) {
			got = append(got, m[1]+"/"+m[2])
		}
		if !slices.Equal(got, want) {
			t.Fatalf("warnings for %v, want %v:\n%s", got, want, log.String())
		}
	}
}
