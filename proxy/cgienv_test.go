package proxy

import (
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/policy"
)

func baseCGIRequest() *cgiRequest {
	return &cgiRequest{
		Method:     "POST",
		RequestURI: "/app/x/y?a=1&b=%20",
		Query:      "a=1&b=%20",
		ScriptName: "/app",
		PathInfo:   "/x/y",
		BodyLen:    5,
		Header:     http.Header{},
		Host:       "example.com:8443",
		Proto:      "HTTP/1.1",
		RemoteAddr: "192.0.2.7:40000",
		LocalAddr:  &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 8080},
		RequestID:  "req1",
	}
}

// envMap turns an environment into a map, failing on a name set twice.
func envMap(t *testing.T, env []string) map[string]string {
	t.Helper()
	m := make(map[string]string, len(env))
	for _, kv := range env {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			t.Fatalf("entry %q has no '='", kv)
		}
		if _, dup := m[k]; dup {
			t.Fatalf("%s set twice in %q", k, env)
		}
		m[k] = v
	}
	return m
}

func TestBuildEnv(t *testing.T) {
	const unset = "\x00unset"
	tests := []struct {
		name      string
		edit      func(*cgiRequest, *policy.Route, *envOptions)
		want      map[string]string // unset: must be absent
		wantCount int               // exact number of variables, 0 = not checked
	}{
		{
			name: "meta-variables",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header.Set("Content-Type", "text/plain")
			},
			want: map[string]string{
				"GATEWAY_INTERFACE": "CGI/1.1",
				"SERVER_SOFTWARE":   "cellgate/test",
				"SERVER_PROTOCOL":   "HTTP/1.1",
				"SERVER_NAME":       "example.com",
				"SERVER_PORT":       "8080",
				"REQUEST_METHOD":    "POST",
				"REQUEST_URI":       "/app/x/y?a=1&b=%20",
				"SCRIPT_NAME":       "/app",
				"PATH_INFO":         "/x/y",
				"QUERY_STRING":      "a=1&b=%20",
				"REMOTE_ADDR":       "192.0.2.7",
				"REMOTE_HOST":       "192.0.2.7",
				"REMOTE_PORT":       "40000",
				"CONTENT_LENGTH":    "5",
				"CONTENT_TYPE":      "text/plain",
				"HTTP_HOST":         "example.com:8443",
				"HTTP_X_REQUEST_ID": "req1",
				"PATH":              DefaultPath,
				"HTTPS":             unset,
				"PATH_TRANSLATED":   unset,
				"AUTH_TYPE":         unset,
				"HTTP_CONTENT_TYPE": unset,
			},
			// The 18 set above and nothing else.
			wantCount: 18,
		},
		{
			name: "no body: no CONTENT_LENGTH or CONTENT_TYPE",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.BodyLen = 0
				r.Header.Set("Content-Type", "text/plain")
				r.Header.Set("Content-Length", "0")
			},
			want: map[string]string{"CONTENT_LENGTH": unset, "CONTENT_TYPE": unset, "HTTP_CONTENT_LENGTH": unset},
		},
		{
			name: "https, IPv6 and no Host",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.TLS = true
				r.Host = ""
				r.RemoteAddr = "[2001:db8::1]:5555"
				r.LocalAddr = &net.TCPAddr{IP: net.ParseIP("::1"), Port: 443}
			},
			want: map[string]string{
				"HTTPS": "on", "REMOTE_ADDR": "2001:db8::1", "REMOTE_PORT": "5555",
				"SERVER_NAME": "::1", "SERVER_PORT": "443", "HTTP_HOST": unset,
			},
		},
		{
			name: "httpoxy: a Proxy header never becomes HTTP_PROXY",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header.Set("Proxy", "http://evil.example:3128")
				r.Header.Set("Proxy-Authorization", "Basic eHg=")
				r.Header.Set("Proxy-Connection", "keep-alive")
			},
			want: map[string]string{"HTTP_PROXY": unset, "HTTP_PROXY_AUTHORIZATION": unset, "HTTP_PROXY_CONNECTION": unset},
		},
		{
			name: "header names with other characters than letters, digits and '-' are dropped",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header["X_Forwarded_For"] = []string{"10.0.0.1"}
				r.Header["X.Dot"] = []string{"1"}
				r.Header["X-Forwarded-For"] = []string{"192.0.2.1"}
				r.Header["X-Ok-2"] = []string{"yes"}
			},
			want: map[string]string{"HTTP_X_FORWARDED_FOR": "192.0.2.1", "HTTP_X_OK_2": "yes", "HTTP_X_DOT": unset},
		},
		{
			name: "repeated fields joined; Cookie with ;",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header["Accept"] = []string{"text/html", "text/plain"}
				r.Header["Cookie"] = []string{"a=1", "b=2"}
			},
			want: map[string]string{"HTTP_ACCEPT": "text/html, text/plain", "HTTP_COOKIE": "a=1; b=2"},
		},
		{
			name: "Authorization: the scheme in AUTH_TYPE, the credentials nowhere",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header.Set("Authorization", "Bearer secret-token")
			},
			want: map[string]string{"AUTH_TYPE": "Bearer", "HTTP_AUTHORIZATION": unset},
		},
		{
			name: "Authorization passed when configured",
			edit: func(r *cgiRequest, _ *policy.Route, o *envOptions) {
				r.Header.Set("Authorization", "Basic dTpw")
				o.passAuthorization = true
			},
			want: map[string]string{"AUTH_TYPE": "Basic", "HTTP_AUTHORIZATION": "Basic dTpw"},
		},
		{
			name: "hop-by-hop fields and those named in Connection are dropped",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header.Set("Connection", "keep-alive, x-HOP,,  X-Other ")
				r.Header.Set("Keep-Alive", "timeout=5")
				r.Header.Set("X-Other", "2")
				r.Header.Set("Te", "trailers")
				r.Header.Set("Upgrade", "websocket")
				r.Header.Set("X-Hop", "1")
				r.Header.Set("X-End", "1")
			},
			want: map[string]string{
				"HTTP_CONNECTION": unset, "HTTP_KEEP_ALIVE": unset, "HTTP_TE": unset,
				"HTTP_UPGRADE": unset, "HTTP_X_HOP": unset, "HTTP_X_OTHER": unset, "HTTP_X_END": "1",
			},
		},
		{
			name: "the client's X-Request-Id is replaced by cellgate's",
			edit: func(r *cgiRequest, _ *policy.Route, _ *envOptions) {
				r.Header.Set("X-Request-Id", "forged")
			},
			want: map[string]string{"HTTP_X_REQUEST_ID": "req1"},
		},
		{
			name: "route env: allow-listed, PATH override, no meta-variable override, wins over HTTP_*",
			edit: func(r *cgiRequest, rt *policy.Route, _ *envOptions) {
				rt.Env = []string{"APP_MODE=prod", "HTTP_X_MODE=fixed", "PATH=/opt/bin", "REMOTE_ADDR=10.9.9.9"}
				r.Header.Set("X-Mode", "client")
			},
			want: map[string]string{
				"APP_MODE": "prod", "HTTP_X_MODE": "fixed", "PATH": "/opt/bin", "REMOTE_ADDR": "192.0.2.7",
			},
		},
		{
			name: "pass_env: looked up, absent names unset, nothing else inherited",
			edit: func(_ *cgiRequest, rt *policy.Route, o *envOptions) {
				rt.PassEnv = []string{"TZ", "MISSING", "SCRIPT_NAME"}
				o.lookupEnv = func(k string) (string, bool) {
					switch k {
					case "TZ":
						return "UTC", true
					case "SCRIPT_NAME":
						return "/evil", true
					}
					return "", false
				}
			},
			want: map[string]string{"TZ": "UTC", "MISSING": unset, "SCRIPT_NAME": "/app", "HOME": unset, "USER": unset},
		},
		{
			name: "pass_env without a lookup sets nothing",
			edit: func(_ *cgiRequest, rt *policy.Route, o *envOptions) {
				rt.PassEnv = []string{"HOME"}
				o.lookupEnv = nil
			},
			want: map[string]string{"HOME": unset},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req := baseCGIRequest()
			rt := route("r", "/app", "/bin/true")
			opt := envOptions{software: "SERVER_SOFTWARE=cellgate/test", lookupEnv: func(string) (string, bool) { return "", false }}
			tt.edit(req, rt, &opt)
			env := buildEnv(req, rt, &opt)
			got := envMap(t, env)
			for k, want := range tt.want {
				v, ok := got[k]
				switch {
				case want == unset && ok:
					t.Errorf("%s=%q set, want unset", k, v)
				case want != unset && !ok:
					t.Errorf("%s unset, want %q", k, want)
				case want != unset && v != want:
					t.Errorf("%s=%q, want %q", k, v, want)
				}
			}
			if tt.wantCount > 0 && len(env) != tt.wantCount {
				t.Errorf("%d variables, want %d: %q", len(env), tt.wantCount, env)
			}
		})
	}
}

