package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"os"
	"os/signal"
	"os/user"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/proxy"
	"github.com/cellgate/cellgate/sandbox"
)

// Exit statuses of cellgate run besides the command's own (0-255, or
// 128+signal when a signal ended it). They follow timeout(1) and the shell
// where those have one; a command can exit with any of these itself, so
// --json's "cause" is the unambiguous answer.
const (
	exitOOM        = 122 // the kernel OOM-killed the cell (memory.events)
	exitDeadline   = 124 // --timeout passed; cellgate killed the cell (as timeout(1))
	exitSetup      = 125 // cellgate's own failure: no cgroup, no cell, no uid (as timeout(1))
	exitCannotExec = 126 // the command exists but cannot be executed (as the shell)
	exitNotFound   = 127 // the command was not found (as the shell)
)

// defaultWorkerPath is the PATH a command gets unless --env sets one.
const defaultWorkerPath = "PATH=" + proxy.DefaultPath

// runConfig is cellgate run's configuration, validated once.
type runConfig struct {
	Shared
	Limits policy.Limits // Memory, MilliCPU, Pids, Timeout; the rest unused
	// User: "auto" (a uid of the cell's own from the range), a user name,
	// or UID[:GID]. Explicit credentials may be root's.
	User string
	Dir  string   // the command's working directory
	Env  []string // the command's whole environment
	JSON bool
	Argv []string
	// Confine is the command's confinement, a cgi route's default unless
	// flags relax it (run_confine.go).
	Confine policy.Confinement
}

const runUsage = `usage: cellgate run [flags] -- COMMAND [ARGS...]

Runs COMMAND in a fresh cgroup cell with the given limits, prints what it
used (a table on stderr, or with --json one JSON object on stdout, the
command's own stdout then going to stderr) and exits with the command's
status: its exit status, 128+N when signal N ended it, 122 when the kernel
OOM-killed it, 124 when --timeout passed, 125 when cellgate itself failed,
126 when COMMAND cannot be executed, 127 when it is not found, 2 for bad
flags.

The command gets exactly the environment of --env plus a default PATH
(unless --env sets PATH),
runs in --dir (default /) under --user, with no_new_privs, in a process
group of its own, with only stdin, stdout and stderr open.

It is confined as the cells of a cgi route are by default: namespaces of
its own (mount, PID, IPC, UTS, network with only loopback), a read-only
view of the system directories and the command's directory (--dir must be
inside it), private /tmp, /var/tmp and /dev/shm, its own /proc, and the
seccomp filter, without transparent huge pages. Each of --network,
--filesystem, --seccomp, --host-namespaces, --system-dirs, --mount,
--rootfs, --tmpfs-size, --nofile and --huge-pages relaxes one of them as
the policy key of the same name does.

flags:
`

