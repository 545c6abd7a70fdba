package policy

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"
)

const fullPolicy = `version: 1
defaults: {memory: 32Mi, cpu: 0.5, pids: 16, timeout: 10s, max_body: 1Mi}
global: {memory: 1Gi, max_cells: 64}
tenants:
  - name: acme
    memory: 512Mi
    cpu_weight: 200
    cpu: 1.5
    pids: 256
    max_cells: 8
    queue: 32
    queue_timeout: 2s
routes:
  - name: hello
    match: {host: "Example.COM", path: /hello/, methods: [HEAD, GET]}
    tenant: acme
    driver: cgi
    program: /srv/cgi/hello
    memory: 64Mi
    swap: 16Mi
    env: {LANG: C.UTF-8, DEBUG: 1}
    pass_env: [TZ]
    user: auto
    response: stream
    server_timing: true
  - name: bin
    match: {path: /cgi-bin}
    dir: bin
    user: 1000
  - name: admin
    match: {host: "*.example.com", path: /}
    tenant: acme
    program: /srv/admin
    user: root
    allow_root: true
`

func TestParseFull(t *testing.T) {
	p, err := Parse("/etc/cellgate/policy.yaml", []byte(fullPolicy))
	if err != nil {
		t.Fatal(err)
	}
	if p.Source != "/etc/cellgate/policy.yaml" {
		t.Errorf("Source = %q", p.Source)
	}
	wantDefaults := Limits{Memory: 32 << 20, MilliCPU: 500, Pids: 16, Timeout: 10 * time.Second, MaxBody: new(int64(1 << 20))}
	if !reflect.DeepEqual(p.Defaults, wantDefaults) {
		t.Errorf("Defaults = %+v, want %+v", p.Defaults, wantDefaults)
	}
	if p.Global != (Global{Memory: 1 << 30, MaxCells: 64, Line: 3}) {
		t.Errorf("Global = %+v", p.Global)
	}
	wantTenants := []*Tenant{
		{Name: "acme", Memory: 512 << 20, CPUWeight: 200, MilliCPU: 1500, Pids: 256, MaxCells: 8, Queue: 32, QueueTimeout: 2 * time.Second, Line: 5},
		{Name: DefaultTenant, Implicit: true},
	}
	if !reflect.DeepEqual(p.Tenants, wantTenants) {
		t.Errorf("Tenants:\n got %+v %+v\nwant %+v %+v", p.Tenants[0], p.Tenants[len(p.Tenants)-1], wantTenants[0], wantTenants[1])
	}
	if len(p.Routes) != 3 {
		t.Fatalf("%d routes, want 3", len(p.Routes))
	}
	hello := p.Routes[0]
	want := &Route{
		Name: "hello", Host: "example.com", PathPrefix: "/hello", Methods: []string{"GET", "HEAD"},
		Tenant: "acme", Driver: DriverCGI, Program: "/srv/cgi/hello",
		Limits:   Limits{Memory: 64 << 20, Swap: 16 << 20, MilliCPU: 500, Pids: 16, Timeout: 10 * time.Second, MaxBody: new(int64(1 << 20))},
		Env:      []string{"DEBUG=1", "LANG=C.UTF-8"},
		PassEnv:  []string{"TZ"},
		User:     User{Auto: true},
		Response: ResponseStream, ServerTiming: true, Line: 14,
	}
	want.Resources = want.Limits.Resources()
	if !reflect.DeepEqual(hello, want) {
		t.Errorf("route hello:\n got %+v\nwant %+v", hello, want)
	}
	bin := p.Routes[1]
	if bin.Dir != "/etc/cellgate/bin" || bin.Program != "" {
		t.Errorf("bin: Dir %q Program %q, want the relative dir resolved against the policy's directory", bin.Dir, bin.Program)
	}
	if bin.Tenant != DefaultTenant || bin.User != (User{UID: 1000}) || bin.Response != ResponseSpool || !reflect.DeepEqual(bin.Limits, wantDefaults) {
		t.Errorf("bin: tenant %q user %+v response %q limits %+v, want the defaults", bin.Tenant, bin.User, bin.Response, bin.Limits)
	}
	admin := p.Routes[2]
	if admin.Host != "*.example.com" || admin.PathPrefix != "/" || admin.User != (User{Name: "root"}) || !admin.AllowRoot {
		t.Errorf("admin: %+v", admin)
	}
}

func TestParseBuiltinDefaults(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /bin/a}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if got := p.Routes[0].Limits; got != DefaultLimits() {
		t.Errorf("limits = %+v, want DefaultLimits %+v", got, DefaultLimits())
	}
	if len(p.Tenants) != 1 || !p.Tenants[0].Implicit || p.Tenants[0].Name != DefaultTenant {
		t.Errorf("tenants = %+v, want the implicit default tenant", p.Tenants)
	}
}

func TestParseDeclaredDefaultTenant(t *testing.T) {
	src := "version: 1\ntenants: [{name: default, max_cells: 2}]\nroutes:\n  - {name: a, match: {path: /}, program: /bin/a}\n"
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if len(p.Tenants) != 1 || p.Tenants[0].Implicit || p.Tenants[0].MaxCells != 2 {
		t.Errorf("tenants = %+v, want only the declared default tenant", p.Tenants)
	}
}

