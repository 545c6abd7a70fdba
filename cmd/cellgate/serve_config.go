package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
)

// serveConfig is everything `cellgate serve` is configured with, read once
// from the environment (CELLGATE_*) and then from flags, which override the
// environment. Defaults are in the envDefault tags, Shared's in
// defaultShared, TempDir's in loadServeConfig; validate checks the whole of
// it once, before anything is started.
type serveConfig struct {
	// Listen is the public address. Default 127.0.0.1:8080.
	Listen string `env:"LISTEN" envDefault:"127.0.0.1:8080"`
	// TLSCert and TLSKey are PEM files; both set serves HTTPS (HTTP/2 and
	// HTTP/1.1). Default: plain HTTP.
	TLSCert string `env:"TLS_CERT"`
	TLSKey  string `env:"TLS_KEY"`
	// Admin is the address of /metrics, /healthz and /readyz; never the
	// public port. Default 127.0.0.1:9090.
	Admin string `env:"ADMIN" envDefault:"127.0.0.1:9090"`
	// AdminPprof adds Go's runtime profiles (net/http/pprof) under
	// /debug/pprof/ on the admin listener, for finding where serve's time
	// and memory go under load. Default off: a profile shows request
	// paths and costs CPU while it is taken.
	AdminPprof bool `env:"ADMIN_PPROF"`
	// AdminHosts are the names, besides IP addresses, localhost and
	// *.localhost, that the admin listener answers to in a request's
	// Host; any other name is refused (adminHostGuard: DNS rebinding).
	// Normalized into adminHosts by validate. Default none.
	AdminHosts []string `env:"ADMIN_HOSTS" envSeparator:","`
	adminHosts map[string]bool
	// Policy is the policy file (routes, tenants, limits). Required.
	Policy string `env:"POLICY"`
	// PolicyPoll, when positive, is how often serve reads the policy file
	// and reloads it when its content differs from the policy in force (a
	// Kubernetes ConfigMap is updated in place); a failed reload that was
	// not of an invalid policy is retried (policyPoller). Default 0: only
	// SIGHUP and cellgate reload reload.
	PolicyPoll time.Duration `env:"POLICY_POLL" envDefault:"0s"`
	// Preflight runs the doctor's delegation checks before anything else
	// and exits 1 with them when the cgroup is not delegated (the
	// container image's entrypoint). Default off.
	Preflight bool `env:"PREFLIGHT"`
	// DrainTimeout is how long SIGTERM waits for requests in flight before
	// their cells are killed. Default 30s.
	DrainTimeout time.Duration `env:"DRAIN_TIMEOUT" envDefault:"30s"`
	// AccessLog is where the JSON access log goes: stdout, stderr or a
	// file (appended). Default stdout.
	AccessLog string `env:"ACCESS_LOG" envDefault:"stdout"`
	// LogLevel is the level of the operational log on stderr (debug, info,
	// warn, error). Default info.
	LogLevel logLevel `env:"LOG_LEVEL" envDefault:"info"`
	// Isolation is "cells" (every request in its own cgroup) or "none"
	// (plain fork/exec: the benchmark baseline, never for production).
	// Default cells.
	Isolation isolation `env:"ISOLATION" envDefault:"cells"`

	// Shared are the cell settings serve shares with run and doctor:
	// --cgroup-base ("" for serve is the process's own group, which it
	// leaves for <base>/supervisor), --unenforced, --uid-range, --gid.
	Shared
	// MaxCells caps the groups under cells/: tenants, cells, and each fork
	// route's group, preload group and preloader instances' groups
	// (cgroup.max.descendants); 0 = no cap. Default 0.
	MaxCells int `env:"MAX_CELLS" envDefault:"0"`
	// WarmCells is the most confined cells per route set up ahead of
	// their requests (cell, init, namespaces, mounts, filter); a route's
	// set is sized by demand between one and this, and each cell holds a
	// cgroup and an idle init (about 0.6 MiB) charged to its tenant; 0 sets
	// every cell up on its request. Default 4: a cell found set up answers
	// in ~1.3x a plain exec against ~6x for one set up on its request
	// (BenchmarkCellConfined), for ~2.4 MiB of a busy route's tenant.
	WarmCells int `env:"WARM_CELLS" envDefault:"4"`
	// ResidentCells is the most resident cells per route: an init with
	// its namespaces and view kept across requests, each request's
	// program cloned into a group of its own and what it left ended
	// before the next (sandbox/resident.go); a route's set is sized by
	// demand between one and this, its idle cells ended after a minute
	// without a request, each cell kept at most 10 s. Routes with
	// cells: fresh, or sharing the host's PIDs, are not resident. 0 has
	// none. Default 16; needs cellgate-init.
	ResidentCells int `env:"RESIDENT_CELLS" envDefault:"16"`
	// NetNamespaces is how many network namespaces are kept made ahead
	// for confined cells with network: none, off the request's path (a
	// few dozen KiB of kernel memory each, charged to the daemon); 0 has
	// each such cell make its own. Default 8.
	NetNamespaces int `env:"NET_NAMESPACES" envDefault:"8"`
	// MountTemplates has the cells of a confined route copy its
	// filesystem view from a mount namespace made ahead and never older
	// than 10 s instead of each building it; a path of the view that
	// comes to name another directory is seen by new cells within those
	// 10 s. Default true; needs cellgate-init, setns and CAP_SYS_CHROOT.
	MountTemplates bool `env:"MOUNT_TEMPLATES" envDefault:"true"`
	// InitSpawner has one long-lived cellgate-init clone each confined
	// cell's init into its cell, instead of serve forking and executing
	// cellgate-init per cell. Default true; needs cellgate-init.
	InitSpawner bool `env:"INIT_SPAWNER" envDefault:"true"`

	// The front's limits (proxy.Config).
	HeaderTimeout  time.Duration `env:"HEADER_TIMEOUT" envDefault:"10s"`
	IdleTimeout    time.Duration `env:"IDLE_TIMEOUT" envDefault:"60s"`
	MaxHeaderBytes byteSize      `env:"MAX_HEADER_BYTES" envDefault:"16Ki"`
	BodyMinRate    byteSize      `env:"BODY_MIN_RATE" envDefault:"1Ki"`
	BodyRateGrace  time.Duration `env:"BODY_RATE_GRACE" envDefault:"5s"`
	WriteMinRate   byteSize      `env:"WRITE_MIN_RATE" envDefault:"1Ki"`
	WriteRateGrace time.Duration `env:"WRITE_RATE_GRACE" envDefault:"10s"`
	WriteTimeout   time.Duration `env:"WRITE_TIMEOUT" envDefault:"30s"`
	MaxBody        byteSize      `env:"MAX_BODY" envDefault:"10Mi"`
	MaxResponse    byteSize      `env:"MAX_RESPONSE" envDefault:"100Mi"`
	SpoolMemory    byteSize      `env:"SPOOL_MEMORY" envDefault:"256Mi"`
	SpoolDisk      byteSize      `env:"SPOOL_DISK" envDefault:"4Gi"`
	MaxConns       int           `env:"MAX_CONNS" envDefault:"10000"`
	MaxConnsPerIP  int           `env:"MAX_CONNS_PER_IP" envDefault:"100"`
	RetryAfter     time.Duration `env:"RETRY_AFTER" envDefault:"1s"`
	// TrustedProxies are the load balancers (CIDR prefixes or addresses,
	// comma-separated) whose X-Forwarded-For names the client; parsed
	// into trusted by validate. Default none.
	TrustedProxies string `env:"TRUSTED_PROXIES"`
	trusted        []netip.Prefix
	// TempDir holds the request and response spool files. Default
	// $TMPDIR, else /tmp.
	TempDir string `env:"TEMP_DIR"`

	// origin says where each setting came from, by flag name, for errors.
	origin map[string]string
}

