package main

import (
	"encoding"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"math"
	"os"
	"os/user"
	"path/filepath"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// envPrefix prefixes every environment setting.
const envPrefix = "CELLGATE_"

// Shared are the daemon-level settings every subcommand that runs cells
// takes, from CELLGATE_* environment variables and then from flags (a flag
// wins over the environment, which wins over the default).
type Shared struct {
	// CgroupBase is cellgate's base group, an absolute directory on the
	// cgroup2 mount or a path relative to the mount
	// (CELLGATE_CGROUP_BASE, --cgroup-base). For run and doctor, "" is a
	// private base created for the command and removed after it.
	CgroupBase string `env:"CGROUP_BASE"`
	// Unenforced lists the controllers (memory, cpu, pids) cellgate may run
	// without; their limits are then not enforced and every Result says so
	// (CELLGATE_UNENFORCED=memory,cpu, --unenforced).
	Unenforced []string `env:"UNENFORCED" envSeparator:","`
	// UIDs is the range of per-cell uids (CELLGATE_UID_RANGE=first-last,
	// --uid-range; default sandbox.DefaultUIDRange).
	UIDs uidRange `env:"UID_RANGE"`
	// GID is the group every per-cell uid runs with (CELLGATE_GID, --gid;
	// default sandbox.DefaultGID).
	GID uint32 `env:"GID"`
	// Init is the confined cells' init executable (CELLGATE_INIT, --init;
	// default: cellgate-init beside the cellgate executable).
	Init string `env:"INIT"`
}

func defaultShared() Shared {
	return Shared{UIDs: uidRange(sandbox.DefaultUIDRange), GID: sandbox.DefaultGID}
}

// parseEnv fills s from the CELLGATE_* variables of environ.
func (s *Shared) parseEnv(environ []string) error {
	m := map[string]string{}
	for _, kv := range environ {
		if k, v, ok := strings.Cut(kv, "="); ok && strings.HasPrefix(k, envPrefix) {
			m[k] = v
		}
	}
	if err := env.ParseWithOptions(s, env.Options{Prefix: envPrefix, Environment: m}); err != nil {
		parts := envErrors(err, reflect.TypeFor[Shared](), m)
		msgs := make([]string, len(parts))
		for i, e := range parts {
			msgs[i] = e.Error()
		}
		return &envErr{msg: "environment: " + strings.Join(msgs, "; "), err: err}
	}
	s.Unenforced = cleanList(s.Unenforced)
	return nil
}

// envErrors rewrites caarlos0/env's errors, which name fields of typ, so
// that each names the variable and its value: CELLGATE_GID="x": ....
func envErrors(err error, typ reflect.Type, m map[string]string) []error {
	errs := []error{err}
	var agg env.AggregateError
	if errors.As(err, &agg) {
		errs = agg.Errors
	}
	out := make([]error, 0, len(errs))
	for _, e := range errs {
		var pe env.ParseError
		if errors.As(e, &pe) {
			if f, ok := typ.FieldByName(pe.Name); ok {
				key, _, _ := strings.Cut(f.Tag.Get("env"), ",")
				key = envPrefix + key
				out = append(out, fmt.Errorf("%s=%q: %s", key, m[key], wantOf(f.Type, pe.Err)))
				continue
			}
		}
		out = append(out, e)
	}
	return out
}

// What a yes-or-no and a duration setting want, as a flag or a variable.
const (
	wantBool     = "want true or false (or 1 or 0)"
	wantDuration = "want a duration with a unit, such as 5s, 500ms or 2m"
)

// wantOf says what a variable of type typ wants, for a value that failed
// to parse with err: strconv's and time's own messages name Go's types
// and functions, not the setting.
func wantOf(typ reflect.Type, err error) string {
	switch {
	case reflect.PointerTo(typ).Implements(reflect.TypeFor[encoding.TextUnmarshaler]()):
		return err.Error() // the type's own, which says what it wants
	case typ == reflect.TypeFor[time.Duration]():
		return wantDuration
	case typ.Kind() == reflect.Bool:
		return wantBool
	case typ.Kind() >= reflect.Int && typ.Kind() <= reflect.Int64:
		bits := typ.Bits()
		return fmt.Sprintf("want a whole number from %d to %d", int64(-1)<<(bits-1), int64(1)<<(bits-1)-1)
	case typ.Kind() >= reflect.Uint && typ.Kind() <= reflect.Uint64:
		return fmt.Sprintf("want a whole number from 0 to %d", uint64(1)<<typ.Bits()-1)
	}
	return err.Error()
}

// envErr is a one-line message over caarlos0/env's error, which stays
// reachable with errors.As.
type envErr struct {
	msg string
	err error
}

func (e *envErr) Error() string { return e.msg }
func (e *envErr) Unwrap() error { return e.err }

// addFlags registers the shared flags on fs, defaulting to s's values.
func (s *Shared) addFlags(fs *flag.FlagSet) {
	fs.StringVar(&s.CgroupBase, "cgroup-base", s.CgroupBase, "cellgate's base `group` on the cgroup2 mount (absolute, or relative to the mount); default: serve uses its own group (moving itself into GROUP/supervisor), run and doctor a private group of their own ($CELLGATE_CGROUP_BASE)")
	fs.Var((*listFlag)(&s.Unenforced), "unenforced", "comma-separated `controllers` (memory,cpu,pids) cellgate may run without, their limits not enforced ($CELLGATE_UNENFORCED)")
	fs.Var(&s.UIDs, "uid-range", "per-cell uids, `first-last` ($CELLGATE_UID_RANGE)")
	fs.Var((*uint32Flag)(&s.GID), "gid", "shared `gid` of the per-cell uids ($CELLGATE_GID)")
	fs.StringVar(&s.Init, "init", s.Init, "confined cells' init `executable`; default cellgate-init beside cellgate ($CELLGATE_INIT)")
}

// validate checks the shared settings once, naming each as origin says
// it was given (settingOrigins: a flag, a CELLGATE_* variable, the
// default).
func (s *Shared) validate(origin map[string]string) error {
	for _, c := range s.Unenforced {
		if !slices.Contains([]string{"memory", "cpu", "pids"}, c) {
			return fmt.Errorf("%s: %q is not one of memory, cpu, pids (fix: list only those)", origin["unenforced"], c)
		}
	}
	if err := sandbox.UIDRange(s.UIDs).Validate(); err != nil {
		return fmt.Errorf("%s: %w", origin["uid-range"], err)
	}
	switch s.GID {
	case 0:
		return fmt.Errorf("%s: the per-cell uids must not share root's group (fix: a gid of their own, such as the default %d)", origin["gid"], sandbox.DefaultGID)
	case math.MaxUint32:
		return fmt.Errorf("%s: 4294967295 is (gid_t)-1, which the kernel reads as no change: the cells would keep root's group (fix: a gid of their own, such as the default %d)", origin["gid"], sandbox.DefaultGID)
	}
	return nil
}

// settingOrigins says, for each flag of fs once parsed, how its value was
// given: "--name=\"v\"", "CELLGATE_NAME=\"v\"" (from envMap, the
// environment's variables) or "default --name=v". Errors name a setting
// so, as the operator wrote it.
func settingOrigins(fs *flag.FlagSet, envMap map[string]string) map[string]string {
	origin := map[string]string{}
	fs.VisitAll(func(f *flag.Flag) {
		name := envPrefix + strings.ToUpper(strings.ReplaceAll(f.Name, "-", "_"))
		origin[f.Name] = "default --" + f.Name + "=" + f.Value.String()
		if v, ok := envMap[name]; ok {
			origin[f.Name] = name + "=" + strconv.Quote(v)
		}
	})
	fs.Visit(func(f *flag.Flag) { origin[f.Name] = "--" + f.Name + "=" + strconv.Quote(f.Value.String()) })
	return origin
}

// base returns the base group to open, resolved against the cgroup2 mount,
// and whether it is a private one made up for this process (prefix names
// it: cellgate-run, cellgate-doctor).
func (s *Shared) base(mount, prefix string) (string, bool) {
	if s.CgroupBase == "" {
		return filepath.Join(mount, fmt.Sprintf("%s-%d", prefix, os.Getpid())), true
	}
	if filepath.IsAbs(s.CgroupBase) {
		return filepath.Clean(s.CgroupBase), false
	}
	return filepath.Join(mount, s.CgroupBase), false
}

// accountCredential is an account's uid, primary gid and supplementary
// groups, as a worker's credentials (serve's route users, run --user NAME).
func accountCredential(acct *user.User) (*sandbox.Credential, error) {
	ids, err := acct.GroupIds()
	if err != nil {
		return nil, fmt.Errorf("groups of user %q: %w", acct.Username, err)
	}
	return credential(acct, ids)
}

// credential builds the credentials of acct with the supplementary groups
// ids (its primary group left out).
func credential(acct *user.User, ids []string) (*sandbox.Credential, error) {
	uid, err := strconv.ParseUint(acct.Uid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has uid %q: %w", acct.Username, acct.Uid, err)
	}
	gid, err := strconv.ParseUint(acct.Gid, 10, 32)
	if err != nil {
		return nil, fmt.Errorf("user %q has gid %q: %w", acct.Username, acct.Gid, err)
	}
	cred := &sandbox.Credential{UID: uint32(uid), GID: uint32(gid)}
	for _, id := range ids {
		n, err := strconv.ParseUint(id, 10, 32)
		if err != nil {
			return nil, fmt.Errorf("user %q has group id %q: %w", acct.Username, id, err)
		}
		if uint32(n) != cred.GID {
			cred.Groups = append(cred.Groups, uint32(n))
		}
	}
	return cred, nil
}

// cgroup2Mount finds where cgroup2 is mounted, from /proc/self/mountinfo.
func cgroup2Mount() (string, error) {
	m, err := cgroup.Mountpoint("")
	if err != nil {
		return "", fmt.Errorf("%w: %w", errNoCgroup2, err)
	}
	return m, nil
}

var errNoCgroup2 = errors.New("no cgroup2 filesystem mounted (mount -t cgroup2 none /sys/fs/cgroup, or boot with systemd.unified_cgroup_hierarchy=1)")

// uidRange is a sandbox.UIDRange as a flag and environment value:
// "first-last".
type uidRange sandbox.UIDRange

func (r *uidRange) String() string { return sandbox.UIDRange(*r).String() }

func (r *uidRange) Set(s string) error {
	a, b, ok := strings.Cut(s, "-")
	first, err1 := strconv.ParseUint(a, 10, 32)
	last, err2 := strconv.ParseUint(b, 10, 32)
	if !ok || err1 != nil || err2 != nil || last < first {
		return fmt.Errorf("want first-last, such as 2000000000-2000065535")
	}
	*r = uidRange{First: uint32(first), Count: uint32(last - first + 1)}
	return nil
}

func (r *uidRange) UnmarshalText(b []byte) error { return r.Set(string(b)) }

// listFlag is a comma-separated list.
type listFlag []string

func (l *listFlag) String() string { return strings.Join(*l, ",") }

func (l *listFlag) Set(s string) error {
	*l = cleanList(strings.Split(s, ","))
	return nil
}

// appendListFlag is a comma-separated list that may be given more than
// once, each adding to it; the first flag replaces the list read from the
// environment.
type appendListFlag struct {
	l   *[]string
	set bool
}

func (a *appendListFlag) String() string {
	if a == nil || a.l == nil {
		return ""
	}
	return strings.Join(*a.l, ",")
}

func (a *appendListFlag) Set(s string) error {
	if !a.set {
		*a.l, a.set = nil, true
	}
	var more listFlag
	more.Set(s)
	*a.l = append(*a.l, more...)
	return nil
}

// uint32Flag is a decimal uint32.
type uint32Flag uint32

func (u *uint32Flag) String() string { return strconv.FormatUint(uint64(*u), 10) }

func (u *uint32Flag) Set(s string) error {
	v, err := strconv.ParseUint(s, 10, 32)
	if err != nil {
		return fmt.Errorf("want a number from 0 to %d", uint32(1<<32-1))
	}
	*u = uint32Flag(v)
	return nil
}

// intFlag, int64Flag and boolFlag are flags whose errors say what is
// wanted (the flag package's own say only "parse error" and "value out
// of range").
type (
	intFlag   int
	int64Flag int64
	boolFlag  bool
)

func (i *intFlag) String() string { return strconv.Itoa(int(*i)) }

func (i *intFlag) Set(s string) error {
	v, err := strconv.ParseInt(s, 0, strconv.IntSize)
	if err != nil {
		return wantWhole(err)
	}
	*i = intFlag(v)
	return nil
}

func (i *int64Flag) String() string { return strconv.FormatInt(int64(*i), 10) }

func (i *int64Flag) Set(s string) error {
	v, err := strconv.ParseInt(s, 0, 64)
	if err != nil {
		return wantWhole(err)
	}
	*i = int64Flag(v)
	return nil
}

// wantWhole is the error of a number flag's value that err refused.
func wantWhole(err error) error {
	if errors.Is(err, strconv.ErrRange) {
		return errors.New("want a whole number: this one is out of range")
	}
	return errors.New("want a whole number, such as 64, 0 or -1")
}

func (b *boolFlag) String() string { return strconv.FormatBool(bool(*b)) }

func (b *boolFlag) IsBoolFlag() bool { return true }

func (b *boolFlag) Set(s string) error {
	v, err := strconv.ParseBool(s)
	if err != nil {
		return errors.New(wantBool)
	}
	*b = boolFlag(v)
	return nil
}

// logLevel is a slog.Level whose error, as a flag's or a variable's,
// lists the levels (slog's own says "slog: level string ...: unknown
// name").
type logLevel slog.Level

func (l logLevel) MarshalText() ([]byte, error) { return slog.Level(l).MarshalText() }

func (l *logLevel) UnmarshalText(b []byte) error {
	var v slog.Level
	if err := v.UnmarshalText(b); err != nil {
		return fmt.Errorf("want debug, info, warn or error (%q is none of them)", b)
	}
	*l = logLevel(v)
	return nil
}

// durationFlag is a time.Duration flag whose error says what a duration
// looks like (the flag package's own says only "parse error").
type durationFlag time.Duration

func (d *durationFlag) String() string { return time.Duration(*d).String() }

func (d *durationFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%s (%q has none or is malformed)", wantDuration, s)
	}
	*d = durationFlag(v)
	return nil
}

