package proxy

import (
	"net"
	"net/http"
	"net/textproto"
	"slices"
	"strconv"
	"strings"

	"github.com/cellgate/cellgate/policy"
)

// cgiRequest is what the CGI environment is built from: the client's
// request, or the GET a local redirect turns it into.
type cgiRequest struct {
	Method     string
	RequestURI string // as sent: path and query (origin form)
	Query      string // the raw query, without "?"
	ScriptName string
	PathInfo   string
	BodyLen    int64
	Header     http.Header // the client's header fields (without Host)
	Host       string      // the Host header or :authority
	Proto      string      // "HTTP/1.1", "HTTP/2.0"
	RemoteAddr string      // "ip:port"
	LocalAddr  net.Addr    // the listener's address the request came in on; may be nil
	TLS        bool
	RequestID  string
}

// envOptions are the server-wide inputs of the CGI environment.
type envOptions struct {
	software          string // "SERVER_SOFTWARE=cellgate/<version>"
	passAuthorization bool
	lookupEnv         func(string) (string, bool)
}

// metaVariables are the names buildEnv sets from the request. A route's
// env cannot override them (policy validation should refuse them; this is
// the second line).
var metaVariables = []string{
	"AUTH_TYPE", "CONTENT_LENGTH", "CONTENT_TYPE", "GATEWAY_INTERFACE", "HTTPS",
	"PATH_INFO", "PATH_TRANSLATED", "QUERY_STRING", "REMOTE_ADDR", "REMOTE_HOST",
	"REMOTE_IDENT", "REMOTE_PORT", "REMOTE_USER", "REQUEST_METHOD", "REQUEST_URI",
	"SCRIPT_NAME", "SERVER_NAME", "SERVER_PORT", "SERVER_PROTOCOL", "SERVER_SOFTWARE",
}