// problem is what one case expects among the problems.
type problem struct {
	line int
	key  string
	msg  string // a substring of Msg
}

func TestParseProblems(t *testing.T) {
	const route = "routes:\n  - {name: a, match: {path: /}, program: /bin/a}\n" // lines 2-3 after version
	tests := []struct {
		name string
		src  string
		want []problem
	}{
		{"empty", "", []problem{{0, "", "empty"}}},
		{"comment only", "# nothing\n", []problem{{0, "", "empty"}}},
		{"syntax", "version: 1\nroutes: [\n", []problem{{2, "", "YAML syntax"}}},
		{"two documents", "version: 1\n" + route + "---\nversion: 1\n", []problem{{4, "", "second YAML document"}}},
		{"not a mapping", "- a\n", []problem{{1, "", "want a mapping"}}},
		{"no version", route, []problem{{1, "version", "no version"}}},
		{"version 2", "version: 2\n" + route, []problem{{1, "version", "unsupported version"}}},
		{"version string", "version: one\n" + route, []problem{{1, "version", "want an integer, got a string"}}},
		{"unknown top key", "version: 1\nroute: []\n" + route, []problem{{2, "route", "unknown key"}}},
		{"duplicate key", "version: 1\nversion: 1\n" + route, []problem{{2, "version", "duplicate key (first at line 1)"}}},
		{"no routes", "version: 1\n", []problem{{1, "routes", "no routes"}}},
		{"empty routes", "version: 1\nroutes: []\n", []problem{{2, "routes", "no routes"}}},
		{"routes not a list", "version: 1\nroutes: {a: 1}\n", []problem{{2, "routes", "want a list"}}},

		{"defaults bad size", "version: 1\ndefaults: {memory: 64Q}\n" + route, []problem{{2, "defaults.memory", "not a size"}}},
		{"defaults memory below floor", "version: 1\ndefaults: {memory: 4096}\n" + route, []problem{{2, "defaults.memory", "below the floor 1Mi"}}},
		{"defaults cpu below floor", "version: 1\ndefaults: {cpu: 5m}\n" + route, []problem{{2, "defaults.cpu", "below the floor 0.01"}}},
		{"defaults pids zero", "version: 1\ndefaults: {pids: 0}\n" + route, []problem{{2, "defaults.pids", "out of range 1.."}}},
		{"defaults timeout zero", "version: 1\ndefaults: {timeout: 0s}\n" + route, []problem{{2, "defaults.timeout", "not positive"}}},
		{"defaults timeout no unit", "version: 1\ndefaults: {timeout: 30}\n" + route, []problem{{2, "defaults.timeout", "want a duration"}}},
		{"defaults timeout bad", "version: 1\ndefaults: {timeout: soon}\n" + route, []problem{{2, "defaults.timeout", "not a duration"}}},
		{"defaults unknown key", "version: 1\ndefaults: {memmory: 1Mi}\n" + route, []problem{{2, "defaults.memmory", "unknown key"}}},
		{"defaults not a mapping", "version: 1\ndefaults: 64Mi\n" + route, []problem{{2, "defaults", "want a mapping"}}},
		{"global max_cells zero", "version: 1\nglobal: {max_cells: 0}\n" + route, []problem{{2, "global.max_cells", "out of range"}}},
		{"global memory float", "version: 1\nglobal: {memory: 1.5}\n" + route, []problem{{2, "global.memory", "want a size"}}},

		{"tenant bad name", "version: 1\ntenants: [{name: Acme}]\n" + route, []problem{{2, "tenants[Acme].name", "not a valid name"}}},
		{"tenant no name", "version: 1\ntenants: [{memory: 1Gi}]\n" + route, []problem{{2, "tenants[0]", "no name"}}},
		{"tenant duplicate", "version: 1\ntenants:\n  - {name: a}\n  - {name: a}\n" + route, []problem{{4, "tenants[a].name", "duplicate tenant name (first at line 3)"}}},
		{"tenant weight range", "version: 1\ntenants: [{name: a, cpu_weight: 10001}]\n" + route, []problem{{2, "tenants[a].cpu_weight", "out of range 1..10000"}}},
		{"queue_timeout without queue", "version: 1\ntenants: [{name: a, queue_timeout: 1s}]\n" + route, []problem{{2, "tenants[a].queue_timeout", "without a queue"}}},
		{"queue_timeout with queue 0", "version: 1\ntenants: [{name: a, queue: 0, queue_timeout: 1s}]\n" + route, []problem{{2, "tenants[a].queue_timeout", "without a queue"}}},
		{"queue without timeout", "version: 1\ntenants: [{name: a, queue: 4}]\n" + route, []problem{{2, "tenants[a].queue", "without queue_timeout"}}},
		{"tenant unknown key", "version: 1\ntenants: [{name: a, weight: 1}]\n" + route, []problem{{2, "tenants[a].weight", "unknown key"}}},

		{"route no name", "version: 1\nroutes:\n  - {match: {path: /}, program: /a}\n", []problem{{3, "routes[0]", "no name"}}},
		{"route duplicate name", "version: 1\nroutes:\n  - {name: a, match: {path: /a}, program: /a}\n  - {name: a, match: {path: /b}, program: /b}\n",
			[]problem{{4, "routes[a].name", "duplicate route name (first at line 3)"}}},
		{"route no match", "version: 1\nroutes:\n  - {name: a, program: /a}\n", []problem{{3, "routes[a].match", "no match"}}},
		{"route no path", "version: 1\nroutes:\n  - {name: a, match: {host: x.org}, program: /a}\n", []problem{{3, "routes[a].match.path", "no path"}}},
		{"route relative path", "version: 1\nroutes:\n  - {name: a, match: {path: a}, program: /a}\n", []problem{{3, "routes[a].match.path", "not an absolute path"}}},
		{"route unclean path", "version: 1\nroutes:\n  - {name: a, match: {path: /a/../b}, program: /a}\n", []problem{{3, "routes[a].match.path", "not a clean path"}}},
		{"route double slash", "version: 1\nroutes:\n  - {name: a, match: {path: //a}, program: /a}\n", []problem{{3, "routes[a].match.path", "not a clean path"}}},
		// Routes match the decoded request path: "/my%20app" matched only
		// /my%2520app, "/a?b" only /a%3Fb.
		{"route percent-encoded path", "version: 1\nroutes:\n  - {name: a, match: {path: \"/my%20app\"}, program: /a}\n", []problem{{3, "routes[a].match.path", "only a request for /my%2520app"}}},
		{"route path with NUL", "version: 1\nroutes:\n  - {name: a, match: {path: \"/a\\0b\"}, program: /a}\n", []problem{{3, "routes[a].match.path", "a NUL byte"}}},
		{"route path with a query", "version: 1\nroutes:\n  - {name: a, match: {path: \"/a?b=1\"}, program: /a}\n", []problem{{3, "routes[a].match.path", "a '?': routes match the request's path alone"}}},
		{"route path with a fragment", "version: 1\nroutes:\n  - {name: a, match: {path: \"/a#top\"}, program: /a}\n", []problem{{3, "routes[a].match.path", "a '#'"}}},
		{"host with port", "version: 1\nroutes:\n  - {name: a, match: {host: \"x.org:80\", path: /}, program: /a}\n", []problem{{3, "routes[a].match.host", "with a port"}}},
		{"host bare wildcard", "version: 1\nroutes:\n  - {name: a, match: {host: \"*\", path: /}, program: /a}\n", []problem{{3, "routes[a].match.host", "bare wildcard"}}},
		{"host inner wildcard", "version: 1\nroutes:\n  - {name: a, match: {host: \"a.*.org\", path: /}, program: /a}\n", []problem{{3, "routes[a].match.host", "not a host name"}}},
		{"methods lower case", "version: 1\nroutes:\n  - {name: a, match: {path: /, methods: [get]}, program: /a}\n", []problem{{3, "routes[a].match.methods", "case-sensitive"}}},
		{"methods empty", "version: 1\nroutes:\n  - {name: a, match: {path: /, methods: []}, program: /a}\n", []problem{{3, "routes[a].match.methods", "empty list"}}},
		{"methods twice", "version: 1\nroutes:\n  - {name: a, match: {path: /, methods: [GET, GET]}, program: /a}\n", []problem{{3, "routes[a].match.methods", "listed twice"}}},
		{"CONNECT", "version: 1\nroutes:\n  - {name: a, match: {path: /, methods: [GET, CONNECT]}, program: /a}\n", []problem{{3, "routes[a].match.methods", "answers CONNECT with a 501"}}},
		{"methods not a list", "version: 1\nroutes:\n  - {name: a, match: {path: /, methods: GET}, program: /a}\n", []problem{{3, "routes[a].match.methods", "want a list"}}},
		{"unknown tenant", "version: 1\ntenants: [{name: b}]\nroutes:\n  - name: a\n    match: {path: /}\n    tenant: c\n    program: /a\n", []problem{{6, "routes[a].tenant", "unknown tenant"}}},
		{"unknown driver", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, driver: fcgi}\n", []problem{{3, "routes[a].driver", "unknown driver"}}},
		{"program and dir", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, dir: /b}\n", []problem{{3, "routes[a].dir", "both program and dir"}}},
		{"neither program nor dir", "version: 1\nroutes:\n  - {name: a, match: {path: /}}\n", []problem{{3, "routes[a]", "neither program nor dir"}}},
		{"relative program without base", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: bin/a}\n", []problem{{3, "routes[a].program", "relative path"}}},
		{"program not a string", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: [a]}\n", []problem{{3, "routes[a].program", "want a string, got a list"}}},
		{"route memory above tenant", "version: 1\ntenants: [{name: t, memory: 64Mi}]\nroutes:\n  - name: a\n    match: {path: /}\n    tenant: t\n    program: /a\n    memory: 128Mi\n",
			[]problem{{8, "routes[a].memory", "exceeds tenant t's budget 64Mi"}}},
		{"default memory above tenant", "version: 1\ndefaults: {memory: 128Mi}\ntenants: [{name: t, memory: 64Mi}]\nroutes:\n  - {name: a, match: {path: /}, tenant: t, program: /a}\n",
			[]problem{{5, "routes[a].memory", "exceeds tenant t's budget"}}},
		{"route memory above global", "version: 1\nglobal: {memory: 32Mi}\n" + route, []problem{{4, "routes[a].memory", "exceeds the global budget 32Mi"}}},
		{"route swap negative", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, swap: -1}\n", []problem{{3, "routes[a].swap", "not a size"}}},
		{"same requests", "version: 1\nroutes:\n  - {name: a, match: {path: /x/}, program: /a}\n  - {name: b, match: {path: /x}, program: /b}\n",
			[]problem{{4, "routes[b]", "same requests as route a (line 3)"}}},
		{"same requests overlapping methods", "version: 1\nroutes:\n  - {name: a, match: {path: /x, methods: [GET, POST]}, program: /a}\n  - {name: b, match: {path: /x, methods: [POST]}, program: /b}\n",
			[]problem{{4, "routes[b]", "same requests"}}},
		{"same requests host case", "version: 1\nroutes:\n  - {name: a, match: {host: A.org, path: /}, program: /a}\n  - {name: b, match: {host: a.org., path: /}, program: /b}\n",
			[]problem{{4, "routes[b]", "same requests"}}},
		{"env reserved", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: {PATH_INFO: x}}\n", []problem{{3, "routes[a].env.PATH_INFO", "CGI driver sets"}}},
		{"env HTTP_", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: {http_proxy: x}}\n", []problem{{3, "routes[a].env.http_proxy", "CGI driver sets"}}},
		{"env bad name", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: {1A: x}}\n", []problem{{3, "routes[a].env.1A", "not an environment variable name"}}},
		{"env null", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: {A: }}\n", []problem{{3, "routes[a].env.A", "want a value, got no value"}}},
		{"env NUL", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: {A: \"a\\0b\"}}\n", []problem{{3, "routes[a].env.A", "a NUL byte in the value"}}},
		{"env not a mapping", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: [A]}\n", []problem{{3, "routes[a].env", "want a mapping"}}},
		{"pass_env HTTP_PROXY", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, pass_env: [HTTP_PROXY]}\n", []problem{{3, "routes[a].pass_env", "CGI driver sets"}}},
		{"pass_env and env", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, env: {TZ: UTC}, pass_env: [TZ]}\n", []problem{{3, "routes[a].pass_env", "also set in env"}}},
		{"user root", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, user: root}\n", []problem{{3, "routes[a].user", "as root"}}},
		{"user 0", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, user: 0}\n", []problem{{3, "routes[a].user", "as root"}}},
		{"user -1", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, user: -1}\n", []problem{{3, "routes[a].user", "out of range"}}},
		{"user bad name", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, user: \"Bad User\"}\n", []problem{{3, "routes[a].user", "not a user name"}}},
		{"allow_root string", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, allow_root: \"yes\"}\n", []problem{{3, "routes[a].allow_root", "want true or false"}}},
		{"response", "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, response: buffer}\n", []problem{{3, "routes[a].response", "unknown response mode"}}},
		{"route unknown key", "version: 1\nroutes:\n  - name: a\n    match: {path: /}\n    program: /a\n    memroy: 1Mi\n", []problem{{6, "routes[a].memroy", "unknown key"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			requireProblems(t, err, tt.want)
		})
	}
}

// requireProblems checks that err is an *InvalidError holding exactly the
// wanted problems (by line, key and message substring), each with a fix or
// a message naming the file.
func requireProblems(t *testing.T, err error, want []problem) {
	t.Helper()
	if !errors.Is(err, ErrInvalid) {
		t.Fatalf("err = %v, want ErrInvalid", err)
	}
	var ie *InvalidError
	if !errors.As(err, &ie) {
		t.Fatalf("err = %T, want *InvalidError", err)
	}
	if len(ie.Problems) != len(want) {
		t.Fatalf("%d problems, want %d:\n%v", len(ie.Problems), len(want), err)
	}
	for i, w := range want {
		got := ie.Problems[i]
		if got.Line != w.line || got.Key != w.key || !strings.Contains(got.Msg, w.msg) {
			t.Errorf("problem %d = %s\nwant line %d key %q msg containing %q", i, got, w.line, w.key, w.msg)
		}
		if got.File != ie.File || !strings.HasPrefix(got.String(), ie.File) {
			t.Errorf("problem %d does not name the file: %s", i, got)
		}
	}
}

func TestParseCollectsAllProblems(t *testing.T) {
	src := `version: 1
defaults: {memory: lots}
tenants:
  - name: t
    memory: 64Mi
    queue: 3
routes:
  - name: a
    match: {path: /a}
    tenant: t
    program: /a
    memory: 128Mi
  - name: b
    match: {path: /b}
    program: relative
    cpu: 0
`
	_, err := Parse("p.yaml", []byte(src))
	requireProblems(t, err, []problem{
		{2, "defaults.memory", "not a size"},
		{6, "tenants[t].queue", "without queue_timeout"},
		{12, "routes[a].memory", "exceeds tenant t's budget"},
		{15, "routes[b].program", "relative path"},
		{16, "routes[b].cpu", "below the floor"},
	})
	if !strings.Contains(err.Error(), "p.yaml:12: routes[a].memory: \"128Mi\": ") {
		t.Errorf("error text does not show file:line: key: value:\n%v", err)
	}
}

func TestParseAliases(t *testing.T) {
	src := "version: 1\nx-limits: &small {memory: 8Mi}\nroutes: []\n"
	_, err := Parse("p.yaml", []byte(src))
	requireProblems(t, err, []problem{{2, "x-limits", "unknown key"}, {3, "routes", "no routes"}})

	src = "version: 1\ndefaults: &d {memory: 8Mi}\nroutes:\n  - {name: a, match: {path: /}, program: /a, memory: 16Mi}\n"
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if p.Routes[0].Memory != 16<<20 || p.Defaults.Memory != 8<<20 {
		t.Errorf("memory %d defaults %d", p.Routes[0].Memory, p.Defaults.Memory)
	}
}

func TestLoad(t *testing.T) {
	dir := t.TempDir()
	file := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(file, []byte("version: 1\nroutes:\n  - {name: a, match: {path: /}, dir: cgi}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	p, err := Load(file)
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(dir, "cgi"); p.Routes[0].Dir != want {
		t.Errorf("Dir = %q, want %q", p.Routes[0].Dir, want)
	}
	_, err = Load(filepath.Join(dir, "missing.yaml"))
	if !errors.Is(err, os.ErrNotExist) || errors.Is(err, ErrInvalid) || !strings.Contains(err.Error(), "missing.yaml") {
		t.Errorf("Load(missing) = %v, want a wrapped ErrNotExist naming the file", err)
	}
}

func TestParseIntegers(t *testing.T) {
	for _, tt := range []struct {
		pids string
		want int64
	}{{"64", 64}, {"0x40", 64}, {"0o100", 64}} {
		src := "version: 1\ndefaults: {pids: " + tt.pids + "}\nroutes:\n  - {name: a, match: {path: /}, program: /a}\n"
		p, err := Parse("p.yaml", []byte(src))
		if err != nil {
			t.Fatalf("pids %s: %v", tt.pids, err)
		}
		if p.Defaults.Pids != tt.want {
			t.Errorf("pids %s = %d, want %d", tt.pids, p.Defaults.Pids, tt.want)
		}
	}
	_, err := Parse("p.yaml", []byte("version: 1\ndefaults: {pids: 99999999999999999999}\nroutes:\n  - {name: a, match: {path: /}, program: /a}\n"))
	requireProblems(t, err, []problem{{2, "defaults.pids", ""}})
}

// TestMaxBodyPrecedence: a route's max_body wins, 0 included (no body
// accepted); without one it takes the defaults'; with neither it is nil,
// which the proxy reads as its own maximum (--max-body). There used to be
// a built-in 10Mi, so that --max-body never applied.
func TestMaxBodyPrecedence(t *testing.T) {
	for _, tc := range []struct {
		name, defaults, route string
		want                  *int64
	}{
		{"neither", "", "", nil},
		{"defaults", "defaults: {max_body: 1Mi}\n", "", new(int64(1 << 20))},
		{"route over defaults", "defaults: {max_body: 1Mi}\n", ", max_body: 2k", new(int64(2000))},
		{"route 0", "", ", max_body: 0", new(int64(0))},
		{"route 0 over defaults", "defaults: {max_body: 1Mi}\n", ", max_body: 0", new(int64(0))},
		{"defaults 0", "defaults: {max_body: 0}\n", "", new(int64(0))},
	} {
		t.Run(tc.name, func(t *testing.T) {
			src := "version: 1\n" + tc.defaults + "routes:\n  - {name: a, match: {path: /}, program: /bin/a" + tc.route + "}\n"
			p, err := Parse("p.yaml", []byte(src))
			if err != nil {
				t.Fatalf("%s: %v", src, err)
			}
			if got := p.Routes[0].MaxBody; !reflect.DeepEqual(got, tc.want) {
				t.Errorf("MaxBody = %s, want %s", fmtPtr(got), fmtPtr(tc.want))
			}
		})
	}
}

func fmtPtr(n *int64) string {
	if n == nil {
		return "nil"
	}
	return strconv.FormatInt(*n, 10)
}

// TestParseTiesOnce: a route that ties with several earlier ones is
// reported once, against the first of them.
func TestParseTiesOnce(t *testing.T) {
	src := "version: 1\nroutes:\n" +
		"  - {name: a, match: {path: /x, methods: [GET]}, program: /a}\n" +
		"  - {name: b, match: {path: /x, methods: [POST]}, program: /b}\n" +
		"  - {name: c, match: {path: /x, methods: [GET, POST]}, program: /c}\n" +
		"  - {name: d, match: {path: /x, methods: [POST]}, program: /d}\n" +
		"  - {name: e, match: {path: /x}, program: /e}\n" +
		"  - {name: f, match: {path: /x}, program: /f}\n" +
		"  - {name: g, match: {path: /x}, program: /g}\n"
	_, err := Parse("p.yaml", []byte(src))
	requireProblems(t, err, []problem{
		{5, "routes[c]", "same requests as route a (line 3)"},
		{6, "routes[d]", "same requests as route b (line 4)"},
		{8, "routes[f]", "same requests as route e (line 7)"},
		{9, "routes[g]", "same requests as route e (line 7)"},
	})
}

// TestParseManyProblems: a file of one route's aliases, or of one route
// pasted over and over, lists maxProblems problems and one counting the
// rest, and the rest are one per route (a duplicate name and a tie), not
// one per pair of routes.
func TestParseManyProblems(t *testing.T) {
	const n = 3000
	aliases := "version: 1\nx: &r {name: a, match: {path: /a}, program: /a}\nroutes: [" +
		strings.Repeat("*r, ", n-1) + "*r]\n"
	pasted := "version: 1\nroutes:\n" + strings.Repeat("  - {name: a, match: {path: /a}, program: /a}\n", n)
	for _, tc := range []struct {
		name, src string
		want      int // problems found
	}{
		{"aliases", aliases, 1 + 2*(n-1)}, // the unknown key x, and each route but the first
		{"pasted", pasted, 2 * (n - 1)},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tc.src))
			var ie *InvalidError
			if !errors.As(err, &ie) {
				t.Fatalf("err = %v, want an *InvalidError", err)
			}
			if len(ie.Problems) != maxProblems+1 || ie.Count() != tc.want {
				t.Fatalf("%d problems listed, %d found; want %d listed, %d found", len(ie.Problems), ie.Count(), maxProblems+1, tc.want)
			}
			last := ie.Problems[maxProblems]
			if want := fmt.Sprintf("... and %d more problems", tc.want-maxProblems); last.Msg != want || last.File != "p.yaml" {
				t.Errorf("last problem = %s, want %q", last, want)
			}
			for i, p := range ie.Problems[1:maxProblems] {
				if p.Line < ie.Problems[i].Line {
					t.Fatalf("problem %d (line %d) listed after line %d", i+1, p.Line, ie.Problems[i].Line)
				}
			}
			if !strings.Contains(err.Error(), fmt.Sprintf(": %d problem(s):", tc.want)) {
				t.Errorf("error does not count every problem: %.200s", err)
			}
		})
	}
}

