package policy

import (
	"fmt"
	"math"
	"regexp"
)

// forkKeys are the route keys of the fork driver; a cgi route may not set
// them.
var forkKeys = []string{"runtime", "app", "python", "app_dir", "preload_memory", "recycle_after"}

// appRE is the shape of a WSGI application reference: a dotted module path,
// a colon, and the name of the callable in that module.
var appRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$`)

// Runtime is the language runtime a fork route preloads.
type Runtime string

// RuntimePythonWSGI imports a WSGI application once in a Python preloader;
// each request is served by a clone of it with CGI semantics on its stdio
// (wsgiref's CGIHandler).
const RuntimePythonWSGI Runtime = "python-wsgi"

// DriverFork serves each request from a clone of a warm preloader, started
// straight into the request's cell.
const DriverFork Driver = "fork"

// Defaults of a fork route's keys.
const (
	DefaultPython        = "/usr/bin/python3"
	DefaultPreloadMemory = 256 << 20
)

// Fork is what a fork route preloads. The route's Env is the preloader's
// environment (at import) and each request's, beside its CGI variables.
type Fork struct {
	// Runtime is the runtime of the preloader.
	Runtime Runtime
	// App is "package.module:callable".
	App string
	// Python is the absolute path of the interpreter.
	Python string
	// AppDir is the absolute directory the app is imported from (the first
	// entry of sys.path) and the preloader's working directory.
	AppDir string
	// PreloadMemory is the memory.max of the preloader's own group, in
	// bytes; it counts in the tenant's group like the cells.
	PreloadMemory int64
	// RecycleAfter replaces the preloader with a fresh one after this many
	// requests (so that copy-on-write sharing does not erode); 0 = never.
	RecycleAfter int64
}

// forkRoute decodes the fork keys of route r (at path p, entry line line).
// It is called for every route: a cgi route that sets a fork key, and a
// fork route that sets program or dir, are problems.
func (d *decoder) forkRoute(fs map[string]field, line int, p string, r *Route) {
	if r.Driver != DriverFork {
		for _, k := range forkKeys {
			if f, ok := fs[k]; ok {
				d.problem(f.line(), join(p, k), f.val.Value, "a key of the fork driver on a "+string(r.Driver)+" route", "add driver: fork, or remove "+k)
			}
		}
		return
	}
	for _, k := range []string{"program", "dir"} {
		if f, ok := fs[k]; ok {
			d.problem(f.line(), join(p, k), f.val.Value, "a fork route runs no program", "remove "+k+"; a fork route names its app with app: and app_dir:")
		}
	}
	if f, ok := fs["huge_pages"]; ok {
		// The preloader is long-lived and its children share its pages:
		// the system's setting stays (Confinement.HugePages).
		d.problem(f.line(), join(p, "huge_pages"), f.val.Value, "has no effect on a fork route, whose preloader and requests keep the system's transparent huge pages", "remove huge_pages")
	}
	if f, ok := fs["cells"]; ok {
		// Each request is a child of the preloader, which is kept
		// already: there is no cell of the route's to keep.
		d.problem(f.line(), join(p, "cells"), f.val.Value, "has no effect on a fork route, whose requests are each a fresh child of the preloader", "remove cells")
	}
	if f, ok := fs["groups"]; ok {
		d.problem(f.line(), join(p, "groups"), f.val.Value, "has no effect on a fork route, whose requests each have a group of their own", "remove groups")
	}
	fk := &Fork{Python: DefaultPython, PreloadMemory: DefaultPreloadMemory}
	if f, ok := fs["runtime"]; ok {
		if v, ok := d.str(f, join(p, "runtime")); ok {
			if Runtime(v) != RuntimePythonWSGI {
				d.problem(f.line(), join(p, "runtime"), v, "unknown runtime", "use python-wsgi (the only runtime so far)")
			}
			fk.Runtime = Runtime(v)
		}
	} else {
		d.problem(line, join(p, "runtime"), "", "a fork route without a runtime", "add runtime: python-wsgi")
	}
	if f, ok := fs["app"]; ok {
		if v, ok := d.str(f, join(p, "app")); ok {
			if !appRE.MatchString(v) {
				d.problem(f.line(), join(p, "app"), v, "not a WSGI application reference", "write package.module:callable, e.g. hello:app")
			}
			fk.App = v
		}
	} else {
		d.problem(line, join(p, "app"), "", "a fork route without an app", "add app: package.module:callable")
	}
	if f, ok := fs["python"]; ok {
		fk.Python = d.programPath(f, join(p, "python"))
	}
	if f, ok := fs["app_dir"]; ok {
		fk.AppDir = d.programPath(f, join(p, "app_dir"))
	} else {
		d.problem(line, join(p, "app_dir"), "", "a fork route without an app_dir", "add app_dir: the directory the app is imported from")
	}
	if f, ok := fs["preload_memory"]; ok {
		if v, ok := d.size(f, join(p, "preload_memory"), MinMemory); ok {
			fk.PreloadMemory = v
		}
	}
	if f, ok := fs["recycle_after"]; ok {
		fk.RecycleAfter, _ = d.integer(f, join(p, "recycle_after"), 0, math.MaxInt64)
	}
	if f, ok := fs["user"]; ok && !r.User.Auto {
		d.problem(f.line(), join(p, "user"), f.val.Value, "a fork route's requests get uids of the preloader's own range",
			"remove user: (or write user: auto)")
	}
	r.Fork = fk
}

// preloadBudgets checks that each fork route's preloader fits in the
// budgets it is charged to beside the largest request that may run with
// it: its tenant's (any route of the tenant) and the global one (any
// route). A preloader's group lies under its tenant's, under cells/, and
// may hold up to its preload_memory whatever the requests; admission
// reserves only the requests' memory, so a preloader at its limit must
// leave the largest request room, or that request, admitted, is killed
// at the budget. The preloaders' limits are not summed: they are
// ceilings, mostly far above what an imported app holds, and may
// overcommit a budget as any cgroup limits do. A recycle's replacement
// imports within the same preload_memory.
func (d *decoder) preloadBudgets(p *Policy, sources []*routeSource) {
	type budget struct {
		largest int64          // the largest request
		fork    []*routeSource // the fork routes charged to it
	}
	global := &budget{}
	byTenant := map[string]*budget{}
	for _, s := range sources {
		r := s.route
		b := byTenant[r.Tenant]
		if b == nil {
			b = &budget{}
			byTenant[r.Tenant] = b
		}
		for _, b := range []*budget{b, global} {
			b.largest = max(b.largest, r.Memory)
			if r.Fork != nil {
				b.fork = append(b.fork, s)
			}
		}
	}
	check := func(b *budget, limit int64, whose, fix string) {
		if b == nil || limit <= 0 {
			return
		}
		for _, s := range b.fork {
			// Both are at most MaxSize: the sum cannot overflow.
			if pre := s.route.Fork.PreloadMemory; pre+b.largest > limit {
				d.problem(s.preloadLine, join(s.path, "preload_memory"), FormatBytes(pre),
					fmt.Sprintf("the preloader and the largest request (%s) exceed %s budget %s: that request, admitted beside a preloader at its limit, would be killed at the budget",
						FormatBytes(b.largest), whose, FormatBytes(limit)), fix)
			}
		}
	}
	for _, t := range p.Tenants {
		check(byTenant[t.Name], t.Memory, "tenant "+t.Name+"'s", "lower preload_memory or the routes' memory, or raise the tenant's memory")
	}
	check(global, p.Global.Memory, "the global", "lower preload_memory or the routes' memory, or raise global.memory")
}
