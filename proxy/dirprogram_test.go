package proxy

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/cellgate/cellgate/sandbox"
)

// A request naming a program a dir route's directory does not hold is a
// 404 without a cell; one that is there runs.
func TestDirRouteMissingProgram(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "there"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.Mkdir(filepath.Join(dir, "sub"), 0o755); err != nil {
		t.Fatal(err)
	}
	var runs atomic.Int64
	ok := cgiOutput("Content-Type: text/plain\n\nran", sandbox.CauseOK)
	runner := runFunc(func(ctx context.Context, spec sandbox.Spec) (sandbox.Result, error) {
		runs.Add(1)
		return ok(ctx, spec)
	})
	r := route("bin", "/cgi-bin", "")
	r.Program, r.Dir = "", dir
	ts := startServer(t, Config{}, Deps{Runner: runner}, r)

	tests := []struct {
		name   string
		path   string
		status int
		runs   int64
	}{
		{"missing", "/cgi-bin/missing", 404, 0},
		{"missing with path info", "/cgi-bin/missing/a/b", 404, 0},
		{"a directory", "/cgi-bin/sub", 404, 0},
		{"a name longer than a file's", "/cgi-bin/" + strings.Repeat("a", 300), 404, 0},
		{"present", "/cgi-bin/there/a", 200, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := runs.Load()
			resp, body := do(t, nil, newRequest(t, "GET", ts.URL+tt.path, nil))
			if resp.StatusCode != tt.status {
				t.Errorf("GET %s: %d %q, want %d", tt.path, resp.StatusCode, body, tt.status)
			}
			if got := runs.Load() - before; got != tt.runs {
				t.Errorf("GET %s ran %d cells, want %d", tt.path, got, tt.runs)
			}
			rec := ts.recs.byID(t, resp.Header.Get("X-Request-Id"))
			if rec.Route != "bin" {
				t.Errorf("record route %q, want bin", rec.Route)
			}
		})
	}
}