// TestLoadTooLarge: a file above MaxFileSize is refused, naming the file,
// its size and the bound, without being parsed.
func TestLoadTooLarge(t *testing.T) {
	file := filepath.Join(t.TempDir(), "policy.yaml")
	src := "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a}\n"
	pad := strings.Repeat("# padding\n", (MaxFileSize-len(src))/10+1)
	if err := os.WriteFile(file, []byte(src+pad), 0o644); err != nil {
		t.Fatal(err)
	}
	size := len(src) + len(pad)
	_, err := Load(file)
	requireProblems(t, err, []problem{{0, "", fmt.Sprintf("the file is %d bytes, above the %s", size, FormatBytes(MaxFileSize))}})
	if !strings.Contains(err.Error(), file) {
		t.Errorf("error does not name the file: %v", err)
	}
	if err := os.WriteFile(file, []byte(src+pad[:MaxFileSize-len(src)]), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(file); err != nil {
		t.Errorf("a file of MaxFileSize bytes: %v", err)
	}
}

// TestParseAliasesExpanded: aliases may not make a file that, written out,
// would be larger than MaxFileSize; one that does is one problem, not a
// route per alias (1 MiB of "*r," made 350000 routes) nor an env copied
// into every route. A file as large without aliases parses.
func TestParseAliasesExpanded(t *testing.T) {
	const route = "{name: a, match: {path: /a}, program: /a}"
	head := "version: 1\nx: &r " + route + "\nroutes: ["
	var routes strings.Builder
	routes.WriteString("version: 1\nroutes:\n")
	for i := 0; routes.Len() < MaxFileSize-100; i++ {
		fmt.Fprintf(&routes, "  - {name: r%d, match: {path: /%d}, program: /a}\n", i, i)
	}
	env := "version: 1\nroutes:\n  - {name: r0, match: {path: /0}, program: /a, env: &e {A: " + strings.Repeat("a", 80<<10) + "}}\n"
	for i := 1; i < 14; i++ {
		env += fmt.Sprintf("  - {name: r%d, match: {path: /%d}, program: /a, env: *e}\n", i, i)
	}
	for _, tc := range []struct {
		name, src string
		ok        bool
	}{
		{"route aliases", head + strings.Repeat("*r, ", (MaxFileSize-len(head))/4-1) + "*r]\n", false},
		{"list aliases", "version: 1\nx: &l [" + route + ", " + route + "]\ny: &m [*l, *l, *l, *l, *l, *l, *l, *l]\nz: &n [*m, *m, *m, *m, *m, *m, *m, *m]\n" +
			"routes: [" + strings.Repeat("*n, ", 1000) + "*n]\n", false},
		{"env alias", env, false},
		{"alias of itself", "version: 1\nroutes: &a [{name: a, match: {path: /}, program: /a, env: {A: *a}}]\n", false},
		{"no aliases", routes.String(), true},
		{"few aliases", env[:strings.Index(env, "  - {name: r10")], true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if len(tc.src) > MaxFileSize {
				t.Fatalf("the file is %d bytes, above MaxFileSize", len(tc.src))
			}
			_, err := Parse("p.yaml", []byte(tc.src))
			var ie *InvalidError
			switch {
			case tc.ok && err != nil:
				t.Fatalf("%.300v", err)
			case !tc.ok && !errors.As(err, &ie):
				t.Fatalf("err = %v, want an *InvalidError", err)
			case tc.name == "alias of itself":
				requireProblems(t, err, []problem{{0, "", "an alias inside the value it names"}})
			case !tc.ok:
				requireProblems(t, err, []problem{{0, "", "with its aliases written out, the file would be larger than the 1Mi"}})
			}
		})
	}
}