// TestBuildEnvDeterministic: the HTTP_* variables come in a stable order,
// whatever the map's.
func TestBuildEnvDeterministic(t *testing.T) {
	req := baseCGIRequest()
	for _, k := range []string{"A", "B", "C", "D", "E", "F", "G", "H"} {
		req.Header.Set("X-"+k, k)
	}
	rt := route("r", "/app", "/bin/true")
	opt := envOptions{software: "SERVER_SOFTWARE=cellgate/test"}
	first := buildEnv(req, rt, &opt)
	for i := 0; i < 20; i++ {
		if got := buildEnv(req, rt, &opt); !slices.Equal(got, first) {
			t.Fatalf("run %d: %q, first %q", i, got, first)
		}
	}
}

// BenchmarkBuildEnvConnectionTokens: a head that lists thousands of
// names in Connection beside a thousand fields of its own, each field
// looked up among the names.
func BenchmarkBuildEnvConnectionTokens(b *testing.B) {
	req := &cgiRequest{Method: "GET", Host: "x", Header: http.Header{}}
	var conn strings.Builder
	for i := range 3000 {
		if i > 0 {
			conn.WriteString(",")
		}
		conn.WriteString("a")
	}
	req.Header.Set("Connection", conn.String())
	for i := range 1000 {
		req.Header.Set("X-"+strconv.Itoa(i), "v")
	}
	rt := &policy.Route{Name: "r"}
	for b.Loop() {
		buildEnv(req, rt, &envOptions{})
	}
}
