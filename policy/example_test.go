package policy

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// The example policy parses, and every program it names exists: either in
// the repository (scripts) or as an examples/cgi/NAME source that
// `make examples` builds into bin/cgi/NAME.
func TestExamplePolicy(t *testing.T) {
	p, err := Load(filepath.Join("..", "examples", "policy.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	repo, err := filepath.Abs("..")
	if err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(repo, "bin", "cgi")
	if len(p.Routes) < 5 {
		t.Fatalf("%d routes, want the example programs", len(p.Routes))
	}
	for _, r := range p.Routes {
		target := r.Program
		if target == "" {
			target = r.Dir
		}
		if r.Fork != nil {
			target = r.Fork.AppDir
		}
		switch {
		case target == bin:
		case strings.HasPrefix(target, bin+"/"):
			src := filepath.Join(repo, "examples", "cgi", filepath.Base(target))
			if _, err := os.Stat(src); err != nil {
				t.Errorf("route %s runs %s, but there is no source %s: %v", r.Name, target, src, err)
			}
		default:
			if _, err := os.Stat(target); err != nil {
				t.Errorf("route %s: %v", r.Name, err)
			}
		}
	}
	for _, path := range []string{"/hello", "/echo", "/spin", "/memhog", "/slow", "/cgi-bin/echo", "/hello.sh", "/wsgi", "/flask", "/flask-cgi"} {
		if _, err := p.Match("127.0.0.1:8080", "GET", path); err != nil {
			t.Errorf("GET %s: %v", path, err)
		}
	}
}
