package main

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"os"
	"os/user"
	"path/filepath"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
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
			_, err = d.buildSpecs(context.Background(), pol)
			if err == nil || !strings.Contains(err.Error(), path+tt.want) {
				t.Fatalf("buildSpecs: %v, want a problem %q", err, path+tt.want)
			}
		})
	}
}

// TestVerifyGIDs: a tenant's gid or the shared gid naming a group of the
// group file is refused, naming the tenant, the gid and the group; a gid
// no group has, or an unreadable file, passes. Before, tenant gid: 42
// (shadow) was accepted and its confined cells could read /etc/shadow.
func TestVerifyGIDs(t *testing.T) {
	groups := filepath.Join(t.TempDir(), "group")
	if err := os.WriteFile(groups, []byte("root:x:0:\nshadow:x:42:\nbroken\nstaff:x:50:alice\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name   string
		tenant string // the tenant's gid key, "" for none
		shared uint32
		file   string
		want   []string // substrings of the error; none: valid
	}{
		{"no group", ", gid: 4242", 2000000000, groups, nil},
		{"no tenant gid", "", 2000000000, groups, nil},
		{"tenant's gid is shadow", ", gid: 42", 2000000000, groups, []string{
			"p.yaml:2: tenants[acme].gid: \"42\": tenant acme's gid is the group shadow of " + groups, "(fix: choose a gid no group of " + groups}},
		{"shared gid is staff", "", 50, groups, []string{"--gid (CELLGATE_GID): \"50\": the per-cell uids' group is the group staff"}},
		{"no group file", ", gid: 42", 50, filepath.Join(t.TempDir(), "none"), nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte("version: 1\ntenants: [{name: acme"+tc.tenant+"}]\nroutes:\n  - {name: r, match: {path: /}, tenant: acme, program: /bin/true}\n"))
			if err != nil {
				t.Fatal(err)
			}
			wantErrHas(t, "verifyGIDs", verifyGIDs(p, tc.shared, tc.file), tc.want)
		})
	}
}

// wantErrHas checks the error of what: nil when want is empty, else one
// holding each of want.
func wantErrHas(t *testing.T, what string, err error, want []string) {
	t.Helper()
	switch {
	case len(want) == 0 && err != nil:
		t.Errorf("%s: %v, want nil", what, err)
	case len(want) > 0 && err == nil:
		t.Errorf("%s: nil, want %q", what, want)
	case err != nil:
		for _, w := range want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s: %v\nwant %q in it", what, err, w)
			}
		}
	}
}

// TestCheckRefusesSystemGroup: cellgate check refuses a tenant whose gid
// names a group of this host's /etc/group.
func TestCheckRefusesSystemGroup(t *testing.T) {
	names, err := namesWithID(groupFile, func(id uint32) bool { return id != 0 })
	if err != nil || len(names) == 0 {
		t.Skipf("no group but root's in %s: %v", groupFile, err)
	}
	g, err := user.LookupGroup(names[0])
	if err != nil {
		t.Skip(err)
	}
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "version: 1\ntenants: [{name: acme, gid: "+g.Gid+"}]\nroutes:\n  - {name: r, match: {path: /}, tenant: acme, program: /bin/true}\n")
	var out, errOut bytes.Buffer
	if code := runCheck([]string{path}, nil, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "tenants[acme].gid: \""+g.Gid+"\": tenant acme's gid is the group "+names[0]) {
		t.Errorf("check of tenant gid %s (%s): exit %d, want 1 naming the group\n%s", g.Gid, names[0], code, &errOut)
	}
	d := &daemon{cfg: &serveConfig{Policy: path, Isolation: isolationCells, Shared: Shared{GID: sandbox.DefaultGID, UIDs: uidRange(sandbox.DefaultUIDRange)}}, log: slog.New(slog.DiscardHandler)}
	pol, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := d.buildSpecs(context.Background(), pol); err == nil || !strings.Contains(err.Error(), "tenant acme's gid is the group "+names[0]) {
		t.Errorf("serve's buildSpecs: %v, want the group named", err)
	}
}