// otherEnv are CELLGATE_* variables the project's build and tests read,
// which cellgate itself does not.
var otherEnv = []string{"CELLGATE_BIN", "CELLGATE_REQUIRE_KERNEL_TESTS", "CELLGATE_VM_CACHE", "CELLGATE_VM_ACCEL", "CELLGATE_CELL_HELPER", "CELLGATE_TEST_HELPER",
	"CELLGATE_IMAGE", "CELLGATE_REQUIRE_SYSTEMD", "CELLGATE_TEST_AS_CELLGATE"}

// unknownEnv returns a warning for each CELLGATE_* variable of environ
// that no subcommand reads (a misspelt setting is otherwise silently
// ignored), with the setting it may have meant.
func unknownEnv(environ []string) []string {
	known := slices.Clone(otherEnv)
	params, err := env.GetFieldParamsWithOptions(&serveConfig{}, env.Options{Prefix: envPrefix})
	if err != nil {
		return nil
	}
	for _, p := range params {
		known = append(known, p.Key)
	}
	var out []string
	for _, kv := range environ {
		k, _, _ := strings.Cut(kv, "=")
		if !strings.HasPrefix(k, envPrefix) || slices.Contains(known, k) {
			continue
		}
		msg := fmt.Sprintf("%s is not a cellgate setting; it is ignored", k)
		if s := policy.Closest(k, known); s != "" {
			msg += fmt.Sprintf(" (did you mean %s?)", s)
		}
		out = append(out, msg)
	}
	slices.Sort(out)
	return out
}

// cleanList trims each entry of a comma-separated list read from the
// environment and drops the empty ones, as the list flags do
// (listFlag.Set): CELLGATE_UNENFORCED="memory, cpu" is --unenforced's
// "memory, cpu".
func cleanList(l []string) []string {
	var out []string
	for _, v := range l {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