// buildEnv returns the worker's whole environment: the CGI/1.1 (RFC 3875)
// meta-variables, then the route's fixed env and PassEnv values, then PATH
// (DefaultPath unless the route set it), then one HTTP_* variable per
// request header field. Nothing comes from cellgate's own environment except
// the PassEnv names.
//
// Precedence, for a name set twice: meta-variables over the route's env
// (which is operator policy) over HTTP_* (which the client controls).
//
// Not set: PATH_TRANSLATED (routes map paths to programs, not to a document
// tree, so there is nothing meaningful to translate PATH_INFO to),
// REMOTE_USER and REMOTE_IDENT (cellgate authenticates nobody). REMOTE_HOST
// is REMOTE_ADDR (no DNS lookups, as RFC 3875 4.1.9 permits).
//
// Header fields:
//   - a name with a character other than a letter, digit or '-' is dropped:
//     "X_Foo" and "X-Foo" would both become HTTP_X_FOO, and a front proxy
//     may have checked only one of them;
//   - "Proxy" is never passed (httpoxy: HTTP_PROXY is the proxy setting of
//     most HTTP client libraries);
//   - Content-Length and Content-Type are CONTENT_LENGTH and CONTENT_TYPE
//     only;
//   - Authorization gives AUTH_TYPE (its scheme) and is passed as
//     HTTP_AUTHORIZATION only with Config.PassAuthorization (RFC 3875
//     4.1.18: credentials should not reach the script);
//   - hop-by-hop fields (Connection, Keep-Alive, TE, Trailer,
//     Transfer-Encoding, Upgrade, Proxy-*, and any named in Connection)
//     describe the client's connection to cellgate, not the request;
//   - X-Request-Id is cellgate's own id, not the client's;
//   - Host is HTTP_HOST; values of repeated fields are joined with ", ",
//     Cookie's with "; " (RFC 6265 5.4).
func buildEnv(req *cgiRequest, route *policy.Route, opt *envOptions) []string {
	env := make([]string, 0, 24+len(route.Env)+len(route.PassEnv)+len(req.Header))
	add := func(k, v string) { env = append(env, k+"="+v) }

	add("GATEWAY_INTERFACE", "CGI/1.1")
	env = append(env, opt.software)
	add("SERVER_PROTOCOL", req.Proto)
	serverName, serverPort := serverAddr(req)
	add("SERVER_NAME", serverName)
	add("SERVER_PORT", serverPort)
	if req.TLS {
		add("HTTPS", "on")
	}
	add("REQUEST_METHOD", req.Method)
	add("REQUEST_URI", req.RequestURI)
	add("SCRIPT_NAME", req.ScriptName)
	add("PATH_INFO", req.PathInfo)
	add("QUERY_STRING", req.Query)
	remoteIP, remotePort, err := net.SplitHostPort(req.RemoteAddr)
	if err != nil {
		remoteIP, remotePort = req.RemoteAddr, ""
	}
	add("REMOTE_ADDR", remoteIP)
	add("REMOTE_HOST", remoteIP)
	if remotePort != "" {
		add("REMOTE_PORT", remotePort)
	}
	if req.BodyLen > 0 {
		add("CONTENT_LENGTH", strconv.FormatInt(req.BodyLen, 10))
		if ct := req.Header.Values("Content-Type"); len(ct) > 0 {
			add("CONTENT_TYPE", ct[0])
		}
	}
	if auth := req.Header.Get("Authorization"); auth != "" {
		scheme, _, _ := strings.Cut(strings.TrimLeft(auth, " \t"), " ")
		if scheme != "" {
			add("AUTH_TYPE", scheme)
		}
	}

	routeStart := len(env)
	for _, kv := range route.Env {
		if k, _, ok := strings.Cut(kv, "="); ok && !slices.Contains(metaVariables, k) {
			env = append(env, kv)
		}
	}
	if opt.lookupEnv != nil {
		for _, k := range route.PassEnv {
			if slices.Contains(metaVariables, k) {
				continue
			}
			if v, ok := opt.lookupEnv(k); ok {
				add(k, v)
			}
		}
	}
	routeVars := env[routeStart:]
	if !hasVar(routeVars, "PATH") {
		add("PATH", DefaultPath)
	}

	if req.Host != "" && !hasVar(routeVars, "HTTP_HOST") {
		add("HTTP_HOST", req.Host)
	}
	hop := connectionTokens(req.Header)
	keys := make([]string, 0, len(req.Header))
	for k := range req.Header {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	name := make([]byte, 0, 64)
	for _, k := range keys {
		if !passHeader(k, hop, opt.passAuthorization) {
			continue
		}
		name = append(name[:0], "HTTP_"...)
		for i := 0; i < len(k); i++ {
			c := k[i]
			switch {
			case c == '-':
				c = '_'
			case 'a' <= c && c <= 'z':
				c -= 'a' - 'A'
			}
			name = append(name, c)
		}
		if hasVar(routeVars, string(name)) {
			continue
		}
		sep := ", "
		if k == "Cookie" {
			sep = "; "
		}
		add(string(name), strings.Join(req.Header[k], sep))
	}
	if req.RequestID != "" && !hasVar(routeVars, "HTTP_X_REQUEST_ID") {
		add("HTTP_X_REQUEST_ID", req.RequestID)
	}
	return env
}

// passHeader reports whether the header field k (canonical) becomes an
// HTTP_* variable; see buildEnv.
func passHeader(k string, hop map[string]bool, passAuthorization bool) bool {
	if k == "" {
		return false
	}
	for i := 0; i < len(k); i++ {
		c := k[i]
		if !('a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || c == '-') {
			return false
		}
	}
	switch k {
	case "Content-Length", "Content-Type", "Host", "X-Request-Id",
		"Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return false
	case "Authorization":
		return passAuthorization
	}
	if k == "Proxy" || strings.HasPrefix(k, "Proxy-") {
		return false
	}
	return !hop[k]
}

// connectionTokens are the field names listed in the Connection header
// (hop-by-hop by RFC 9110 7.6.1), canonical, as the keys of a set: a
// head may list thousands, and each field of the head is looked up in
// it; nil when there are none. The tokens nearly every such header
// carries, close and the fields passHeader drops anyway (keep-alive,
// upgrade, te), are left out: the usual request makes no set.
func connectionTokens(h http.Header) map[string]bool {
	var out map[string]bool
	for _, v := range h["Connection"] {
		for tok := range strings.SplitSeq(v, ",") {
			if tok = strings.TrimSpace(tok); tok != "" && !droppedToken(tok) {
				if out == nil {
					out = map[string]bool{}
				}
				out[textproto.CanonicalMIMEHeaderKey(tok)] = true
			}
		}
	}
	return out
}

// droppedToken reports whether the Connection token tok needs no place
// in connectionTokens' set: close, or a field passHeader never passes.
func droppedToken(tok string) bool {
	for _, d := range [...]string{"close", "keep-alive", "upgrade", "te"} {
		if strings.EqualFold(tok, d) {
			return true
		}
	}
	return false
}

// hasVar reports whether env sets name.
func hasVar(env []string, name string) bool {
	for _, kv := range env {
		if len(kv) > len(name) && kv[len(name)] == '=' && kv[:len(name)] == name {
			return true
		}
	}
	return false
}

// serverAddr gives SERVER_NAME (the Host header's name, else the local IP)
// and SERVER_PORT (the local port the request came in on, else the
// scheme's default).
func serverAddr(req *cgiRequest) (name, port string) {
	name = req.Host
	if h, _, err := net.SplitHostPort(name); err == nil {
		name = h
	}
	name = strings.TrimSuffix(strings.TrimPrefix(name, "["), "]")
	var localIP string
	if req.LocalAddr != nil {
		localIP, port, _ = net.SplitHostPort(req.LocalAddr.String())
	}
	if name == "" {
		name = localIP
	}
	if port == "" {
		port = "80"
		if req.TLS {
			port = "443"
		}
	}
	return name, port
}
