package main

import (
	"io"
	"log/slog"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
)

// serve refuses a policy with a route that can never work, at start-up
// (buildSpecs) and therefore at reload, naming the file and line.
func TestServeRefusesRoutesThatCannotWork(t *testing.T) {
	tests := []struct {
		name, route, want string
	}{
		{"unknown user", "program: /bin/true, user: nosuchuser", `:3: routes[r].user: "nosuchuser"`},
		{"missing program", "program: /nonexistent/prog", `:3: routes[r].program: "/nonexistent/prog"`},
		{"missing dir", "dir: /nonexistent/dir", `:3: routes[r].dir: "/nonexistent/dir"`},
		{"fork: missing python", `driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /, python: /nonexistent/python3`,
			`:3: routes[r].python: "/nonexistent/python3"`},
		{"fork: missing app_dir", `driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /nonexistent/app, python: /bin/sh`,
			`:3: routes[r].app_dir: "/nonexistent/app"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			writeFile(t, path, "version: 1\nroutes:\n  - {name: r, match: {path: /}, "+tt.route+"}\n")
			pol, err := policy.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			d := &daemon{
				cfg:     &serveConfig{Policy: path, Isolation: isolationNone},
				log:     slog.New(slog.NewTextHandler(io.Discard, nil)),
				tenants: map[string]*cgroup.Tenant{},
			}
			_, err = d.buildSpecs(pol)
			if err == nil || !strings.Contains(err.Error(), path+tt.want) {
				t.Fatalf("buildSpecs: %v, want a problem %q", err, path+tt.want)
			}
		})
	}
}
