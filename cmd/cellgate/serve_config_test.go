package main

import (
	"io"
	"strings"
	"testing"
	"time"
)

func TestServeConfig(t *testing.T) {
	tmp := t.TempDir()
	base := []string{"TMPDIR=" + tmp}
	for _, c := range []struct {
		name    string
		args    []string
		environ []string
		check   func(*testing.T, *serveConfig)
		errHas  []string // substrings of the error; nil = no error
	}{
		{
			name: "defaults",
			args: []string{"--policy", "p.yaml"},
			check: func(t *testing.T, c *serveConfig) {
				if c.Listen != "127.0.0.1:8080" || c.Admin != "127.0.0.1:9090" || c.DrainTimeout != 30*time.Second ||
					c.AccessLog != "stdout" || c.Isolation != isolationCells || c.TempDir != tmp || c.MaxConnsPerIP != 100 {
					t.Errorf("defaults: %+v", c)
				}
			},
		},
		{
			name:    "environment",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_LISTEN=127.0.0.1:7000", "CELLGATE_MAX_BODY=1Mi", "CELLGATE_UNENFORCED=memory,cpu"},
			check: func(t *testing.T, c *serveConfig) {
				if c.Policy != "e.yaml" || c.Listen != "127.0.0.1:7000" || c.MaxBody != 1<<20 || strings.Join(c.Unenforced, ",") != "memory,cpu" {
					t.Errorf("from the environment: %+v", c)
				}
			},
		},
		{
			name:    "a flag overrides its variable",
			args:    []string{"--listen", "127.0.0.1:7001", "--drain-timeout", "5s"},
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_LISTEN=127.0.0.1:7000", "CELLGATE_DRAIN_TIMEOUT=1m"},
			check: func(t *testing.T, c *serveConfig) {
				if c.Listen != "127.0.0.1:7001" || c.DrainTimeout != 5*time.Second {
					t.Errorf("flags over the environment: listen %q drain %s", c.Listen, c.DrainTimeout)
				}
			},
		},
		{
			name:    "admin hosts from the environment",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_ADMIN_HOSTS=Cellgate.Internal., metrics.example,"}, // as --admin-hosts takes it: trimmed, empty entries dropped,
			check: func(t *testing.T, c *serveConfig) {
				if len(c.adminHosts) != 2 || !c.adminHosts["cellgate.internal"] || !c.adminHosts["metrics.example"] {
					t.Errorf("admin hosts: %v", c.adminHosts)
				}
			},
		},
		{
			name:    "repeated --admin-hosts add up and override the variable",
			args:    []string{"--admin-hosts", "a.example", "--admin-hosts", "b.example,c.example"},
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_ADMIN_HOSTS=env.example"},
			check: func(t *testing.T, c *serveConfig) {
				if len(c.adminHosts) != 3 || !c.adminHosts["a.example"] || !c.adminHosts["c.example"] || c.adminHosts["env.example"] {
					t.Errorf("admin hosts: %v", c.adminHosts)
				}
			},
		},
		{
			name:   "bad admin host",
			args:   []string{"--policy", "p.yaml", "--admin-hosts", "cellgate.internal:9090"},
			errHas: []string{"--admin-hosts=", `"cellgate.internal:9090" is not a host name`},
		},
		{
			// Not strconv's "parsing "x": invalid syntax".
			name:    "a variable that is no number says a number is wanted",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_MAX_CONNS=x"},
			errHas:  []string{`CELLGATE_MAX_CONNS="x": want a whole number`},
		},
		{
			name:    "bad variable names itself, its value and the reason",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_DRAIN_TIMEOUT=5"},
			errHas:  []string{`CELLGATE_DRAIN_TIMEOUT="5": want a duration with a unit, such as 5s`},
		},
		{
			// Not "want a whole number" (strconv.ParseBool's error is a
			// NumError too), nor a Go type's name for a range.
			name:    "a yes-or-no variable and a number out of range say what is wanted",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_PREFLIGHT=yes", "CELLGATE_MAX_CONNS=99999999999999999999", "CELLGATE_GID=-1"},
			errHas: []string{`CELLGATE_PREFLIGHT="yes": want true or false`, `CELLGATE_MAX_CONNS="99999999999999999999": want a whole number from`,
				`CELLGATE_GID="-1": want a whole number from 0 to 4294967295`},
		},
		{
			// Not the flag package's "parse error", nor slog's "unknown name".
			name:   "a number flag says what it wants",
			args:   []string{"--policy", "p.yaml", "--max-conns", "abc"},
			errHas: []string{"-max-conns", "want a whole number"},
		},
		{
			name:   "a yes-or-no flag says what it wants",
			args:   []string{"--policy", "p.yaml", "--admin-pprof=maybe"},
			errHas: []string{"-admin-pprof", "want true or false"},
		},
		{
			name:    "the log level lists the levels, as a flag and as a variable",
			args:    []string{"--log-level", "loud"},
			environ: []string{"CELLGATE_POLICY=e.yaml"},
			errHas:  []string{"-log-level", "want debug, info, warn or error"},
		},
		{
			name:    "the log level's variable lists the levels",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_LOG_LEVEL=loud"},
			errHas:  []string{`CELLGATE_LOG_LEVEL="loud": want debug, info, warn or error`},
		},
		{
			name:   "bad flag value",
			args:   []string{"--policy", "p.yaml", "--isolation", "vm"},
			errHas: []string{`"vm"`, "-isolation", "want cells or none"},
		},
		{
			name:   "bad size",
			args:   []string{"--policy", "p.yaml", "--max-body", "12XB"},
			errHas: []string{"-max-body", "12XB"},
		},
		{
			name:   "policy required",
			errHas: []string{"--policy", "required"},
		},
		{
			name:   "admin on the public port",
			args:   []string{"--policy", "p.yaml", "--listen", "0.0.0.0:8080", "--admin", "127.0.0.1:8080"},
			errHas: []string{`--admin="127.0.0.1:8080"`, "must not share the public port"},
		},
		{
			// One port, by its name and by its number.
			name:   "admin on the public port by its name",
			args:   []string{"--policy", "p.yaml", "--listen", "127.0.0.1:http", "--admin", "127.0.0.1:80"},
			errHas: []string{`--admin="127.0.0.1:80"`, "must not share the public port"},
		},
		{
			name:   "size above the most a size may be",
			args:   []string{"--policy", "p.yaml", "--max-body", "9000Ti"},
			errHas: []string{`--max-body="9000Ti"`, "above 1024Ti"},
		},
		{
			name:    "validation names the variable when the value came from it",
			environ: []string{"CELLGATE_POLICY=e.yaml", "CELLGATE_MAX_CONNS=0"},
			errHas:  []string{`CELLGATE_MAX_CONNS="0"`, "positive"},
		},
		{
			name:   "TLS needs both files",
			args:   []string{"--policy", "p.yaml", "--tls-cert", tmp},
			errHas: []string{"--tls-cert", "--tls-key"},
		},
		{
			name:   "no positional arguments",
			args:   []string{"--policy", "p.yaml", "extra"},
			errHas: []string{`unexpected argument "extra"`},
		},
		{
			name:   "bad trusted proxy",
			args:   []string{"--policy", "p.yaml", "--trusted-proxies", "10.0.0.0/8,lb.example"},
			errHas: []string{`--trusted-proxies="10.0.0.0/8,lb.example"`, `"lb.example" is neither a CIDR prefix`},
		},
		{
			name:    "trusted proxies from the environment",
			environ: []string{"CELLGATE_TRUSTED_PROXIES=10.0.0.0/8, 192.0.2.1"},
			args:    []string{"--policy", "p.yaml"},
			check: func(t *testing.T, c *serveConfig) {
				pc := c.proxyConfig()
				if len(pc.TrustedProxies) != 2 || pc.TrustedProxies[0].String() != "10.0.0.0/8" || pc.TrustedProxies[1].String() != "192.0.2.1/32" {
					t.Errorf("TrustedProxies = %v", pc.TrustedProxies)
				}
			},
		},
		{
			name:   "unknown controller",
			args:   []string{"--policy", "p.yaml", "--unenforced", "memory,io"},
			errHas: []string{"io", "memory, cpu, pids"},
		},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg, err := loadServeConfig(c.args, append(base, c.environ...), io.Discard)
			if c.errHas == nil {
				if err != nil {
					t.Fatalf("unexpected error: %v", err)
				}
				c.check(t, cfg)
				return
			}
			if err == nil {
				t.Fatalf("no error, want one containing %q", c.errHas)
			}
			for _, s := range c.errHas {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("error %q does not contain %q", err, s)
				}
			}
		})
	}
}