// isolation is the --isolation setting.
type isolation string

const (
	isolationCells isolation = "cells"
	isolationNone  isolation = "none"
)

func (i *isolation) UnmarshalText(b []byte) error {
	switch v := isolation(b); v {
	case isolationCells, isolationNone:
		*i = v
		return nil
	}
	return fmt.Errorf("isolation %q: want cells or none", b)
}

func (i isolation) MarshalText() ([]byte, error) { return []byte(i), nil }

// byteSize is a size flag or variable in policy's units (512k, 64Mi, 1G,
// 1048576).
type byteSize int64

func (s *byteSize) UnmarshalText(b []byte) error {
	n, err := policy.ParseBytes(string(b))
	if err != nil {
		return err
	}
	*s = byteSize(n)
	return nil
}

func (s byteSize) MarshalText() ([]byte, error) { return []byte(policy.FormatBytes(int64(s))), nil }

// serveFlags binds every setting to its flag; the flag's default is the
// value read from the environment, so a flag overrides its variable.
func (c *serveConfig) serveFlags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", c.Listen, "public listen `address` (CELLGATE_LISTEN)")
	fs.StringVar(&c.TLSCert, "tls-cert", c.TLSCert, "TLS certificate PEM `file`; with --tls-key serves HTTPS (CELLGATE_TLS_CERT)")
	fs.StringVar(&c.TLSKey, "tls-key", c.TLSKey, "TLS private key PEM `file` (CELLGATE_TLS_KEY)")
	fs.StringVar(&c.Admin, "admin", c.Admin, "admin listen `address` for /metrics /healthz /readyz, never the public port (CELLGATE_ADMIN)")
	fs.Var(&appendListFlag{l: &c.AdminHosts}, "admin-hosts", "`name,...` besides IP addresses and localhost that a request to the admin listener may carry in its Host; repeatable (CELLGATE_ADMIN_HOSTS)")
	fs.Var((*boolFlag)(&c.AdminPprof), "admin-pprof", "serve Go's runtime profiles under /debug/pprof/ on the admin listener (CELLGATE_ADMIN_PPROF)")
	fs.StringVar(&c.Policy, "policy", c.Policy, "policy `file` (CELLGATE_POLICY), required")
	fs.Var((*durationFlag)(&c.PolicyPoll), "policy-poll", "reload the policy when its content changed, checked this often; 0 = only on SIGHUP (CELLGATE_POLICY_POLL)")
	fs.Var((*boolFlag)(&c.Preflight), "preflight", "run cellgate doctor's delegation checks first and exit 1 when they fail (CELLGATE_PREFLIGHT)")
	fs.Var((*durationFlag)(&c.DrainTimeout), "drain-timeout", "on SIGTERM, how long requests in flight may finish before their cells are killed (CELLGATE_DRAIN_TIMEOUT)")
	fs.StringVar(&c.AccessLog, "access-log", c.AccessLog, "access log `destination`: stdout, stderr or a file (CELLGATE_ACCESS_LOG)")
	fs.TextVar(&c.LogLevel, "log-level", c.LogLevel, "operational log `level`: debug, info, warn, error (CELLGATE_LOG_LEVEL)")
	fs.TextVar(&c.Isolation, "isolation", c.Isolation, "cells, or none for plain exec (benchmark baseline only) (CELLGATE_ISOLATION)")
	c.Shared.addFlags(fs)
	fs.Var((*intFlag)(&c.MaxCells), "max-cells", "`n`: kernel cap on the groups under cells/: tenants, cells, and each fork route's 3 or 4 (cgroup.max.descendants), 0 = none (CELLGATE_MAX_CELLS)")
	fs.Var((*intFlag)(&c.NetNamespaces), "net-namespaces", "`n`: network namespaces kept made ahead for network: none cells, 0 = each cell makes its own (CELLGATE_NET_NAMESPACES)")
	fs.Var((*boolFlag)(&c.MountTemplates), "mount-templates", "confined cells copy their route's filesystem view from a mount namespace made ahead, never older than 10 s, instead of each building it (CELLGATE_MOUNT_TEMPLATES)")
	fs.Var((*boolFlag)(&c.InitSpawner), "init-spawner", "one long-lived cellgate-init clones each confined cell's init, instead of serve forking and executing one per cell (CELLGATE_INIT_SPAWNER)")
	fs.Var((*intFlag)(&c.WarmCells), "warm-cells", "`n`: most confined cells per route set up ahead of their requests, sized by demand, 0 = none (CELLGATE_WARM_CELLS)")
	fs.Var((*intFlag)(&c.ResidentCells), "resident-cells", "`n`: most resident cells per route, whose init and namespaces serve request after request, sized by demand, 0 = none (CELLGATE_RESIDENT_CELLS)")
	fs.Var((*durationFlag)(&c.HeaderTimeout), "header-timeout", "time a client has to send the request header (CELLGATE_HEADER_TIMEOUT)")
	fs.Var((*durationFlag)(&c.IdleTimeout), "idle-timeout", "keep-alive idle timeout (CELLGATE_IDLE_TIMEOUT)")
	fs.TextVar(&c.MaxHeaderBytes, "max-header-bytes", c.MaxHeaderBytes, "largest request header, `size` (CELLGATE_MAX_HEADER_BYTES)")
	fs.TextVar(&c.BodyMinRate, "body-min-rate", c.BodyMinRate, "slowest request body upload, `bytes` per second; 0: none, a client may trickle its body until --max-body (CELLGATE_BODY_MIN_RATE)")
	fs.Var((*durationFlag)(&c.BodyRateGrace), "body-rate-grace", "time before --body-min-rate applies (CELLGATE_BODY_RATE_GRACE)")
	fs.TextVar(&c.WriteMinRate, "write-min-rate", c.WriteMinRate, "slowest response download, `bytes` per second; 0: none, and no write deadline at all (--write-timeout unused): a client that stops reading holds its connection (CELLGATE_WRITE_MIN_RATE)")
	fs.Var((*durationFlag)(&c.WriteRateGrace), "write-rate-grace", "extra time for the first piece of a response (CELLGATE_WRITE_RATE_GRACE)")
	fs.Var((*durationFlag)(&c.WriteTimeout), "write-timeout", "longest a client may take to read one piece of a response (--write-min-rate × this) (CELLGATE_WRITE_TIMEOUT)")
	fs.TextVar(&c.MaxBody, "max-body", c.MaxBody, "largest request body for routes whose max_body neither the route nor the policy's defaults set, `size` (CELLGATE_MAX_BODY)")
	fs.TextVar(&c.MaxResponse, "max-response", c.MaxResponse, "largest response body, `size` (CELLGATE_MAX_RESPONSE)")
	fs.TextVar(&c.SpoolMemory, "spool-memory", c.SpoolMemory, "memory all request and response spools may hold at once, `size` (CELLGATE_SPOOL_MEMORY)")
	fs.TextVar(&c.SpoolDisk, "spool-disk", c.SpoolDisk, "spool file bytes all requests may hold at once in --temp-dir, `size`; beyond, 503 (CELLGATE_SPOOL_DISK)")
	fs.Var((*intFlag)(&c.MaxConns), "max-conns", "`n`: client connections open at once, -1 = no cap (CELLGATE_MAX_CONNS)")
	fs.Var((*intFlag)(&c.MaxConnsPerIP), "max-conns-per-ip", "`n`: connections per client IP, -1 = no cap (CELLGATE_MAX_CONNS_PER_IP)")
	fs.Var((*durationFlag)(&c.RetryAfter), "retry-after", "Retry-After of a 503 (CELLGATE_RETRY_AFTER)")
	fs.StringVar(&c.TrustedProxies, "trusted-proxies", c.TrustedProxies, "`CIDR,...` of load balancers whose X-Forwarded-For sets REMOTE_ADDR, the log's client and the per-IP cap's key; never believed from others (CELLGATE_TRUSTED_PROXIES)")
	fs.StringVar(&c.TempDir, "temp-dir", c.TempDir, "`directory` of request and response spool files, default $TMPDIR or /tmp (CELLGATE_TEMP_DIR)")
}