// TestParseBounds: pids within what pids.max takes, less a confined
// cell's init's for a request, and at least a cell's two processes for a
// tenant; sizes at most MaxSize, so that their sums (memory + swap, a
// preloader beside a request) stay in range. Each refusal names the
// bound in its fix.
func TestParseBounds(t *testing.T) {
	const route = "  - {name: a, match: {path: /}, program: /a%s}\n"
	const fork = "  - {name: a, match: {path: /}, driver: fork, runtime: python-wsgi, app: \"m:app\", app_dir: /s%s}\n"
	tests := []struct {
		name, key string
		top       string // sections before routes:
		entry     string // the route's entry, with a %s for extra
		extra     string // keys added to the route
		fix       string // a substring of the fix; "" for a policy that parses
	}{
		{"route pids at the ceiling", "", "", route, ", pids: 4194296", ""},
		{"route pids above", "routes[a].pids", "", route, ", pids: 4194297", "to 4194296: pids.max takes at most 4194304"},
		{"route pids overflowing", "routes[a].pids", "", route, ", pids: 9223372036854775807", "to 4194296"},
		{"defaults pids above", "defaults.pids", "defaults: {pids: 4194304}\n", route, "", "to 4194296"},
		{"tenant pids at the ceiling", "", "tenants: [{name: t, pids: 4194304}]\n", route, "", ""},
		{"tenant pids above", "tenants[t].pids", "tenants: [{name: t, pids: 4194305}]\n", route, "", "to 4194304"},
		{"tenant pids 2", "", "tenants: [{name: t, pids: 2}]\n", route, "", ""},
		{"tenant pids 1", "tenants[t].pids", "tenants: [{name: t, pids: 1}]\n", route, "", "use 2 (a confined cell's init and its program)"},
		{"memory and swap at the ceiling", "", "", route, ", memory: 1024Ti, swap: 1024Ti", ""},
		{"memory above", "routes[a].memory", "", route, ", memory: 1025Ti", "at most 1024Ti"},
		{"swap overflowing memory+swap", "routes[a].swap", "", route, ", swap: 8388607Ti", "at most 1024Ti"},
		{"max_body above", "routes[a].max_body", "", route, ", max_body: 2048Ti", "at most 1024Ti"},
		{"defaults swap above", "defaults.swap", "defaults: {swap: 1025Ti}\n", route, "", "at most 1024Ti"},
		{"global memory above", "global.memory", "global: {memory: 1025Ti}\n", route, "", "at most 1024Ti"},
		{"tenant memory above", "tenants[t].memory", "tenants: [{name: t, memory: 1025Ti}]\n", route, "", "at most 1024Ti"},
		{"tmpfs_size above", "routes[a].tmpfs_size", "", route, ", tmpfs_size: 1025Ti", "at most 1024Ti"},
		{"preload_memory above", "routes[a].preload_memory", "", fork, ", preload_memory: 8388607Ti", "at most 1024Ti"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			src := "version: 1\n" + tt.top + "routes:\n" + fmt.Sprintf(tt.entry, tt.extra)
			p, err := Parse("p.yaml", []byte(src))
			if tt.fix == "" {
				if err != nil {
					t.Fatal(err)
				}
				if r := p.Routes[0]; r.Resources.Memory != nil && *r.Resources.Memory.Swap < *r.Resources.Memory.Limit {
					t.Errorf("memory+swap %d below memory %d: overflowed", *r.Resources.Memory.Swap, *r.Resources.Memory.Limit)
				}
				return
			}
			var ie *InvalidError
			if !errors.As(err, &ie) || len(ie.Problems) != 1 {
				t.Fatalf("err = %v, want one problem", err)
			}
			if pr := ie.Problems[0]; pr.Key != tt.key || pr.Value == "" || !strings.Contains(pr.Fix, tt.fix) {
				t.Errorf("problem = %s\nwant key %s, the value, and a fix containing %q", pr, tt.key, tt.fix)
			}
		})
	}
}

