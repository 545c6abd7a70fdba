package policy

import (
	"errors"
	"fmt"
	"net/netip"
	"path"
	"slices"
	"sort"
	"strings"
)

// Sentinels for what Match's callers branch on.
var (
	// ErrNoRoute: no route matches the request's host and path (404).
	ErrNoRoute = errors.New("no route")
	// ErrMethodNotAllowed: routes match the host and path but none allows
	// the method (405); the error is a *MethodError with the Allow list.
	ErrMethodNotAllowed = errors.New("method not allowed")
	// ErrBadPath: the request path is not absolute, has "." or ".."
	// segments, or routes elsewhere once its empty segments are dropped
	// (400). Such paths are refused rather than cleaned, so that
	// "/public/../admin" can never be routed by the /public route, nor
	// "//admin" by the / route past an /admin one (a program that merges
	// slashes would serve /admin).
	ErrBadPath = errors.New("bad request path")
)

// MethodError is returned by Match when routes match the host and path but
// not the method. It matches ErrMethodNotAllowed with errors.Is.
type MethodError struct {
	Method string
	// Allow are the methods the matching routes accept, sorted, for the
	// Allow header.
	Allow []string
}

func (e *MethodError) Error() string {
	return fmt.Sprintf("method %s not allowed (allowed: %s)", e.Method, strings.Join(e.Allow, ", "))
}

// Unwrap makes errors.Is(err, ErrMethodNotAllowed) true.
func (e *MethodError) Unwrap() error { return ErrMethodNotAllowed }

// Match routes one request. host is the Host header or URL host (a port and
// the case are ignored), method the request method and urlPath the decoded
// request path (URL.Path). The most specific route wins: a route with an
// exact host beats one with a wildcard host (a longer wildcard beats a
// shorter one), which beats one without a host; then a longer path prefix
// beats a shorter one; then a route listing methods beats one allowing any.
// Parse has rejected two routes that could tie.
//
// Errors: ErrBadPath, ErrNoRoute, or a *MethodError (ErrMethodNotAllowed).
// A Dir route whose program segment is missing, hidden or ".." yields
// ErrNoRoute.
func (p *Policy) Match(host, method, urlPath string) (*Match, error) {
	if !cleanRequestPath(urlPath) {
		return nil, fmt.Errorf("route %q: %w", urlPath, ErrBadPath)
	}
	host = normalizeHost(host)
	r, allow := p.pick(host, method, urlPath)
	if strings.Contains(urlPath, "//") {
		if merged, _ := p.pick(host, method, mergeSlashes(urlPath)); merged != r {
			return nil, fmt.Errorf("route %q: routed elsewhere once its empty segments are dropped: %w", urlPath, ErrBadPath)
		}
	}
	if r != nil {
		return r.split(urlPath)
	}
	if allow != nil {
		slices.Sort(allow)
		return nil, &MethodError{Method: method, Allow: slices.Compact(allow)}
	}
	return nil, fmt.Errorf("route %s%s: %w", host, urlPath, ErrNoRoute)
}

// pick returns the most specific route for host (normalized), method and
// urlPath, or nil and the methods of the routes that match but for the
// method.
func (p *Policy) pick(host, method, urlPath string) (*Route, []string) {
	routes := p.order
	if routes == nil {
		routes = byPriority(p.Routes)
	}
	var allow []string
	for _, r := range routes {
		if !r.matchesHost(host) || !pathHasPrefix(urlPath, r.PathPrefix) {
			continue
		}
		if !r.allowsMethod(method) {
			allow = append(allow, r.Methods...)
			continue
		}
		return r, nil
	}
	return nil, allow
}

// mergeSlashes is p with each run of slashes made one.
func mergeSlashes(p string) string {
	var b strings.Builder
	b.Grow(len(p))
	for i := 0; i < len(p); i++ {
		if p[i] == '/' && i > 0 && p[i-1] == '/' {
			continue
		}
		b.WriteByte(p[i])
	}
	return b.String()
}