// loadServeConfig reads the environment (environ, "KEY=value" entries), then
// the flags in args, and validates the result. Errors name the flag or
// variable, the value and the reason.
func loadServeConfig(args, environ []string, usage io.Writer) (*serveConfig, error) {
	c := &serveConfig{Shared: defaultShared()}
	envMap := env.ToMap(environ)
	if err := env.ParseWithOptions(c, env.Options{Prefix: envPrefix, Environment: envMap}); err != nil {
		return nil, fmt.Errorf("cellgate serve: environment: %w", errors.Join(envErrors(err, reflect.TypeFor[serveConfig](), envMap)...))
	}
	c.Unenforced, c.AdminHosts = cleanList(c.Unenforced), cleanList(c.AdminHosts)
	fs := flag.NewFlagSet("cellgate serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	c.serveFlags(fs)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprintf(usage, "usage: cellgate serve --policy FILE [flags]\n\nFlags override the CELLGATE_* environment variables named with them.\n\n")
			fs.SetOutput(usage)
			fs.PrintDefaults()
			return nil, err
		}
		return nil, fmt.Errorf("cellgate serve: %w (cellgate serve -h lists the flags)", err)
	}
	if fs.NArg() > 0 {
		return nil, fmt.Errorf("cellgate serve: unexpected argument %q (settings are flags, such as --policy FILE)", fs.Arg(0))
	}
	if c.TempDir == "" {
		c.TempDir = "/tmp"
		if d := envMap["TMPDIR"]; d != "" {
			c.TempDir = d
		}
	}
	c.origin = settingOrigins(fs, envMap)
	if err := c.validate(); err != nil {
		return nil, err
	}
	return c, nil
}