// TestParsePathFix: a match.path holding '%', '?' or '#' is refused with
// the path to write instead.
func TestParsePathFix(t *testing.T) {
	for _, tt := range []struct{ path, fix string }{
		{"/my%20app", `write it decoded: "/my app"`},
		{"/my%20app/", `write it decoded: "/my app/"`},
		{"/a?b=1", `write the path part only: "/a"`},
		{"/a/#top", `write the path part only: "/a/"`},
		{"/my%20app?x", `keep the path part only, "/my%20app", and write it decoded: "/my app"`},
		{"/a%zz", "write each %XX as the character it encodes"},
		{"/x/a%3Fb/c", `decoded it is "/x/a?b/c", whose '?' no prefix may hold: match the segment above it, "/x"`},
	} {
		_, err := Parse("p.yaml", []byte("version: 1\nroutes:\n  - {name: a, match: {path: \""+tt.path+"\"}, program: /a}\n"))
		var ie *InvalidError
		if !errors.As(err, &ie) || len(ie.Problems) != 1 {
			t.Errorf("path %q: err = %v, want one problem", tt.path, err)
			continue
		}
		if pr := ie.Problems[0]; pr.Key != "routes[a].match.path" || pr.Value != tt.path || pr.Fix != tt.fix {
			t.Errorf("path %q: %s\nwant the fix %q", tt.path, pr, tt.fix)
		}
	}
}

