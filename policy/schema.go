package policy

import (
	"fmt"
	"math"
	"net"
	"net/url"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"go.yaml.in/yaml/v3"
)

// The keys of each section, in the order cellgate check and errors list
// them.
var (
	topKeys    = []string{"version", "defaults", "global", "tenants", "routes"}
	limitKeys  = []string{"memory", "swap", "cpu", "pids", "timeout", "max_body"}
	globalKeys = []string{"memory", "max_cells"}
	tenantKeys = []string{"name", "memory", "cpu_weight", "cpu", "pids", "max_cells", "queue", "queue_timeout", "gid"}
	matchKeys  = []string{"host", "path", "methods"}
	routeKeys  = slices.Concat([]string{"name", "match", "tenant", "driver", "program", "dir"},
		limitKeys, []string{"env", "pass_env", "user", "allow_root", "response", "server_timing"}, confinementKeys, forkKeys)
)

var (
	envNameRE  = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	userNameRE = regexp.MustCompile(`^[a-z_][a-z0-9_-]{0,31}\$?$`)
	methodRE   = regexp.MustCompile(`^[A-Z][A-Z0-9_-]*$`)
	hostRE     = regexp.MustCompile(`^[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?(\.[a-z0-9_]([a-z0-9_-]*[a-z0-9_])?)*$`)
)

// cgiVariables are the names the CGI driver sets itself (RFC 3875 §4.1 and
// what net/http/cgi adds). env and pass_env may not name them, nor any
// HTTP_* name: a route could otherwise forge request meta-variables, and
// pass_env [HTTP_PROXY] would reopen httpoxy.
var cgiVariables = []string{
	"AUTH_TYPE", "CONTENT_LENGTH", "CONTENT_TYPE", "GATEWAY_INTERFACE", "HTTPS",
	"PATH_INFO", "PATH_TRANSLATED", "QUERY_STRING", "REMOTE_ADDR", "REMOTE_HOST",
	"REMOTE_IDENT", "REMOTE_PORT", "REMOTE_USER", "REQUEST_METHOD", "REQUEST_URI",
	"SCRIPT_FILENAME", "SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL",
	"SERVER_SOFTWARE",
}

// routeSource keeps where a route's values came from, for cross-checks.
type routeSource struct {
	route       *Route
	path        string
	memoryLine  int // the route's memory key, else the route's entry
	preloadLine int // a fork route's preload_memory key, else the route's entry
	tenantLine  int // the route's tenant key, else the route's entry
	tenantSet   bool
}

func (d *decoder) policy(root *yaml.Node) *Policy {
	p := &Policy{Source: d.file, Defaults: DefaultLimits()}
	fs := d.fields(root, "", topKeys...)
	if fs == nil {
		return nil
	}
	if f, ok := fs["version"]; !ok {
		d.problem(root.Line, "version", "", "no version", "add version: 1 at the top")
	} else if v, ok := d.integer(f, "version", math.MinInt64, math.MaxInt64); ok && v != 1 {
		d.problem(f.line(), "version", fmt.Sprint(v), "unsupported version", "this cellgate reads version: 1")
	}
	if f, ok := fs["defaults"]; ok {
		p.Defaults = d.limits(d.fields(f.val, "defaults", limitKeys...), "defaults", p.Defaults)
	}
	if f, ok := fs["global"]; ok {
		p.Global = d.global(f)
	}
	if f, ok := fs["tenants"]; ok {
		p.Tenants = d.tenants(f)
	}
	var sources []*routeSource
	if f, ok := fs["routes"]; ok {
		sources = d.routes(f, p.Defaults)
	} else {
		d.problem(root.Line, "routes", "", "no routes", "add a routes: list (see examples/policy.yaml)")
	}
	for _, s := range sources {
		p.Routes = append(p.Routes, s.route)
	}
	d.crossCheck(p, sources)
	p.order = byPriority(p.Routes)
	return p
}