// samePort reports whether two ports of HOST:PORT name one port, a name
// ("http") or a number ("80"); 0, the kernel's choice, is no port.
func samePort(a, b string) bool {
	pa, erra := net.LookupPort("tcp", a)
	pb, errb := net.LookupPort("tcp", b)
	if erra != nil || errb != nil {
		return a == b && a != "0"
	}
	return pa == pb && pa != 0
}

// validate checks the settings together; every error names the flag or
// variable it came from.
func (c *serveConfig) validate() error {
	var errs []error
	bad := func(flagName, format string, args ...any) {
		errs = append(errs, fmt.Errorf("%s: %s", c.origin[flagName], fmt.Sprintf(format, args...)))
	}
	listenHost, listenPort, err := net.SplitHostPort(c.Listen)
	if err != nil {
		bad("listen", "not HOST:PORT: %v", err)
	} else if _, err := net.LookupPort("tcp", listenPort); err != nil {
		bad("listen", "port %q: %v", listenPort, err)
	}
	adminHost, adminPort, err := net.SplitHostPort(c.Admin)
	switch {
	case err != nil:
		bad("admin", "not HOST:PORT: %v", err)
	case listenPort != "" && samePort(adminPort, listenPort) && hostsOverlap(listenHost, adminHost):
		bad("admin", "the admin listener must not share the public port %s (%s): pick another port", listenPort, c.origin["listen"])
	}
	if c.adminHosts, err = adminHostNames(c.AdminHosts); err != nil {
		bad("admin-hosts", "%v", err)
	}
	if (c.TLSCert == "") != (c.TLSKey == "") {
		bad("tls-cert", "set both --tls-cert and --tls-key, or neither (%s)", c.origin["tls-key"])
	}
	for _, f := range []struct{ flag, path string }{{"tls-cert", c.TLSCert}, {"tls-key", c.TLSKey}} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			bad(f.flag, "%v", err)
		}
	}
	if c.Policy == "" {
		bad("policy", "a policy file is required (--policy FILE or CELLGATE_POLICY; see examples/policy.yaml)")
	}
	if c.PolicyPoll < 0 {
		bad("policy-poll", "must not be negative (0 = only SIGHUP reloads)")
	}
	if c.DrainTimeout <= 0 {
		bad("drain-timeout", "must be positive, such as 30s")
	}
	switch c.AccessLog {
	case "stdout", "stderr":
	case "":
		bad("access-log", "want stdout, stderr or a file name")
	default:
		if st, err := os.Stat(filepath.Dir(c.AccessLog)); err != nil {
			bad("access-log", "directory of the log file: %v", err)
		} else if !st.IsDir() {
			bad("access-log", "%s is not a directory", filepath.Dir(c.AccessLog))
		}
	}
	if err := c.Shared.validate(c.origin); err != nil {
		errs = append(errs, err)
	}
	if c.MaxCells < 0 {
		bad("max-cells", "must not be negative (0 = no cap)")
	}
	if c.WarmCells < 0 || c.WarmCells > 64 {
		bad("warm-cells", "want 0 to 64 per route")
	}
	if c.ResidentCells < 0 || c.ResidentCells > 64 {
		bad("resident-cells", "want 0 to 64 per route")
	}
	if c.NetNamespaces < 0 || c.NetNamespaces > 256 {
		bad("net-namespaces", "want 0 to 256")
	}
	for _, d := range []struct {
		flag string
		v    time.Duration
	}{
		{"header-timeout", c.HeaderTimeout}, {"idle-timeout", c.IdleTimeout}, {"body-rate-grace", c.BodyRateGrace},
		{"write-rate-grace", c.WriteRateGrace}, {"write-timeout", c.WriteTimeout}, {"retry-after", c.RetryAfter},
	} {
		if d.v <= 0 {
			bad(d.flag, "must be positive")
		}
	}
	if c.MaxHeaderBytes < 1024 {
		bad("max-header-bytes", "at least 1Ki")
	}
	for _, s := range []struct {
		flag string
		v    byteSize
	}{{"max-body", c.MaxBody}, {"max-response", c.MaxResponse}, {"spool-memory", c.SpoolMemory}, {"spool-disk", c.SpoolDisk}} {
		if s.v <= 0 {
			bad(s.flag, "must be positive")
		}
		if s.v > policy.MaxSize {
			// As the policy's sizes: sums of them must not overflow.
			bad(s.flag, "%s is above %s, the most a size may be", policy.FormatBytes(int64(s.v)), policy.FormatBytes(policy.MaxSize))
		}
	}
	for _, n := range []struct {
		flag string
		v    int
	}{{"max-conns", c.MaxConns}, {"max-conns-per-ip", c.MaxConnsPerIP}} {
		if n.v == 0 || n.v < -1 {
			bad(n.flag, "want a positive number, or -1 for no cap")
		}
	}
	if c.trusted, err = proxy.ParseTrustedProxies(c.TrustedProxies); err != nil {
		bad("trusted-proxies", "%v", err)
	}
	if st, err := os.Stat(c.TempDir); err != nil {
		bad("temp-dir", "%v", err)
	} else if !st.IsDir() {
		bad("temp-dir", "not a directory")
	}
	if len(errs) > 0 {
		return fmt.Errorf("cellgate serve: invalid settings:\n  %w", joinIndented(errs))
	}
	return nil
}

