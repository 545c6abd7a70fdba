package policy

import (
	"errors"
	"reflect"
	"testing"
)

const matchPolicy = `version: 1
routes:
  - {name: root,      match: {path: /}, program: /srv/root}
  - {name: hello,     match: {path: /hello}, program: /srv/hello}
  - {name: hello-get, match: {path: /hello, methods: [GET]}, program: /srv/hello-get}
  - {name: deep,      match: {path: /hello/deep}, program: /srv/deep}
  - {name: bin,       match: {path: /cgi-bin}, dir: /srv/cgi-bin}
  - {name: rootdir,   match: {host: dir.test, path: /}, dir: /srv/rootdir}
  - {name: exact,     match: {host: example.com, path: /}, program: /srv/exact}
  - {name: wild,      match: {host: "*.example.com", path: /}, program: /srv/wild}
  - {name: wild-deep, match: {host: "*.api.example.com", path: /}, program: /srv/wild-deep}
  - {name: wild-path, match: {host: "*.example.com", path: /long/prefix}, program: /srv/wild-path}
  - {name: posts,     match: {path: /posts, methods: [POST, PUT]}, program: /srv/posts}
  - {name: ipv6,      match: {host: "[::1]", path: /}, program: /srv/ipv6}
`

func TestMatch(t *testing.T) {
	p, err := Parse("p.yaml", []byte(matchPolicy))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, host, method, path string
		route, program           string
		scriptName, pathInfo     string
	}{
		{"root", "other.org", "GET", "/", "root", "/srv/root", "", "/"},
		{"root deeper", "other.org", "GET", "/x/y", "root", "/srv/root", "", "/x/y"},
		{"prefix exact", "", "POST", "/hello", "hello", "/srv/hello", "/hello", ""},
		{"prefix slash", "", "POST", "/hello/", "hello", "/srv/hello", "/hello", "/"},
		{"prefix rest", "", "POST", "/hello/a/b", "hello", "/srv/hello", "/hello", "/a/b"},
		{"segment boundary", "", "POST", "/helloworld", "root", "/srv/root", "", "/helloworld"},
		{"methods beat any", "", "GET", "/hello/x", "hello-get", "/srv/hello-get", "/hello", "/x"},
		{"longer prefix", "", "GET", "/hello/deep/er", "deep", "/srv/deep", "/hello/deep", "/er"},
		{"dir program", "", "GET", "/cgi-bin/echo", "bin", "/srv/cgi-bin/echo", "/cgi-bin/echo", ""},
		{"dir program slash", "", "GET", "/cgi-bin/echo/", "bin", "/srv/cgi-bin/echo", "/cgi-bin/echo", "/"},
		{"dir path info", "", "GET", "/cgi-bin/echo/a/b", "bin", "/srv/cgi-bin/echo", "/cgi-bin/echo", "/a/b"},
		{"dir at root", "dir.test", "GET", "/prog/x", "rootdir", "/srv/rootdir/prog", "/prog", "/x"},
		{"exact host", "example.com", "GET", "/hello", "exact", "/srv/exact", "", "/hello"},
		{"host case and port", "EXAMPLE.com:8080", "GET", "/", "exact", "/srv/exact", "", "/"},
		{"host trailing dot", "example.com.", "GET", "/", "exact", "/srv/exact", "", "/"},
		{"wildcard", "a.example.com", "GET", "/hello", "wild", "/srv/wild", "", "/hello"},
		{"wildcard any depth", "a.b.example.com", "GET", "/", "wild", "/srv/wild", "", "/"},
		{"longer wildcard", "x.api.example.com", "GET", "/long/prefix", "wild-deep", "/srv/wild-deep", "", "/long/prefix"},
		{"wildcard beats prefix", "a.example.com", "GET", "/long/prefix/x", "wild-path", "/srv/wild-path", "/long/prefix", "/x"},
		{"wildcard not apex", "notexample.com", "GET", "/", "root", "/srv/root", "", "/"},
		{"ipv6 with port", "[::1]:8080", "GET", "/", "ipv6", "/srv/ipv6", "", "/"},
		// One address, written otherwise (RFC 5952's form is compared).
		{"ipv6 written otherwise", "[0:0:0:0:0:0:0:1]:80", "GET", "/", "ipv6", "/srv/ipv6", "", "/"},
		{"fall through on method", "", "GET", "/posts", "root", "/srv/root", "", "/posts"},
		{"methods allowed", "", "PUT", "/posts/1", "posts", "/srv/posts", "/posts", "/1"},
		{"encoded space kept", "", "GET", "/hello/a b", "hello-get", "/srv/hello-get", "/hello", "/a b"},
		{"double slash", "", "POST", "/hello//x", "hello", "/srv/hello", "/hello", "//x"},
		// Its slashes merged, the host's route takes it as well.
		{"double slash, host first", "example.com", "GET", "//hello", "exact", "/srv/exact", "", "//hello"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := p.Match(tt.host, tt.method, tt.path)
			if err != nil {
				t.Fatalf("Match(%q, %q, %q): %v", tt.host, tt.method, tt.path, err)
			}
			got := []string{m.Route.Name, m.Program, m.ScriptName, m.PathInfo}
			want := []string{tt.route, tt.program, tt.scriptName, tt.pathInfo}
			if !reflect.DeepEqual(got, want) {
				t.Errorf("Match(%q, %q, %q) = %q, want %q", tt.host, tt.method, tt.path, got, want)
			}
		})
	}
}

