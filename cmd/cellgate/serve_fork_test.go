package main

import (
	"context"
	"slices"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/policy"
)

// A fork route needs cells: with --isolation=none a reload that adds one
// is refused and the running policy stays.
func TestReloadRefusesForkWithoutCells(t *testing.T) {
	d, path := testDaemon(t, reloadPolicyB)
	before := d.current.Load()
	writeFile(t, path, reloadPolicyB+`  - {name: py, match: {path: /py}, tenant: web, driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /srv}
`)
	d.reload(context.Background())
	if d.current.Load() != before {
		t.Fatal("a policy with a fork route replaced the running one under --isolation=none")
	}
}

func TestForkChildren(t *testing.T) {
	pol, err := policy.Parse("p.yaml", []byte(`version: 1
global: {max_cells: 40}
tenants: [{name: a, max_cells: 8}, {name: b}, {name: c, max_cells: 100000}]
routes:
  - {name: a, match: {path: /a}, tenant: a, driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /s}
  - {name: b, match: {path: /b}, tenant: b, driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /s}
  - {name: c, match: {path: /c}, tenant: c, driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /s}
`))
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []int{8, 40, maxForkChildren} {
		if got := forkChildren(pol, pol.Routes[i]); got != want {
			t.Errorf("route %s: %d children, want %d", pol.Routes[i].Name, got, want)
		}
	}
	pol.Global.MaxCells = 0
	if got := forkChildren(pol, pol.Routes[1]); got != defaultForkChildren {
		t.Errorf("no caps: %d children, want %d", got, defaultForkChildren)
	}
}

func TestPreloaderEnv(t *testing.T) {
	t.Setenv("CG_TEST_PASS", "passed")
	r := &policy.Route{Env: []string{"A=1"}, PassEnv: []string{"CG_TEST_PASS", "CG_TEST_UNSET"}}
	env := preloaderEnv(r)
	if !slices.Contains(env, "A=1") || !slices.Contains(env, "CG_TEST_PASS=passed") || slices.ContainsFunc(env, func(kv string) bool {
		return strings.HasPrefix(kv, "CG_TEST_UNSET=")
	}) || !slices.ContainsFunc(env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		t.Errorf("preloaderEnv = %q", env)
	}
	r.Env = append(r.Env, "PATH=/x")
	if env := preloaderEnv(r); slices.Index(env, "PATH=/x") < 0 || len(slices.DeleteFunc(env, func(kv string) bool { return !strings.HasPrefix(kv, "PATH=") })) != 1 {
		t.Errorf("route's PATH not kept alone: %q", env)
	}
}