// parseRunConfig turns run's arguments and CELLGATE_* environment into a
// validated config. A flag.ErrHelp error means -h was given.
func parseRunConfig(args, environ []string, usageOut io.Writer) (runConfig, error) {
	d := policy.DefaultLimits()
	cfg := runConfig{Shared: defaultShared(), User: "auto", Dir: "/"}
	cfg.Limits = policy.Limits{Memory: d.Memory, MilliCPU: d.MilliCPU, Pids: d.Pids, Timeout: d.Timeout}
	if err := cfg.Shared.parseEnv(environ); err != nil {
		return cfg, err
	}
	fs := flag.NewFlagSet("cellgate run", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Usage = func() {}
	cfg.Shared.addFlags(fs)
	fs.TextVar((*byteSize)(&cfg.Limits.Memory), "memory", byteSize(cfg.Limits.Memory), "memory limit, such as `64Mi` or 1G (memory.max, no swap)")
	fs.Var((*cpuFlag)(&cfg.Limits.MilliCPU), "cpu", "CPU limit in `CPUs`, such as 0.5 or 250m, or max (cpu.max)")
	fs.Var((*int64Flag)(&cfg.Limits.Pids), "pids", "process `limit` (pids.max)")
	fs.Var((*durationFlag)(&cfg.Limits.Timeout), "timeout", "wall-clock `deadline`; the whole cell is killed then")
	fs.StringVar(&cfg.User, "user", cfg.User, "`auto` (a uid of the cell's own from --uid-range), a user name such as nobody, or UID[:GID]")
	fs.StringVar(&cfg.Dir, "dir", cfg.Dir, "the command's working `directory`, in the cell's view (a system directory, the command's, a --mount)")
	fs.Var((*envFlag)(&cfg.Env), "env", "`KEY=VALUE` for the command's environment; repeatable (always with "+defaultWorkerPath+" unless PATH is set)")
	fs.Var((*boolFlag)(&cfg.JSON), "json", "print one JSON object on stdout (the command's stdout goes to stderr)")
	addConfineFlags(fs, &cfg.Confine)
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(usageOut, runUsage)
			fs.SetOutput(usageOut)
			fs.PrintDefaults()
		}
		return cfg, err
	}
	set := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { set[f.Name] = true })
	if err := checkConfine(cfg.Confine, set); err != nil {
		return cfg, err
	}
	cfg.Argv = fs.Args()
	if !slices.ContainsFunc(cfg.Env, func(kv string) bool { return strings.HasPrefix(kv, "PATH=") }) {
		// --env adds to the environment; only --env PATH=... replaces
		// the default PATH.
		cfg.Env = append([]string{defaultWorkerPath}, cfg.Env...)
	}
	return cfg, cfg.validate(settingOrigins(fs, env.ToMap(environ)))
}

func (c *runConfig) validate(origin map[string]string) error {
	if err := c.Shared.validate(origin); err != nil {
		return err
	}
	if len(c.Argv) == 0 {
		return errors.New("no command: cellgate run [flags] -- COMMAND [ARGS...]")
	}
	if c.Init != "" {
		// Opened here, as a flag's value is checked (exit 2), not at the
		// cell's set-up (125, as a failure of cellgate's own).
		l, err := confine.OpenLauncher(c.Init)
		if err != nil {
			return fmt.Errorf("%s: %w (fix: name cellgate-init's executable (make build puts it beside cellgate), or leave it unset)", origin["init"], err)
		}
		l.Close()
	}
	if c.Limits.Memory < policy.MinMemory {
		return fmt.Errorf("--memory %s: below the floor %s", policy.FormatBytes(c.Limits.Memory), policy.FormatBytes(policy.MinMemory))
	}
	if c.Limits.Memory > policy.MaxSize {
		return fmt.Errorf("--memory %s: above %s, the most a size may be (as the policy's memory)", policy.FormatBytes(c.Limits.Memory), policy.FormatBytes(policy.MaxSize))
	}
	if c.Limits.MilliCPU != 0 && (c.Limits.MilliCPU < policy.MinMilliCPU || c.Limits.MilliCPU > policy.MaxMilliCPU) {
		return fmt.Errorf("--cpu %s: outside %s..%s", policy.FormatCPU(c.Limits.MilliCPU), policy.FormatCPU(policy.MinMilliCPU), policy.FormatCPU(policy.MaxMilliCPU))
	}
	if c.Limits.Pids < policy.MinPids {
		return fmt.Errorf("--pids %d: below %d (the command itself is a process)", c.Limits.Pids, policy.MinPids)
	}
	if most := int64(policy.MaxPids - policy.InitPids); c.Limits.Pids > most {
		// The cell's pids.max is --pids plus its init's (withInitPids).
		return fmt.Errorf("--pids %d: above %d (pids.max takes at most %d, %d of them the cell's init's)", c.Limits.Pids, most, policy.MaxPids, policy.InitPids)
	}
	if c.Limits.Timeout <= 0 {
		return fmt.Errorf("--timeout %s: not positive", c.Limits.Timeout)
	}
	if !filepath.IsAbs(c.Dir) {
		return fmt.Errorf("--dir %q: not an absolute path", c.Dir)
	}
	if st, err := os.Stat(c.Dir); err != nil {
		return fmt.Errorf("--dir %s: the command's working directory: %w", c.Dir, err)
	} else if !st.IsDir() {
		return fmt.Errorf("--dir %s: not a directory", c.Dir)
	}
	cred, err := parseUser(c.User, c.GID)
	if err != nil {
		return fmt.Errorf("--user %q: %w", c.User, err)
	}
	// As the policy refuses the same keys of a route.
	root := cred != nil && cred.UID == 0
	hostUser := slices.Contains(c.Confine.HostNamespaces, policy.HostUserNamespace)
	switch {
	case hostUser && !root:
		return errors.New("--host-namespaces user: only a command run as root has a user namespace to share (drop user, or add --user root)")
	case root && !hostUser && c.Confine.HostFilesystem:
		return errors.New("--user root with --filesystem host: the command would be the host's root, with every capability " +
			"(say so with --host-namespaces user, or drop --filesystem host to run it as root of a user namespace of its own)")
	}
	return nil
}