// TestRateWarnings: a rate of 0 turns a slow-client check off, and serve
// warns of it naming the setting as given; the defaults warn of nothing.
func TestRateWarnings(t *testing.T) {
	for _, tt := range []struct {
		name          string
		args, environ []string
		want          []string
	}{
		{"defaults", nil, nil, nil},
		{"write rate 0 by flag", []string{"--write-min-rate", "0"}, nil, []string{`--write-min-rate="0": no write deadline`}},
		{"body rate 0 in the environment", nil, []string{"CELLGATE_BODY_MIN_RATE=0"}, []string{`CELLGATE_BODY_MIN_RATE="0": no upload rate`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg, err := loadServeConfig(append([]string{"--policy", "p.yaml"}, tt.args...), append([]string{"TMPDIR=" + t.TempDir()}, tt.environ...), io.Discard)
			if err != nil {
				t.Fatal(err)
			}
			got := cfg.rateWarnings()
			if len(got) != len(tt.want) {
				t.Fatalf("warnings %q, want %d", got, len(tt.want))
			}
			for i, w := range tt.want {
				if !strings.HasPrefix(got[i], w) || !strings.Contains(got[i], "(fix: set a rate") {
					t.Errorf("warning %q, want it to start %q and say the fix", got[i], w)
				}
			}
		})
	}
}

func TestServeProxyConfig(t *testing.T) {
	cfg, err := loadServeConfig([]string{"--policy", "p.yaml", "--body-min-rate", "0", "--max-conns", "-1"}, []string{"TMPDIR=" + t.TempDir()}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	pc := cfg.proxyConfig()
	if want := buildVersion().Version; pc.Version != want || pc.Version == "" {
		t.Errorf("proxy config Version %q, want this build's %q (SERVER_SOFTWARE)", pc.Version, want)
	}
	if pc.BodyMinRate != -1 || pc.MaxConns != -1 || pc.WriteMinRate != 1024 || pc.MaxHeaderBytes != 16<<10 {
		t.Errorf("proxy config: body min rate %d (want -1: off), max conns %d (want -1), write min rate %d, max header %d",
			pc.BodyMinRate, pc.MaxConns, pc.WriteMinRate, pc.MaxHeaderBytes)
	}
}