// split computes the match for a path known to start with r.PathPrefix.
func (r *Route) split(urlPath string) (*Match, error) {
	scriptName := strings.TrimSuffix(r.PathPrefix, "/")
	rest := urlPath[len(scriptName):]
	if r.Dir == "" {
		return &Match{Route: r, Program: r.Program, ScriptName: scriptName, PathInfo: rest}, nil
	}
	// rest is "" or starts with "/": the program is its first segment.
	name, tail, more := strings.Cut(strings.TrimPrefix(rest, "/"), "/")
	if !validProgramName(name) {
		return nil, fmt.Errorf("route %s: program %q in %s: %w", r.Name, name, urlPath, ErrNoRoute)
	}
	if more {
		tail = "/" + tail
	}
	return &Match{
		Route:      r,
		Program:    path.Join(r.Dir, name),
		ScriptName: scriptName + "/" + name,
		PathInfo:   tail,
	}, nil
}

// validProgramName accepts one path segment naming a program in a Dir:
// not empty, not hidden (which also excludes "." and ".."), no NUL.
func validProgramName(name string) bool {
	return name != "" && name[0] != '.' && !strings.ContainsAny(name, "/\x00")
}

// cleanRequestPath reports whether p is absolute without "." or ".."
// segments.
func cleanRequestPath(p string) bool {
	if !strings.HasPrefix(p, "/") {
		return false
	}
	for seg := range strings.SplitSeq(p[1:], "/") {
		if seg == "." || seg == ".." {
			return false
		}
	}
	return true
}

// pathHasPrefix reports whether p starts with prefix at a segment boundary.
func pathHasPrefix(p, prefix string) bool {
	if prefix == "/" {
		return true
	}
	return strings.HasPrefix(p, prefix) && (len(p) == len(prefix) || p[len(prefix)] == '/')
}

// normalizeHost lower-cases host and strips a port, IPv6 brackets and a
// trailing dot.
func normalizeHost(host string) string {
	if strings.HasPrefix(host, "[") {
		if end := strings.IndexByte(host, ']'); end > 0 {
			return canonicalIP(host[1:end]) // 2001:DB8:0::1 is 2001:db8::1
		}
	} else if i := strings.LastIndexByte(host, ':'); i >= 0 && strings.Count(host, ":") == 1 {
		host = host[:i]
	}
	return strings.TrimSuffix(strings.ToLower(host), ".")
}

// canonicalIP is the IP address s in its one text form (RFC 5952: lower
// case, zeros compressed), or s lower-cased when it is none.
func canonicalIP(s string) string {
	if a, err := netip.ParseAddr(s); err == nil {
		return a.String()
	}
	return strings.ToLower(s)
}

func (r *Route) matchesHost(host string) bool {
	switch {
	case r.Host == "":
		return true
	case strings.HasPrefix(r.Host, "*."):
		suffix := r.Host[1:] // ".example.com"
		return len(host) > len(suffix) && strings.HasSuffix(host, suffix)
	default:
		return host == r.Host
	}
}

func (r *Route) allowsMethod(method string) bool {
	return r.Methods == nil || slices.Contains(r.Methods, method)
}

// priority orders routes: higher compares first in Match.
type priority struct {
	hostClass  int // 2 exact, 1 wildcard, 0 any host
	hostLen    int // length of the host pattern (longer wildcard first)
	prefixLen  int
	hasMethods int
}

func (r *Route) priority() priority {
	pr := priority{hostLen: len(r.Host), prefixLen: len(r.PathPrefix)}
	switch {
	case r.Host == "":
	case strings.HasPrefix(r.Host, "*."):
		pr.hostClass = 1
	default:
		pr.hostClass = 2
	}
	if r.PathPrefix == "/" {
		pr.prefixLen = 0 // "/" is the shortest prefix: it matches everything
	}
	if r.Methods != nil {
		pr.hasMethods = 1
	}
	return pr
}

func (a priority) less(b priority) bool {
	if a.hostClass != b.hostClass {
		return a.hostClass < b.hostClass
	}
	if a.hostLen != b.hostLen {
		return a.hostLen < b.hostLen
	}
	if a.prefixLen != b.prefixLen {
		return a.prefixLen < b.prefixLen
	}
	return a.hasMethods < b.hasMethods
}

// byPriority returns routes sorted most specific first, file order among
// equals (which Parse rejects when they overlap).
func byPriority(routes []*Route) []*Route {
	out := append([]*Route(nil), routes...)
	sort.SliceStable(out, func(i, j int) bool { return out[j].priority().less(out[i].priority()) })
	return out
}