// parseUser resolves --user: nil for auto.
func parseUser(s string, gid uint32) (*sandbox.Credential, error) {
	if s == "auto" {
		return nil, nil
	}
	if u, g, ok := strings.Cut(s, ":"); ok || isDigits(s) {
		// 4294967295 is (uid_t)-1: setresuid leaves the id as it is, and
		// the command would run as cellgate's root.
		uid, err := strconv.ParseUint(u, 10, 32)
		if err != nil || uid == math.MaxUint32 {
			return nil, errors.New("want auto, a user name, or UID[:GID], each below 4294967295")
		}
		cred := &sandbox.Credential{UID: uint32(uid), GID: gid}
		if ok {
			v, err := strconv.ParseUint(g, 10, 32)
			if err != nil || v == math.MaxUint32 {
				return nil, errors.New("want auto, a user name, or UID[:GID], each below 4294967295")
			}
			cred.GID = uint32(v)
		}
		return cred, nil
	}
	u, err := user.Lookup(s)
	if err != nil {
		return nil, fmt.Errorf("look up user: %w", err)
	}
	return accountCredential(u)
}

func isDigits(s string) bool {
	for _, r := range s {
		if r < '0' || r > '9' {
			return false
		}
	}
	return s != ""
}

// runReport is the --json output.
type runReport struct {
	Status int    `json:"status"` // cellgate's exit status
	Cause  string `json:"cause,omitempty"`
	// ExitCode, UID and Usage are the command's: absent when it never
	// started (a zero would read as a uid 0 that ran and exited 0).
	ExitCode    *int          `json:"exit_code,omitempty"`
	Signal      string        `json:"signal,omitempty"`
	Started     *time.Time    `json:"started,omitempty"`
	WallSeconds float64       `json:"wall_seconds"`
	UID         *uint32       `json:"uid,omitempty"`
	Confinement string        `json:"confinement"` // "full", or what flags relaxed
	Unenforced  []string      `json:"unenforced"`
	Limits      reportLimits  `json:"limits"`
	Usage       *cgroup.Usage `json:"usage,omitempty"`
	Error       string        `json:"error,omitempty"`
}

type reportLimits struct {
	MemoryBytes    int64   `json:"memory_bytes"`
	CPU            string  `json:"cpu"`
	Pids           int64   `json:"pids"`
	TimeoutSeconds float64 `json:"timeout_seconds"`
}