func (d *decoder) limits(fs map[string]field, path string, l Limits) Limits {
	if f, ok := fs["memory"]; ok {
		if v, ok := d.size(f, join(path, "memory"), MinMemory); ok {
			l.Memory = v
		}
	}
	if f, ok := fs["swap"]; ok {
		if v, ok := d.size(f, join(path, "swap"), 0); ok {
			l.Swap = v
		}
	}
	if f, ok := fs["cpu"]; ok {
		if v, ok := d.cpu(f, join(path, "cpu")); ok {
			l.MilliCPU = v
		}
	}
	if f, ok := fs["pids"]; ok {
		if v, ok := d.pids(f, join(path, "pids")); ok {
			l.Pids = v
		}
	}
	if f, ok := fs["timeout"]; ok {
		if v, ok := d.duration(f, join(path, "timeout")); ok {
			l.Timeout = v
		}
	}
	if f, ok := fs["max_body"]; ok {
		if v, ok := d.size(f, join(path, "max_body"), 0); ok {
			l.MaxBody = &v
		}
	}
	return l
}

func (d *decoder) global(f field) Global {
	g := Global{Line: f.line()}
	fs := d.fields(f.val, "global", globalKeys...)
	if f, ok := fs["memory"]; ok {
		g.Memory, _ = d.size(f, "global.memory", MinMemory)
	}
	if f, ok := fs["max_cells"]; ok {
		n, _ := d.integer(f, "global.max_cells", 1, math.MaxInt32)
		g.MaxCells = int(n)
	}
	return g
}

func (d *decoder) tenants(f field) []*Tenant {
	var out []*Tenant
	seen := map[string]int{}
	nodes, paths := d.items(f, "tenants")
	for i, item := range nodes {
		p := paths[i]
		fs := d.fields(item, p, tenantKeys...)
		if fs == nil {
			continue
		}
		t := &Tenant{Name: d.name(fs, item, p), Line: resolve(item).Line}
		if t.Name != "" {
			if first, dup := seen[t.Name]; dup {
				d.problem(fs["name"].line(), join(p, "name"), t.Name, fmt.Sprintf("duplicate tenant name (first at line %d)", first), "rename or merge the tenants")
			}
			seen[t.Name] = fs["name"].line()
		}
		if f, ok := fs["memory"]; ok {
			t.Memory, _ = d.size(f, join(p, "memory"), MinMemory)
		}
		if f, ok := fs["cpu_weight"]; ok {
			n, _ := d.integer(f, join(p, "cpu_weight"), MinCPUWeight, MaxCPUWeight)
			t.CPUWeight = uint64(n)
		}
		if f, ok := fs["cpu"]; ok {
			t.MilliCPU, _ = d.cpu(f, join(p, "cpu"))
		}
		if f, ok := fs["pids"]; ok {
			t.Pids, _ = d.tenantPids(f, join(p, "pids"))
		}
		if f, ok := fs["max_cells"]; ok {
			n, _ := d.integer(f, join(p, "max_cells"), 1, math.MaxInt32)
			t.MaxCells = int(n)
		}
		if f, ok := fs["gid"]; ok {
			n, _ := d.integer(f, join(p, "gid"), 1, math.MaxUint32-1) // 0 is root's group, (gid_t)-1 "no change"
			t.GID = uint32(n)
		}
		queueSet := false
		if f, ok := fs["queue"]; ok {
			n, ok := d.integer(f, join(p, "queue"), 0, math.MaxInt32)
			t.Queue, queueSet = int(n), ok
		}
		if f, ok := fs["queue_timeout"]; ok {
			t.QueueTimeout, _ = d.duration(f, join(p, "queue_timeout"))
			if t.Queue == 0 && (queueSet || fs["queue"].key == nil) {
				d.problem(f.line(), join(p, "queue_timeout"), f.val.Value, "queue_timeout without a queue", "set queue: to the number of requests that may wait, or remove queue_timeout")
			}
		} else if t.Queue > 0 {
			d.problem(fs["queue"].line(), join(p, "queue"), fs["queue"].val.Value, "a queue without queue_timeout", "add queue_timeout: 2s (how long a request may wait)")
		}
		out = append(out, t)
	}
	return out
}