// TestParseEnvBounds: an env entry execve cannot take (MAX_ARG_STRLEN,
// 128 KiB with its NUL) and a route's env above maxRouteEnv are refused,
// naming the key: every request of the route would fail with E2BIG.
func TestParseEnvBounds(t *testing.T) {
	value := func(n int) string { return strings.Repeat("v", n) }
	route := func(env string) string {
		return "version: 1\nroutes:\n  - name: a\n    match: {path: /}\n    program: /a\n    env:\n" + env
	}
	longest := 128<<10 - 1 - len("A=") // A=value and its NUL: 128 KiB
	tests := []struct {
		name, env string
		want      []problem
	}{
		{"the longest entry", "      A: " + value(longest) + "\n", nil},
		{"an entry of 128 KiB", "      A: " + value(longest+1) + "\n", []problem{{7, "routes[a].env.A", "an entry of 131072 bytes"}}},
		{"entries at the budget", "      A: " + value(longest) + "\n      B: " + value(256<<10-(128<<10)-len("B=")-1) + "\n", nil},
		{"entries above the budget", "      A: " + value(longest) + "\n      B: " + value(longest) + "\n      C: x\n",
			[]problem{{6, "routes[a].env", "entries of 262148 bytes in all, above the 256Ki"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p, err := Parse("p.yaml", []byte(route(tt.env)))
			if tt.want == nil {
				if err != nil {
					t.Fatalf("%.500v", err)
				}
				total := 0
				for _, e := range p.Routes[0].Env {
					total += len(e) + 1
				}
				if total > 256<<10 || len(p.Routes[0].Env[0]) > 128<<10-1 {
					t.Fatalf("env of %d bytes, first entry %d", total, len(p.Routes[0].Env[0]))
				}
				return
			}
			requireProblems(t, err, tt.want)
			var ie *InvalidError
			errors.As(err, &ie)
			if pr := ie.Problems[0]; pr.Fix == "" || len(pr.String()) > 1000 {
				t.Errorf("problem without a fix, or quoting the whole value: %.300s", pr)
			}
		})
	}
}

// TestParseSizeAndDurationMessages: a size says why it is not one (not a
// whole number of bytes, too large) rather than "not a size", and a size
// or duration written as a YAML number gets a unit as its fix, where
// quoting it would only make it text that is no size or duration either.
func TestParseSizeAndDurationMessages(t *testing.T) {
	tests := []struct {
		key, value string
		msg, fix   string // substrings
	}{
		{"memory", "1.0001Mi", "not a whole number of bytes", "round it to whole bytes: 1048680"},
		{"max_body", "99999999Ti", "too large: above the largest size 1024Ti", "at most 1024Ti"},
		{"max_body", "99999999999999999999", "too large", "at most 1024Ti"},
		{"swap", "1e9", "want a size", "add a unit: 64Mi"},
		{"memory", "1.5", "want a size", "add a unit: 64Mi"},
		{"swap", "64Q", "not a size", "512k, 64Mi, 1G"},
		{"memory", "true", "want a size", "512k, 64Mi, 1G"},
		{"timeout", "30", "want a duration", "add a unit: 30s"},
		{"timeout", "2.5", "want a duration", "add a unit: 2.5s"},
		{"timeout", "0x10", "want a duration", "add a unit: 16s"},
		{"timeout", "true", "want a duration", "500ms, 30s, 2m"},
		{"timeout", "soon", "not a duration", "500ms, 30s, 2m"},
		// A word key given another type is told its words: quoting
		// "1" or "false" would make a word that is none of them.
		{"response", "1", "want a response mode: spool or stream", "use spool or stream"},
		{"seccomp", "false", "want one of default, off, got a boolean", "use default or off"},
		{"driver", "true", "want a driver: cgi or fork", "use cgi"},
		// A CPU amount says why it is none; an integer too large for
		// YAML's (a float to it) is out of range, not "not an integer".
		{"cpu", "200000", "too large: at most 100000 CPUs", "lower it, or write max"},
		{"cpu", "1.0001", "finer than a thousandth of a CPU", "round it"},
		{"pids", "99999999999999999999", "out of range", "use 1"},
	}
	for _, tt := range tests {
		t.Run(tt.key+" "+tt.value, func(t *testing.T) {
			src := "version: 1\nroutes:\n  - {name: a, match: {path: /}, program: /a, " + tt.key + ": " + tt.value + "}\n"
			_, err := Parse("p.yaml", []byte(src))
			var ie *InvalidError
			if !errors.As(err, &ie) || len(ie.Problems) != 1 {
				t.Fatalf("err = %v, want one problem", err)
			}
			if pr := ie.Problems[0]; pr.Key != "routes[a]."+tt.key || pr.Value != tt.value || !strings.Contains(pr.Msg, tt.msg) || !strings.Contains(pr.Fix, tt.fix) {
				t.Errorf("problem = %s\nwant the message containing %q and the fix %q", pr, tt.msg, tt.fix)
			}
		})
	}
}

// TestParseTabIndent: a tab where YAML wants spaces says to indent with
// spaces; the syntax error alone gave no fix.
func TestParseTabIndent(t *testing.T) {
	_, err := Parse("p.yaml", []byte("version: 1\nroutes:\n\t- {name: a, match: {path: /}, program: /a}\n"))
	var ie *InvalidError
	if !errors.As(err, &ie) || len(ie.Problems) != 1 || !strings.Contains(ie.Problems[0].Msg, "YAML syntax") ||
		!strings.Contains(ie.Problems[0].Fix, "indent with spaces") {
		t.Errorf("err = %v, want one YAML syntax problem whose fix is to indent with spaces", err)
	}
}