func TestMatchErrors(t *testing.T) {
	src := `version: 1
routes:
  - {name: posts, match: {path: /posts, methods: [POST, PUT]}, program: /srv/posts}
  - {name: get,   match: {path: /posts/x, methods: [GET, PUT]}, program: /srv/get}
  - {name: bin,   match: {path: /cgi-bin}, dir: /srv/cgi-bin}
  - {name: host,  match: {host: only.test, path: /}, program: /srv/host}
`
	p, err := Parse("p.yaml", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name, host, method, path string
		want                     error
		allow                    []string
	}{
		{"no route", "other.test", "GET", "/", ErrNoRoute, nil},
		{"empty host", "", "GET", "/", ErrNoRoute, nil},
		{"method", "", "GET", "/posts", ErrMethodNotAllowed, []string{"POST", "PUT"}},
		{"method union", "", "DELETE", "/posts/x", ErrMethodNotAllowed, []string{"GET", "POST", "PUT"}},
		{"dir without program", "", "GET", "/cgi-bin", ErrNoRoute, nil},
		{"dir slash only", "", "GET", "/cgi-bin/", ErrNoRoute, nil},
		{"dir empty segment", "", "GET", "/cgi-bin//x", ErrNoRoute, nil},
		{"dir hidden", "", "GET", "/cgi-bin/.env", ErrNoRoute, nil},
		{"dotdot", "", "GET", "/cgi-bin/../etc/passwd", ErrBadPath, nil},
		{"dot", "", "GET", "/posts/./x", ErrBadPath, nil},
		// Not routed by /posts/x's route, which would take it with its
		// slashes merged (as many programs merge them): with a route of
		// /, that one would run it, past /posts/x's.
		{"empty segment routing elsewhere", "", "GET", "//posts/x", ErrBadPath, nil},
		{"empty segments routing elsewhere", "", "GET", "///posts///x", ErrBadPath, nil},
		{"trailing dotdot", "only.test", "GET", "/a/..", ErrBadPath, nil},
		{"relative", "only.test", "GET", "posts", ErrBadPath, nil},
		{"empty path", "only.test", "GET", "", ErrBadPath, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := p.Match(tt.host, tt.method, tt.path)
			if !errors.Is(err, tt.want) {
				t.Fatalf("Match(%q, %q, %q) = %+v, %v; want %v", tt.host, tt.method, tt.path, m, err, tt.want)
			}
			var me *MethodError
			if errors.As(err, &me) != (tt.allow != nil) {
				t.Fatalf("err %v: MethodError presence wrong", err)
			}
			if me != nil && !reflect.DeepEqual(me.Allow, tt.allow) {
				t.Errorf("Allow = %q, want %q", me.Allow, tt.allow)
			}
		})
	}
}

// A Policy built by hand (not by Parse) still matches by priority.
func TestMatchHandBuilt(t *testing.T) {
	p := &Policy{Routes: []*Route{
		{Name: "any", PathPrefix: "/", Program: "/a"},
		{Name: "x", PathPrefix: "/x", Program: "/x"},
	}}
	m, err := p.Match("h", "GET", "/x/1")
	if err != nil || m.Route.Name != "x" {
		t.Fatalf("Match = %+v, %v; want route x", m, err)
	}
}

// TestRouteHostIPCanonical: a route's IPv6 host is kept in RFC 5952's
// form, so that two routes of one address written two ways tie (and are
// refused) rather than one shadowing the other, and a request's host in
// any form matches it.
func TestRouteHostIPCanonical(t *testing.T) {
	p, err := Parse("p.yaml", []byte("version: 1\nroutes:\n  - {name: a, match: {host: \"[2001:DB8:0::1]\", path: /}, program: /a}\n"))
	if err != nil {
		t.Fatal(err)
	}
	if h := p.Routes[0].Host; h != "2001:db8::1" {
		t.Errorf("host kept as %q, want 2001:db8::1", h)
	}
	_, err = Parse("p.yaml", []byte("version: 1\nroutes:\n  - {name: a, match: {host: \"[::1]\", path: /}, program: /a}\n  - {name: b, match: {host: \"[0::1]\", path: /}, program: /b}\n"))
	if err == nil {
		t.Error("routes of ::1 and 0::1 on one path were accepted: one shadows the other")
	}
}