func (d *decoder) routes(f field, defaults Limits) []*routeSource {
	var out []*routeSource
	nodes, paths := d.items(f, "routes")
	if len(nodes) == 0 && resolve(f.val).Kind == yaml.SequenceNode {
		d.problem(f.line(), "routes", "", "no routes", "add at least one route (see examples/policy.yaml)")
	}
	for i, item := range nodes {
		if s := d.route(item, paths[i], defaults); s != nil {
			out = append(out, s)
		}
	}
	return out
}

func (d *decoder) route(item *yaml.Node, p string, defaults Limits) *routeSource {
	fs := d.fields(item, p, routeKeys...)
	if fs == nil {
		return nil
	}
	line := resolve(item).Line
	r := &Route{
		Name:     d.name(fs, item, p),
		Tenant:   DefaultTenant,
		Driver:   DriverCGI,
		User:     User{Auto: true},
		Response: ResponseSpool,
		Line:     line,
	}
	s := &routeSource{route: r, path: p, memoryLine: line, preloadLine: line, tenantLine: line}

	if f, ok := fs["match"]; ok {
		d.match(f, join(p, "match"), r)
	} else {
		d.problem(line, join(p, "match"), "", "no match", "add match: {path: /prefix} (host and methods are optional)")
	}
	if f, ok := fs["tenant"]; ok {
		if v, ok := d.str(f, join(p, "tenant")); ok {
			r.Tenant, s.tenantLine, s.tenantSet = v, f.line(), true
		}
	}
	if f, ok := fs["driver"]; ok {
		if v, ok := d.scalarFix(f, join(p, "driver"), "a driver: cgi or fork", "use cgi (a program per request) or fork (a warm preloader)", "!!str"); ok {
			switch Driver(v) {
			case DriverCGI, DriverFork:
				r.Driver = Driver(v)
			default:
				d.problem(f.line(), join(p, "driver"), v, "unknown driver", "use cgi (a program per request) or fork (a warm preloader)")
			}
		}
	}
	if r.Driver == DriverCGI {
		d.programOrDir(fs, line, p, r)
	}
	r.Limits = d.limits(fs, p, defaults)
	if f, ok := fs["memory"]; ok {
		s.memoryLine = f.line()
	}
	if f, ok := fs["preload_memory"]; ok {
		s.preloadLine = f.line()
	}
	r.Resources = r.Limits.Resources()
	r.Env = d.env(fs, p)
	r.PassEnv = d.passEnv(fs, p, r.Env)
	if f, ok := fs["allow_root"]; ok {
		r.AllowRoot, _ = d.boolean(f, join(p, "allow_root"))
	}
	if f, ok := fs["user"]; ok {
		r.User = d.user(f, join(p, "user"), r.AllowRoot)
	}
	if f, ok := fs["response"]; ok {
		if v, ok := d.scalarFix(f, join(p, "response"), "a response mode: spool or stream", "use spool or stream", "!!str"); ok {
			switch Response(v) {
			case ResponseSpool, ResponseStream:
				r.Response = Response(v)
			default:
				d.problem(f.line(), join(p, "response"), v, "unknown response mode", "use spool or stream")
			}
		}
	}
	if f, ok := fs["server_timing"]; ok {
		r.ServerTiming, _ = d.boolean(f, join(p, "server_timing"))
	}
	r.Confinement = d.confinement(fs, p)
	hostUser := slices.Contains(r.Confinement.HostNamespaces, HostUserNamespace)
	switch {
	case hostUser && !r.User.Root():
		d.problem(fs["host_namespaces"].line(), join(p, "host_namespaces"), HostUserNamespace, "only a program run as root has a user namespace to share",
			"drop user, or run the route as root (user: root, allow_root: true)")
	case !hostUser && r.User.Root() && r.Confinement.HostFilesystem:
		// Root of a user namespace of its own needs a view of its own:
		// with the host's filesystem the program is the host's root.
		d.problem(fs["filesystem"].line(), join(p, "filesystem"), "host", "a program run as root with the host's filesystem is the host's root, with every capability",
			"say so with host_namespaces: [user], or drop filesystem: host to run it as root of a user namespace of its own")
	}
	d.forkRoute(fs, line, p, r)
	return s
}

