package policy

import (
	"reflect"
	"testing"
)

func TestParseForkRoute(t *testing.T) {
	const src = `version: 1
tenants: [{name: py, memory: 1Gi}]
routes:
  - name: flask
    match: {path: /flask}
    tenant: py
    driver: fork
    runtime: python-wsgi
    app: "hello.wsgi:app"
    app_dir: apps/hello
    preload_memory: 128Mi
    recycle_after: 1000
    env: {LANG: C.UTF-8}
  - name: minimal
    match: {path: /m}
    driver: fork
    runtime: python-wsgi
    app: "m:application"
    app_dir: /srv/m
    python: /opt/py/bin/python3
`
	p, err := Parse("/etc/cellgate/policy.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	want := &Fork{Runtime: RuntimePythonWSGI, App: "hello.wsgi:app", Python: DefaultPython, AppDir: "/etc/cellgate/apps/hello",
		PreloadMemory: 128 << 20, RecycleAfter: 1000}
	if r := p.Routes[0]; r.Driver != DriverFork || !reflect.DeepEqual(r.Fork, want) || r.Program != "" || !r.User.Auto {
		t.Errorf("flask route: driver %q fork %+v program %q user %+v, want fork %+v", r.Driver, r.Fork, r.Program, r.User, want)
	}
	want = &Fork{Runtime: RuntimePythonWSGI, App: "m:application", Python: "/opt/py/bin/python3", AppDir: "/srv/m", PreloadMemory: DefaultPreloadMemory}
	if r := p.Routes[1]; !reflect.DeepEqual(r.Fork, want) {
		t.Errorf("minimal route: fork %+v, want %+v", r.Fork, want)
	}
	m, err := p.Match("x", "GET", "/flask/hi")
	if err != nil || m.Route != p.Routes[0] || m.ScriptName != "/flask" || m.PathInfo != "/hi" {
		t.Errorf("Match /flask/hi = %+v, %v", m, err)
	}
}

// The confinement keys mean on a fork route what they mean on a cgi route.
func TestParseForkConfinement(t *testing.T) {
	const src = `version: 1
routes:
  - {name: a, match: {path: /a}, driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /s, network: host, seccomp: off, tmpfs_size: 8Mi, mounts: [{source: /srv/data, target: /data}]}
  - {name: b, match: {path: /b}, driver: fork, runtime: python-wsgi, app: "m:app", app_dir: /s}
`
	p, err := Parse("policy.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	c := p.Routes[0].Confinement
	if !c.HostNetwork || !c.NoSeccomp || c.TmpfsSize != 8<<20 || len(c.Mounts) != 1 || c.Mounts[0].Target != "/data" {
		t.Errorf("route a's confinement %+v, want network: host, seccomp: off, tmpfs_size 8Mi and the /data mount", c)
	}
	if c := p.Routes[1].Confinement; c.HostNetwork || c.NoSeccomp || c.HostFilesystem {
		t.Errorf("route b's confinement %+v, want everything confined by default", c)
	}
}

func TestParseForkProblems(t *testing.T) {
	const head = "version: 1\ntenants: [{name: t, memory: 100Mi}]\nroutes:\n" // lines 1-3
	tests := []struct {
		name string
		src  string
		want []problem
	}{
		{"fork key on a cgi route", "  - {name: a, match: {path: /}, program: /a, app: \"m:app\"}\n",
			[]problem{{4, "routes[a].app", "a key of the fork driver on a cgi route"}}},
		{"fork with program", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, program: /a}\n",
			[]problem{{4, "routes[a].program", "runs no program"}}},
		{"fork without runtime, app, app_dir", "  - {name: a, match: {path: /}, driver: fork}\n",
			[]problem{{4, "routes[a].runtime", "without a runtime"}, {4, "routes[a].app", "without an app"}, {4, "routes[a].app_dir", "without an app_dir"}}},
		{"unknown runtime", "  - {name: a, match: {path: /}, driver: fork, runtime: ruby-rack, app: \"m:app\", app_dir: /s}\n",
			[]problem{{4, "routes[a].runtime", "unknown runtime"}}},
		{"bad app", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m.app\", app_dir: /s}\n",
			[]problem{{4, "routes[a].app", "not a WSGI application reference"}}},
		{"fixed user", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, user: 1000}\n",
			[]problem{{4, "routes[a].user", "the preloader's own range"}}},
		{"preload over budget", "  - {name: a, match: {path: /}, tenant: t, memory: 64Mi, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, preload_memory: 64Mi}\n",
			[]problem{{4, "routes[a].preload_memory", "the preloader and the largest request (64Mi) exceed tenant t's budget 100Mi"}}},
		// The preloader fits beside its own request, not beside another
		// route's larger one that admission would put beside it.
		{"preloader beside a larger cgi request", "  - {name: a, match: {path: /a}, tenant: t, memory: 20Mi, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, preload_memory: 40Mi}\n" +
			"  - {name: c, match: {path: /c}, tenant: t, memory: 80Mi, program: /c}\n",
			[]problem{{4, "routes[a].preload_memory", "the preloader and the largest request (80Mi) exceed tenant t's budget 100Mi"}}},
		// On its own line: the problem names preload_memory's, not the
		// route's memory's.
		{"preload over budget, block style", "  - name: a\n    match: {path: /}\n    tenant: t\n    memory: 64Mi\n    driver: fork\n" +
			"    runtime: python-wsgi\n    app: \"m:app\"\n    app_dir: /s\n    preload_memory: 64Mi\n",
			[]problem{{12, "routes[a].preload_memory", "the preloader and the largest request (64Mi) exceed tenant t's budget 100Mi"}}},
		{"recycle_after negative", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, recycle_after: -1}\n",
			[]problem{{4, "routes[a].recycle_after", "out of range"}}},
		{"huge_pages on a fork route", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, huge_pages: system}\n",
			[]problem{{4, "routes[a].huge_pages", "no effect on a fork route"}}},
		{"cells on a fork route", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, cells: fresh}\n",
			[]problem{{4, "routes[a].cells", "no effect on a fork route"}}},
		{"groups on a fork route", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, groups: reused}\n",
			[]problem{{4, "routes[a].groups", "no effect on a fork route"}}},
		{"relative python without a base", "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s, python: py3}\n",
			[]problem{{4, "routes[a].python", "a relative path"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("policy.yaml", []byte(head+tt.src))
			requireProblems(t, err, tt.want)
		})
	}
}

// TestParsePreloadersOverGlobal: a preloader is charged to cells/, the
// global budget, beside any request of any tenant: at its default limit
// (256Mi) it leaves no room in a global budget of 300Mi for a request of
// 64Mi, though its tenant has room.
func TestParsePreloadersOverGlobal(t *testing.T) {
	const head = "version: 1\nglobal: {memory: 300Mi}\ntenants: [{name: t, memory: 400Mi}, {name: u}]\nroutes:\n" // lines 1-4
	const a = "  - {name: a, match: {path: /a}, tenant: t, memory: 32Mi, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s}\n"
	const b = "  - {name: b, match: {path: /b}, tenant: u, memory: 64Mi, program: /b}\n"
	_, err := Parse("policy.yaml", []byte(head+a+b))
	requireProblems(t, err, []problem{{5, "routes[a].preload_memory", "the preloader and the largest request (64Mi) exceed the global budget 300Mi"}})
	if _, err := Parse("policy.yaml", []byte(head+a)); err != nil {
		t.Errorf("a preloader of 256Mi and a request of 32Mi in a global budget of 300Mi: %v", err)
	}
}