func runMain(ctx context.Context, args []string, std stdio) int {
	cfg, err := parseRunConfig(args, std.environ, std.out)
	if errors.Is(err, flag.ErrHelp) {
		return exitOK
	}
	if err != nil {
		fmt.Fprintf(std.err, "cellgate run: %v\n", err)
		return exitUsage
	}
	ctx, stop, caught := signalContext(ctx)
	defer stop()

	rep := runReport{Limits: reportLimits{
		MemoryBytes: cfg.Limits.Memory, CPU: policy.FormatCPU(cfg.Limits.MilliCPU),
		Pids: cfg.Limits.Pids, TimeoutSeconds: cfg.Limits.Timeout.Seconds(),
	}, Unenforced: []string{}, Confinement: cfg.Confine.String()}
	res, err := runCell(ctx, cfg, std)
	switch {
	case err != nil && res.Started.IsZero():
		rep.Status = setupStatus(err)
		rep.Error = err.Error()
		fmt.Fprintf(std.err, "cellgate run: %v\n", err)
	default:
		if err != nil { // the command ran; its streams or the accounting failed
			rep.Error = err.Error()
			fmt.Fprintf(std.err, "cellgate run: %v\n", err)
		}
		rep.Status = resultStatus(res, caught())
		rep.Cause = string(res.Cause)
		rep.ExitCode = &res.ExitCode
		if res.Signal != 0 {
			rep.Signal = unixSignalName(res.Signal)
		}
		rep.Started = &res.Started
		rep.WallSeconds = res.Wall.Seconds()
		rep.UID = &res.UID
		if res.Unenforced != nil {
			rep.Unenforced = res.Unenforced
		}
		rep.Usage = &res.Usage
	}
	if cfg.JSON {
		enc := json.NewEncoder(std.out)
		if err := enc.Encode(rep); err != nil {
			fmt.Fprintf(std.err, "cellgate run: write JSON: %v\n", err)
			return exitSetup
		}
	} else if rep.Cause != "" {
		printTable(std.err, rep)
	}
	return rep.Status
}