func (d *decoder) match(m field, p string, r *Route) {
	fs := d.fields(m.val, p, matchKeys...)
	if fs == nil {
		return
	}
	if f, ok := fs["host"]; ok {
		if v, ok := d.str(f, join(p, "host")); ok {
			r.Host = d.host(f.line(), join(p, "host"), v)
		}
	}
	if f, ok := fs["path"]; ok {
		if v, ok := d.str(f, join(p, "path")); ok {
			r.PathPrefix = d.pathPrefix(f.line(), join(p, "path"), v)
		}
	} else {
		d.problem(m.line(), join(p, "path"), "", "no path", "add path: /prefix (/ matches every path)")
	}
	if f, ok := fs["methods"]; ok {
		if ms, ok := d.strList(f, join(p, "methods")); ok {
			r.Methods = d.methods(f.line(), join(p, "methods"), ms)
		}
	}
}

// host validates a host pattern and returns it normalized, or "".
func (d *decoder) host(line int, p, v string) string {
	h := strings.TrimSuffix(strings.ToLower(v), ".")
	name, wild := strings.CutPrefix(h, "*.")
	switch {
	case h == "" || h == "*":
		d.problem(line, p, v, "an empty or bare wildcard host", "remove host: to match any host")
	case net.ParseIP(strings.Trim(h, "[]")) != nil:
		if wild {
			d.problem(line, p, v, "a wildcard of an IP address", "write the address alone")
			return ""
		}
		return canonicalIP(strings.Trim(h, "[]"))
	case strings.Contains(h, ":"):
		d.problem(line, p, v, "a host with a port", "remove the port: host matching ignores it")
	case !hostRE.MatchString(name):
		d.problem(line, p, v, "not a host name", "write example.com, or *.example.com for every name below it")
	default:
		return h
	}
	return ""
}

// pathPrefix validates a path prefix and returns it without a trailing
// slash (unless it is "/"), or "".
//
// Routes match the decoded request path (URL.Path), where "%", "?" and
// "#" stand for themselves: "/my%20app" would match only a request for
// /my%2520app, "/a?b" only /a%3Fb. Such a prefix is refused rather than
// decoded, so that the file says what is matched.
func (d *decoder) pathPrefix(line int, p, v string) string {
	if !strings.HasPrefix(v, "/") {
		d.problem(line, p, v, "not an absolute path", "start it with /")
		return ""
	}
	matches := (&url.URL{Path: v}).EscapedPath() // the request that would match
	if i := strings.IndexAny(v, "?#"); i >= 0 {
		fix := "write the path part only: " + strconv.Quote(v[:i])
		if strings.Contains(v[:i], "%") {
			fix = "keep the path part only, " + strconv.Quote(v[:i]) + ", and " + decodedFix(v[:i])
		}
		d.problem(line, p, v, fmt.Sprintf("a %q: routes match the request's path alone, so this would match only a request for %s", v[i], matches), fix)
		return ""
	}
	if strings.Contains(v, "%") {
		d.problem(line, p, v, "a '%': routes match the decoded request path, so this would match only a request for "+matches, decodedFix(v))
		return ""
	}
	if strings.IndexByte(v, 0) >= 0 {
		d.problem(line, p, v, "a NUL byte: a request path with one is refused, so this would match no request", "remove it")
		return ""
	}
	trimmed := v
	if v != "/" {
		trimmed = strings.TrimSuffix(v, "/")
	}
	if trimmed != "/" && path.Clean(trimmed) != trimmed {
		d.problem(line, p, v, "not a clean path (empty, . or .. segments)", "write it as "+path.Clean(v))
		return ""
	}
	return trimmed
}

// decodedFix is the fix of a prefix v holding a '%': write it decoded.
func decodedFix(v string) string {
	dec, err := url.PathUnescape(v)
	if err != nil {
		return "write each %XX as the character it encodes"
	}
	if i := strings.IndexAny(dec, "%?#"); i >= 0 {
		return fmt.Sprintf("decoded it is %q, whose %q no prefix may hold: match the segment above it, %q", dec, dec[i], path.Dir(dec[:i+1]))
	}
	return "write it decoded: " + strconv.Quote(dec)
}