// hostsOverlap reports whether listeners on hosts a and b could share an
// address: the same host, or either a wildcard.
func hostsOverlap(a, b string) bool {
	wild := func(h string) bool { return h == "" || h == "0.0.0.0" || h == "::" }
	return a == b || wild(a) || wild(b)
}

// joinIndented joins errors one per line for a start-up message.
func joinIndented(errs []error) error {
	msgs := make([]string, len(errs))
	for i, e := range errs {
		msgs[i] = e.Error()
	}
	return errors.New(strings.Join(msgs, "\n  "))
}

// rateWarnings are serve's warnings of a slow-client check turned off by
// a rate of 0, each naming the setting.
func (c *serveConfig) rateWarnings() []string {
	var out []string
	if c.WriteMinRate <= 0 {
		out = append(out, c.origin["write-min-rate"]+": no write deadline; a client that stops reading a response holds its connection, "+
			"its spool and the handler for as long as it likes (fix: set a rate, e.g. the default 1Ki)")
	}
	if c.BodyMinRate <= 0 {
		out = append(out, c.origin["body-min-rate"]+": no upload rate; a client may trickle a request body up to --max-body "+
			"for as long as it likes (fix: set a rate, e.g. the default 1Ki)")
	}
	return out
}

// proxyConfig is the front's part of the settings, with this build's
// version for SERVER_SOFTWARE.
func (c *serveConfig) proxyConfig() proxy.Config {
	rate := func(v byteSize) int64 {
		if v <= 0 {
			return -1
		}
		return int64(v)
	}
	return proxy.Config{
		Addr:              c.Listen,
		TLSCertFile:       c.TLSCert,
		TLSKeyFile:        c.TLSKey,
		ReadHeaderTimeout: c.HeaderTimeout,
		IdleTimeout:       c.IdleTimeout,
		MaxHeaderBytes:    int(c.MaxHeaderBytes),
		BodyMinRate:       rate(c.BodyMinRate),
		BodyRateGrace:     c.BodyRateGrace,
		WriteMinRate:      rate(c.WriteMinRate),
		WriteRateGrace:    c.WriteRateGrace,
		WriteTimeout:      c.WriteTimeout,
		MaxBody:           int64(c.MaxBody),
		MaxResponse:       int64(c.MaxResponse),
		SpoolMemory:       int64(c.SpoolMemory),
		SpoolDisk:         int64(c.SpoolDisk),
		MaxConns:          c.MaxConns,
		MaxConnsPerIP:     c.MaxConnsPerIP,
		RetryAfter:        c.RetryAfter,
		TempDir:           c.TempDir,
		TrustedProxies:    c.trusted,
		Version:           buildVersion().Version,
	}
}