// runCell opens a cgroup tree for this one command, runs it, and tears the
// tree down again.
func runCell(ctx context.Context, cfg runConfig, std stdio) (sandbox.Result, error) {
	log := slog.New(slog.NewTextHandler(std.err, &slog.HandlerOptions{Level: slog.LevelWarn}))
	cred, _ := parseUser(cfg.User, cfg.GID) // validated
	path, err := lookPath(cfg.Argv[0], cfg.Env)
	if err != nil {
		return sandbox.Result{}, err
	}
	// The confinement shows the command's directory: a command that is
	// not there is "not found" (127), not a view that cannot be built.
	if _, err := os.Stat(path); err != nil {
		return sandbox.Result{}, fmt.Errorf("%w: %s: %w", sandbox.ErrSpawn, path, err)
	}
	route := &policy.Route{Name: "run", Program: path, Confinement: cfg.Confine, AllowRoot: cred != nil && cred.UID == 0}
	// Run as root, the command is root of a user namespace of its own,
	// whose uid 0 is the range's first uid on the host.
	var root *confine.RootMap
	cc, err := cellCredential(cred, sandbox.UIDRange(cfg.UIDs), cfg.GID)
	if err != nil {
		return sandbox.Result{}, badFlagError{fmt.Errorf("--user %s: %w (fix: a uid outside --uid-range, or --user auto)", cfg.User, err)}
	}
	if ownRootNS(route, cred) {
		root = &confine.RootMap{UID: sandbox.UIDRange(cfg.UIDs).First, GID: cfg.GID}
		cc = sandbox.Credential{UID: root.UID, GID: root.GID}
	}
	if !cfg.Confine.HostFilesystem {
		// The view binds the command's directory by itself: what the
		// cell's credentials could not reach on the host (a directory
		// above it closed to them) they must not reach through the view
		// either. serve refuses such a route the same way (routecheck.go).
		if probs := verifyRoute("", route, cc, nil); len(probs) > 0 {
			return sandbox.Result{}, fmt.Errorf("%w: %s: %s (%s): %w", sandbox.ErrSpawn, path, probs[0].Msg, probs[0].Fix, fs.ErrPermission)
		}
	}
	plan, err := routeConfinement(route, nil, root)
	if err != nil {
		// What the confinement flags asked for cannot be built (a --rootfs
		// or --mount source missing, --nofile above fs.nr_open).
		return sandbox.Result{}, badFlagError{err}
	}
	if c := cfg.Confine; !c.HostFilesystem && c.RootFS == "" && !plan.Plan().HasDir(cfg.Dir) {
		// The cell would fail to enter it: a 127 for a command that is
		// there.
		return sandbox.Result{}, badFlagError{fmt.Errorf("--dir %s: not in the cell's view (fix: add --mount %s, or --filesystem host)", cfg.Dir, cfg.Dir)}
	}
	if cred != nil {
		switch err := plan.CheckRunAs(cred.UID); {
		case errors.Is(err, confine.ErrNoUserNS):
			return sandbox.Result{}, fmt.Errorf("--user root: %w: allow setns of a user namespace and user namespaces, add --host-namespaces user, or run the command under another --user", err)
		case err != nil:
			return sandbox.Result{}, fmt.Errorf("--user root: %w: add CAP_SETPCAP, drop --host-namespaces user, or run the command under another --user", err)
		}
	}
	launcher, self, err := openLauncher(cfg.Init)
	if err != nil {
		return sandbox.Result{}, fmt.Errorf("cell init: %w", err)
	}
	defer launcher.Close()
	if self && root != nil {
		return sandbox.Result{}, fmt.Errorf("--user root: %w", confine.ErrUserNSNeedsCInit)
	}
	if self {
		log.Warn("no "+confine.InitArg0+" beside the cellgate executable and no --init: the cell starts cellgate itself as its init", "init", launcher.Name())
	}
	mount, err := cgroup2Mount()
	if err != nil {
		return sandbox.Result{}, err
	}
	base, _ := cfg.base(mount, "cellgate-run")
	tree, err := cgroup.Open(ctx, cgroup.Options{Mount: mount, Base: base, Unenforced: cfg.Unenforced, Logger: log})
	if err != nil {
		return sandbox.Result{}, err
	}
	defer func() {
		if err := tree.Close(); err != nil {
			log.Error("close cgroup tree", "err", err)
		}
	}()
	// The cell's pids.max leaves room for its init (serve_confine.go).
	prof, err := cgroup.NewProfile("", withInitPids(cfg.Limits.Resources()))
	if err != nil {
		return sandbox.Result{}, err
	}
	if err := tree.Check(prof); err != nil {
		return sandbox.Result{}, err
	}
	r, err := sandbox.New(sandbox.Config{
		Cells:    sandbox.TreeCells{Tree: tree, Logger: log},
		Logger:   log,
		Profile:  prof,
		Timeout:  cfg.Limits.Timeout,
		UIDs:     sandbox.UIDRange(cfg.UIDs),
		GID:      cfg.GID,
		Launcher: launcher,
	})
	if err != nil {
		return sandbox.Result{}, err
	}
	defer r.Close()
	out := std.out
	if cfg.JSON {
		out = std.err
	}
	return r.Run(ctx, sandbox.Spec{
		Path: path, Args: cfg.Argv, Env: cfg.Env, Dir: cfg.Dir,
		Stdin: std.in, Stdout: out, Stderr: std.err,
		User: cred, Confine: plan,
	})
}

// lookPath finds argv0 the way the command's own PATH would: a name with a
// slash is taken as it is (made absolute, as the command runs in --dir);
// a bare name is searched in the PATH of env.
func lookPath(argv0 string, env []string) (string, error) {
	if strings.Contains(argv0, "/") {
		abs, err := filepath.Abs(argv0)
		if err != nil {
			return "", fmt.Errorf("%w: %s: %w", sandbox.ErrSpawn, argv0, err)
		}
		return abs, nil
	}
	pathVar := ""
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathVar = v
		}
	}
	for _, dir := range filepath.SplitList(pathVar) {
		if dir == "" || !filepath.IsAbs(dir) {
			continue
		}
		p := filepath.Join(dir, argv0)
		if st, err := os.Stat(p); err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	return "", fmt.Errorf("%w: %s: not found in PATH=%s: %w", sandbox.ErrSpawn, argv0, pathVar, fs.ErrNotExist)
}