func (d *decoder) methods(line int, p string, ms []string) []string {
	seen := map[string]bool{}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		switch {
		case !methodRE.MatchString(m):
			d.problem(line, p, m, "not a method (methods are case-sensitive)", "write it in upper case, such as "+strings.ToUpper(m))
		case m == "CONNECT":
			d.problem(line, p, m, "cellgate answers CONNECT with a 501: no route runs it (a 2xx to it makes the connection a tunnel)", "remove CONNECT")
		case seen[m]:
			d.problem(line, p, m, "listed twice", "list each method once")
		default:
			seen[m] = true
			out = append(out, m)
		}
	}
	sort.Strings(out)
	return out
}

func (d *decoder) programOrDir(fs map[string]field, line int, p string, r *Route) {
	prog, hasProg := fs["program"]
	dir, hasDir := fs["dir"]
	switch {
	case hasProg && hasDir:
		d.problem(dir.line(), join(p, "dir"), dir.val.Value, "both program and dir", "keep program (one program) or dir (a directory of programs)")
	case !hasProg && !hasDir:
		d.problem(line, p, "", "neither program nor dir", "add program: /path/to/program or dir: /path/to/cgi-bin")
	case hasProg:
		r.Program = d.programPath(prog, join(p, "program"))
	default:
		r.Dir = d.programPath(dir, join(p, "dir"))
	}
}

// programPath reads a path, resolving a relative one against the policy
// file's directory.
func (d *decoder) programPath(f field, p string) string {
	v, ok := d.str(f, p)
	if !ok {
		return ""
	}
	switch {
	case v == "" || strings.ContainsRune(v, 0):
		d.problem(f.line(), p, v, "not a path", "")
		return ""
	case filepath.IsAbs(v):
		return filepath.Clean(v)
	case d.baseDir == "":
		d.problem(f.line(), p, v, "a relative path, and the policy's directory is unknown", "use an absolute path, or load the policy from a file")
		return ""
	default:
		return filepath.Join(d.baseDir, v)
	}
}

func reservedEnv(name string) bool {
	return strings.HasPrefix(strings.ToUpper(name), "HTTP_") || slices.Contains(cgiVariables, strings.ToUpper(name))
}

func (d *decoder) envName(line int, p, name string) bool {
	switch {
	case !envNameRE.MatchString(name):
		d.problem(line, p, name, "not an environment variable name", "use letters, digits and _, not starting with a digit")
	case reservedEnv(name):
		d.problem(line, p, name, "a name the CGI driver sets for each request", "remove it; HTTP_* and the RFC 3875 meta-variables come from the request")
	default:
		return true
	}
	return false
}

// Bounds of a route's env: the entries, each NAME=value, are the
// program's environment beside the CGI variables of its request (a fork
// route's, its preloader's too), and execve refuses an environment it
// cannot hold with E2BIG, so that every request of the route would fail.
const (
	// maxEnvEntry is the longest entry: execve takes no string of
	// MAX_ARG_STRLEN, 32 pages (128 KiB with 4 KiB pages, the smallest
	// Linux has), or more with its NUL (fs/exec.c).
	maxEnvEntry = 32*4096 - 1
	// maxRouteEnv is the most a route's entries may hold together, each
	// counted with its NUL. execve takes at most a quarter of the stack
	// limit for arguments and environment together, 2 MiB under the
	// usual 8 MiB; the rest is for the CGI variables, which carry the
	// request (its head, up to serve's --max-header-bytes, as HTTP_*
	// variables, its path in REQUEST_URI, PATH_INFO and SCRIPT_NAME) and
	// for pass_env's values, which the policy cannot see.
	maxRouteEnv = 256 << 10
)

func (d *decoder) env(fs map[string]field, p string) []string {
	f, ok := fs["env"]
	if !ok {
		return nil
	}
	p = join(p, "env")
	m := resolve(f.val)
	if m.Kind != yaml.MappingNode {
		d.problem(f.line(), p, scalarValue(m), "want a mapping of NAME: value, got "+kindName(m), "")
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for i := 0; i+1 < len(m.Content); i += 2 {
		k, v := resolve(m.Content[i]), resolve(m.Content[i+1])
		kp := join(p, k.Value)
		if !d.envName(k.Line, kp, k.Value) {
			continue
		}
		if seen[k.Value] {
			d.problem(k.Line, kp, "", "duplicate key", "keep one")
			continue
		}
		seen[k.Value] = true
		if v.Kind != yaml.ScalarNode || v.ShortTag() == "!!null" {
			d.problem(k.Line, kp, "", "want a value, got "+kindName(v), "write NAME: value (\"\" for empty)")
			continue
		}
		if strings.IndexByte(v.Value, 0) >= 0 {
			d.problem(v.Line, kp, v.Value, "a NUL byte in the value (no program's environment can hold it)", "remove it")
			continue
		}
		entry := k.Value + "=" + v.Value
		if len(entry) > maxEnvEntry {
			d.problem(v.Line, kp, abbreviate(v.Value),
				fmt.Sprintf("an entry of %d bytes (NAME=value): execve takes at most %d (MAX_ARG_STRLEN), so every request would fail with E2BIG", len(entry), maxEnvEntry),
				fmt.Sprintf("shorten the value to at most %d bytes, or have the program read it from a file", maxEnvEntry-len(k.Value)-1))
			continue
		}
		out = append(out, entry)
	}
	total := 0
	for _, e := range out {
		total += len(e) + 1 // its NUL, as execve counts it
	}
	if total > maxRouteEnv {
		d.problem(f.line(), p, "", fmt.Sprintf("entries of %d bytes in all, above the %s a route's env may hold beside its requests' CGI variables", total, FormatBytes(maxRouteEnv)),
			fmt.Sprintf("shorten them to %s in all, or have the program read large values from a file", FormatBytes(maxRouteEnv)))
		return nil
	}
	sort.Strings(out)
	return out
}

// abbreviate cuts a long value for a problem, at a character boundary.
func abbreviate(s string) string {
	const most = 40
	if len(s) <= most {
		return s
	}
	i := most
	for i > 0 && !utf8.RuneStart(s[i]) {
		i--
	}
	return s[:i] + "..."
}

func (d *decoder) passEnv(fs map[string]field, p string, env []string) []string {
	f, ok := fs["pass_env"]
	if !ok {
		return nil
	}
	p = join(p, "pass_env")
	names, ok := d.strList(f, p)
	if !ok {
		return nil
	}
	seen := map[string]bool{}
	var out []string
	for _, n := range names {
		if !d.envName(f.line(), p, n) {
			continue
		}
		switch {
		case seen[n]:
			d.problem(f.line(), p, n, "listed twice", "list each name once")
		case envHas(env, n):
			d.problem(f.line(), p, n, "also set in env", "keep it in env (a fixed value) or pass_env (cellgate's value), not both")
		default:
			seen[n] = true
			out = append(out, n)
		}
	}
	return out
}

func envHas(env []string, name string) bool {
	for _, kv := range env {
		if strings.HasPrefix(kv, name+"=") {
			return true
		}
	}
	return false
}

func (d *decoder) user(f field, p string, allowRoot bool) User {
	v := resolve(f.val)
	var u User
	switch {
	case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!int":
		n, ok := d.integer(f, p, 0, math.MaxUint32-1) // (uid_t)-1 means "no change"
		if !ok {
			return User{Auto: true}
		}
		u = User{UID: uint32(n)}
	case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str" && v.Value == "auto":
		return User{Auto: true}
	case v.Kind == yaml.ScalarNode && v.ShortTag() == "!!str":
		if !userNameRE.MatchString(v.Value) {
			d.problem(f.line(), p, v.Value, "not a user name", "use auto, a user name or a numeric uid")
			return User{Auto: true}
		}
		u = User{Name: v.Value}
	default:
		d.problem(f.line(), p, scalarValue(v), "want auto, a user name or a uid, got "+kindName(v), "")
		return User{Auto: true}
	}
	if u.Root() && !allowRoot {
		d.problem(f.line(), p, v.Value, "runs requests as root", "use auto or an unprivileged user; if you really mean it, add allow_root: true")
	}
	return u
}

// crossCheck validates what spans sections: tenants exist, budgets hold
// the routes' reservations, names are unique, routes do not tie.
func (d *decoder) crossCheck(p *Policy, sources []*routeSource) {
	tenants := map[string]*Tenant{}
	for _, t := range p.Tenants {
		if t.Name != "" && tenants[t.Name] == nil {
			tenants[t.Name] = t
		}
	}
	defer d.preloadBudgets(p, sources)
	routeNames := map[string]int{}
	// The first route of each (host, prefix, method), by index in sources,
	// so that each route is reported once, against the first earlier route
	// it ties with: reporting it against every earlier one made n copies
	// of a route (or n aliases of one) n²/2 problems.
	firstTie := map[tieKey]int{}
	for i, s := range sources {
		r := s.route
		if r.Name != "" {
			if first, dup := routeNames[r.Name]; dup {
				d.problem(r.Line, join(s.path, "name"), r.Name, fmt.Sprintf("duplicate route name (first at line %d)", first), "give each route its own name")
			} else {
				routeNames[r.Name] = r.Line
			}
		}
		t := tenants[r.Tenant]
		if t == nil && r.Tenant == DefaultTenant {
			t = &Tenant{Name: DefaultTenant, Implicit: true}
			tenants[DefaultTenant] = t
			p.Tenants = append(p.Tenants, t)
		}
		if t == nil {
			d.problem(s.tenantLine, join(s.path, "tenant"), r.Tenant, "unknown tenant", "declare it under tenants:, or use one of: "+tenantList(p.Tenants))
		} else if t.Memory > 0 && r.Memory > t.Memory {
			d.problem(s.memoryLine, join(s.path, "memory"), FormatBytes(r.Memory),
				fmt.Sprintf("a request's memory exceeds tenant %s's budget %s, so it could never be admitted", t.Name, FormatBytes(t.Memory)),
				"lower the route's memory or raise the tenant's memory")
		}
		if p.Global.Memory > 0 && r.Memory > p.Global.Memory {
			d.problem(s.memoryLine, join(s.path, "memory"), FormatBytes(r.Memory),
				fmt.Sprintf("a request's memory exceeds the global budget %s, so it could never be admitted", FormatBytes(p.Global.Memory)),
				"lower the route's memory or raise global.memory")
		}
		if r.PathPrefix == "" {
			continue // already reported
		}
		first := -1
		for _, k := range tieKeys(r) {
			if j, ok := firstTie[k]; !ok {
				firstTie[k] = i
			} else if first < 0 || j < first {
				first = j
			}
		}
		if first >= 0 {
			o := sources[first].route
			d.problem(r.Line, s.path, "", fmt.Sprintf("matches the same requests as route %s (line %d) at the same priority", o.Name, o.Line),
				"change the host, path or methods of one of them")
		}
	}
}

// tieKey is what two routes that tie share, matching some request at the
// same priority (Match): the host pattern, the path prefix, and a method
// both list, or anyMethod for two that list none (one that lists methods
// comes first of two that are otherwise equal).
type tieKey struct{ host, prefix, method string }

// anyMethod is the method of tieKey for a route without methods; no method
// is "" (methodRE).
const anyMethod = ""

// tieKeys returns r's tieKey for each method it allows: two routes tie
// exactly when they have one in common.
func tieKeys(r *Route) []tieKey {
	if r.Methods == nil {
		return []tieKey{{r.Host, r.PathPrefix, anyMethod}}
	}
	keys := make([]tieKey, len(r.Methods))
	for i, m := range r.Methods {
		keys[i] = tieKey{r.Host, r.PathPrefix, m}
	}
	return keys
}

func tenantList(ts []*Tenant) string {
	var names []string
	for _, t := range ts {
		if t.Name != "" {
			names = append(names, t.Name)
		}
	}
	if len(names) == 0 {
		return "(none declared)"
	}
	return strings.Join(names, ", ")
}