// setupStatus maps an error that kept the command from running.
func setupStatus(err error) int {
	switch {
	case errors.As(err, new(badFlagError)):
		return exitUsage
	case errors.Is(err, sandbox.ErrSpawn) && errors.Is(err, fs.ErrNotExist):
		return exitNotFound
	case errors.Is(err, sandbox.ErrSpawn) && (errors.Is(err, fs.ErrPermission) || errors.Is(err, syscall.ENOEXEC)):
		return exitCannotExec
	}
	return exitSetup
}

// badFlagError is a flag found wrong only once the cell is built (its
// view): the exit status is exitUsage's.
type badFlagError struct{ error }

// resultStatus maps how the command ended to cellgate run's exit status.
// caught is the signal cellgate itself received (and passed on as a kill
// of the cell), or 0.
func resultStatus(res sandbox.Result, caught syscall.Signal) int {
	switch res.Cause {
	case sandbox.CauseOK:
		return 0
	case sandbox.CauseOOM:
		return exitOOM
	case sandbox.CauseDeadline:
		return exitDeadline
	case sandbox.CauseKilled:
		if caught != 0 {
			return 128 + int(caught)
		}
	}
	if res.Signal != 0 {
		return 128 + int(res.Signal)
	}
	return res.ExitCode
}

// signalContext cancels ctx on SIGINT, SIGTERM or SIGHUP and remembers
// which one came.
func signalContext(parent context.Context) (context.Context, func(), func() syscall.Signal) {
	ctx, cancel := context.WithCancel(parent)
	sigc := make(chan os.Signal, 1)
	signal.Notify(sigc, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	got := make(chan syscall.Signal, 1)
	done := make(chan struct{})
	go func() {
		select {
		case s := <-sigc:
			got <- s.(syscall.Signal)
			cancel()
		case <-done:
		}
	}()
	stop := func() {
		signal.Stop(sigc)
		close(done)
		cancel()
	}
	caught := func() syscall.Signal {
		select {
		case s := <-got:
			got <- s
			return s
		default:
			return 0
		}
	}
	return ctx, stop, caught
}

func unixSignalName(s syscall.Signal) string {
	if name := signalNames[s]; name != "" {
		return name
	}
	return "SIG" + strconv.Itoa(int(s))
}

var signalNames = map[syscall.Signal]string{
	syscall.SIGHUP: "SIGHUP", syscall.SIGINT: "SIGINT", syscall.SIGQUIT: "SIGQUIT", syscall.SIGILL: "SIGILL",
	syscall.SIGTRAP: "SIGTRAP", syscall.SIGABRT: "SIGABRT", syscall.SIGBUS: "SIGBUS", syscall.SIGFPE: "SIGFPE",
	syscall.SIGKILL: "SIGKILL", syscall.SIGUSR1: "SIGUSR1", syscall.SIGSEGV: "SIGSEGV", syscall.SIGUSR2: "SIGUSR2",
	syscall.SIGPIPE: "SIGPIPE", syscall.SIGALRM: "SIGALRM", syscall.SIGTERM: "SIGTERM", syscall.SIGXCPU: "SIGXCPU",
	syscall.SIGXFSZ: "SIGXFSZ", syscall.SIGSYS: "SIGSYS",
}

// printTable writes the accounting of a command that started as a
// readable table.
func printTable(w io.Writer, r runReport) {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	u := r.Usage
	exit := strconv.Itoa(*r.ExitCode)
	if r.Signal != "" {
		exit = "killed by " + r.Signal
	}
	fmt.Fprintf(tw, "cause\t%s\t(exit status %d)\n", r.Cause, r.Status)
	fmt.Fprintf(tw, "command\t%s\n", exit)
	fmt.Fprintf(tw, "wall\t%s\n", time.Duration(r.WallSeconds*float64(time.Second)).Round(time.Microsecond))
	na := func(file string, v string) string {
		if !measured(u.Missing, file) {
			return "n/a"
		}
		return v
	}
	fmt.Fprintf(tw, "cpu\t%s\t(user %s, system %s)\n", na("cpu.stat:usage_usec", usec(u.CPUUsageUsec)),
		na("cpu.stat:user_usec", usec(u.CPUUserUsec)), na("cpu.stat:system_usec", usec(u.CPUSystemUsec)))
	fmt.Fprintf(tw, "throttled\t%s\t(%s periods)\n", na("cpu.stat:throttled_usec", usec(u.ThrottledUsec)),
		na("cpu.stat:nr_throttled", strconv.FormatUint(u.NrThrottled, 10)))
	fmt.Fprintf(tw, "memory peak\t%s\t(limit %s; hit the limit %s times, OOM kills %s)\n", na("memory.peak", humanBytes(u.MemoryPeak)),
		policy.FormatBytes(r.Limits.MemoryBytes), na("memory.events", strconv.FormatUint(u.MemoryMax, 10)), na("memory.events", strconv.FormatUint(u.OOMKill, 10)))
	fmt.Fprintf(tw, "pids peak\t%s\t(limit %d; forks refused %s)\n", na("pids.peak", strconv.FormatUint(u.PidsPeak, 10)),
		r.Limits.Pids, na("pids.events", strconv.FormatUint(u.PidsMax, 10)))
	fmt.Fprintf(tw, "io\t%s read, %s written\n", na("io.stat", humanBytes(u.IOReadBytes)), na("io.stat", humanBytes(u.IOWriteBytes)))
	fmt.Fprintf(tw, "uid\t%d\n", *r.UID)
	fmt.Fprintf(tw, "confinement\t%s\n", r.Confinement)
	if len(r.Unenforced) > 0 {
		fmt.Fprintf(tw, "unenforced\t%s\t(these limits were not applied)\n", strings.Join(r.Unenforced, " "))
	}
	if len(u.Missing) > 0 {
		fmt.Fprintf(tw, "not measured\t%s\n", strings.Join(u.Missing, " "))
	}
	tw.Flush()
}

// measured reports whether the kernel gave a value for file (a file name, or
// file:key for one key of a flat-keyed file), given Usage.Missing.
func measured(missing []string, file string) bool {
	name, _, _ := strings.Cut(file, ":")
	for _, m := range missing {
		if m == file || m == name {
			return false
		}
	}
	return true
}

func usec(v uint64) string { return (time.Duration(v) * time.Microsecond).String() }

func humanBytes(v uint64) string {
	switch {
	case v >= 1<<30:
		return fmt.Sprintf("%.1fGi", float64(v)/(1<<30))
	case v >= 1<<20:
		return fmt.Sprintf("%.1fMi", float64(v)/(1<<20))
	case v >= 1<<10:
		return fmt.Sprintf("%.1fKi", float64(v)/(1<<10))
	}
	return strconv.FormatUint(v, 10)
}

// cpuFlag is a CPU amount in thousandths (policy.ParseCPU).
type cpuFlag int64

func (c *cpuFlag) String() string { return policy.FormatCPU(int64(*c)) }
func (c *cpuFlag) Set(s string) error {
	v, err := policy.ParseCPU(s)
	if err == nil && v == 0 && s != "max" {
		// 0 is how "max" is kept: a zero written would lift the limit.
		return errors.New("no CPU at all: write a share such as 0.5 or 250m, or max for no limit")
	}
	*c = cpuFlag(v)
	return err
}

// envFlag collects KEY=VALUE entries; a later KEY replaces an earlier one.
type envFlag []string

func (e *envFlag) String() string { return strings.Join(*e, " ") }
func (e *envFlag) Set(s string) error {
	k, _, ok := strings.Cut(s, "=")
	if !ok || k == "" || strings.ContainsRune(s, 0) {
		return errors.New("want KEY=VALUE")
	}
	for i, kv := range *e {
		if strings.HasPrefix(kv, k+"=") {
			(*e)[i] = s
			return nil
		}
	}
	*e = append(*e, s)
	return nil
}
