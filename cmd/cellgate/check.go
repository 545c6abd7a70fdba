package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/caarlos0/env/v11"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

const exitInvalid = 1 // cellgate check: the policy is not valid, or not readable

const checkUsage = `usage: cellgate check [--uid-range FIRST-LAST] [--gid GID] [--tls-key FILE] [--init FILE] [--syntax-only] POLICY

Validates the policy file POLICY as serve would load it and prints the
effective tenants and routes, with every limit after defaults. Problems are
listed one per line as FILE:LINE: KEY: "VALUE": what is wrong (fix: ...).
Like serve, it verifies each route on this machine as the credentials its
cells will run with (the route's user, or a per-cell uid of --uid-range with
its tenant's gid, else --gid, also read from CELLGATE_UID_RANGE and
CELLGATE_GID; a fork route's with --gid): the user must
exist, the program (or dir) and every directory above it must be reachable,
the program executable, a script readable with an interpreter line naming
an interpreter they can execute. It also builds each route's confinement
as serve does by default: a program whose symlink, or a script whose #!
interpreter, leads out of the cells' view, a rootfs or mount source that
does not exist,
or a fork route's app_dir or mount under /tmp, /var/tmp or /dev/shm, is a
problem, and so is a writable mount holding the policy file or serve's TLS
key (--tls-key, also read from CELLGATE_TLS_KEY, as serve reads it); the
views that show either are said to cover it. A route run as root needs
cellgate-init (beside cellgate, or --init, also read from CELLGATE_INIT),
as serve does; without it the route is a problem. --syntax-only skips these checks (for a
policy checked on another machine than the one that serves it). Exits 0
when the policy is valid, 1 when it is not (or cannot be read), 2 for bad
arguments.
`

func checkMain(_ context.Context, args []string, std stdio) int {
	return runCheck(args, std.environ, std.out, std.err)
}

// runCheck is cellgate check: it validates the policy file named in args,
// prints the effective routes and limits to stdout, and problems to
// stderr.
func runCheck(args, environ []string, stdout, stderr io.Writer) int {
	sh := defaultShared()
	if err := sh.parseEnv(environ); err != nil {
		fmt.Fprintf(stderr, "cellgate check: %v\n", err)
		return exitUsage
	}
	fs := flag.NewFlagSet("cellgate check", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	fs.Var(&sh.UIDs, "uid-range", "")
	fs.Var((*uint32Flag)(&sh.GID), "gid", "")
	fs.StringVar(&sh.Init, "init", sh.Init, "")
	envMap := env.ToMap(environ)
	tlsKey := fs.String("tls-key", envMap[envPrefix+"TLS_KEY"], "")
	syntaxOnly := fs.Bool("syntax-only", false, "")
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			fmt.Fprint(stdout, checkUsage)
			return exitOK
		}
		fmt.Fprintf(stderr, "cellgate check: %v\n%s", err, checkUsage)
		return exitUsage
	}
	if fs.NArg() > 1 && strings.HasPrefix(fs.Arg(1), "-") {
		// Flags end at the first argument that is not one.
		fmt.Fprintf(stderr, "cellgate check: %s after the policy file: flags go before it (cellgate check %s %s)\n%s",
			fs.Arg(1), strings.Join(fs.Args()[1:], " "), fs.Arg(0), checkUsage)
		return exitUsage
	}
	if fs.NArg() != 1 {
		fmt.Fprintf(stderr, "cellgate check: want one policy file, got %d arguments\n%s", fs.NArg(), checkUsage)
		return exitUsage
	}
	// The shared settings as serve refuses them (a gid of root's, a uid
	// range with root in it): the routes are checked as their cells.
	origin := settingOrigins(fs, envMap)
	origin["unenforced"] = envPrefix + "UNENFORCED=" + strconv.Quote(envMap[envPrefix+"UNENFORCED"])
	if err := sh.validate(origin); err != nil {
		fmt.Fprintf(stderr, "cellgate check: %v\n", err)
		return exitUsage
	}
	file := fs.Arg(0)
	p, err := policy.Load(file)
	hidden := daemonFiles(file, *tlsKey) // serve's own files, covered where a view shows them
	var views []routeView                // what each route's cells see
	var dirWarnings []string             // a dir route's programs its cells cannot run
	var rootRoutes []*policy.Route       // those run as root of a user namespace of their own
	if err == nil && !*syntaxOnly {
		views = routeViews(p, resolvePath)
		err = verifyRoutes(p, func(r *policy.Route) (sandbox.Credential, error) {
			fixed, err := resolveUser(r, sh.GID)
			if ownRootNS(r, fixed) {
				rootRoutes = append(rootRoutes, r)
				fixed = nil // root of its own user namespace: a uid of the range on the host
			}
			if err != nil {
				return sandbox.Credential{}, err
			}
			return cellCredential(fixed, sandbox.UIDRange(sh.UIDs), cellGID(p, r, sh.GID))
		})
		// The confinement serve builds for each route (with cells, its
		// default), so that what serve refuses, check refuses.
		var probs []policy.Problem
		for _, r := range p.Routes {
			prep, cerr := buildConfinement(r, hidden, nil)
			if cerr == nil {
				dirWarnings = append(dirWarnings, dirProgramsHidden(prep.Plan(), r)...)
			}
			if cerr != nil {
				// One problem, with the file and line, per thing
				// wrong (confine.Build joins them).
				errs := []error{cerr}
				if j, ok := cerr.(interface{ Unwrap() []error }); ok {
					errs = j.Unwrap()
				}
				for _, e := range errs {
					probs = append(probs, routeProblem(p.Source, r, "confinement", "", e.Error(), ""))
				}
			}
		}
		if len(probs) > 0 {
			err = withProblems(err, &policy.InvalidError{File: p.Source, Problems: probs})
		}
		err = withProblems(err, verifyRootInit(p, rootRoutes, sh.Init, initIsCellgate))
		err = withProblems(err, verifyGIDs(p, sh.GID, groupFile))
		err = withProblems(err, verifyWritableMounts(p, views))
	}
	var invalid *policy.InvalidError
	switch {
	case errors.As(err, &invalid):
		for _, pr := range invalid.Problems {
			fmt.Fprintln(stderr, pr)
		}
		fmt.Fprintf(stderr, "cellgate check: %s is not valid: %d problem(s)\n", file, invalid.Count())
		return exitInvalid
	case err != nil:
		fmt.Fprintf(stderr, "cellgate check: %v\n", err)
		return exitInvalid
	}
	for _, w := range slices.Concat(dirWarnings, exposedDaemonFiles(p, views, hidden, sh.GID), rootSetuidMounts(views, mountedNosuid), hugetlbfsMounts(views, hugetlbfsIn())) {
		fmt.Fprintf(stderr, "cellgate check: warning: %s\n", w)
	}
	printPolicy(stdout, p)
	return exitOK
}

// maxBodyString is a max_body as check prints it: "flag" when neither the
// route nor the defaults set it (serve's --max-body applies).
func maxBodyString(n *int64) string {
	if n == nil {
		return "flag"
	}
	return policy.FormatBytes(*n)
}

// printPolicy prints the effective policy as tables.
func printPolicy(w io.Writer, p *policy.Policy) {
	fmt.Fprintf(w, "%s: valid: %d route(s), %d tenant(s)\n\n", p.Source, len(p.Routes), len(p.Tenants))
	fmt.Fprintf(w, "global: memory %s, max_cells %s\n", sizeOrNone(p.Global.Memory), countOrNone(p.Global.MaxCells))
	d := p.Defaults
	fmt.Fprintf(w, "defaults: memory %s, swap %s, cpu %s, pids %d, timeout %s, max_body %s\n\n",
		policy.FormatBytes(d.Memory), policy.FormatBytes(d.Swap), policy.FormatCPU(d.MilliCPU), d.Pids, d.Timeout, maxBodyString(d.MaxBody))

	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "TENANT\tMEMORY\tCPU_WEIGHT\tCPU\tPIDS\tMAX_CELLS\tQUEUE\tQUEUE_TIMEOUT\tLINE")
	for _, t := range p.Tenants {
		line := strconv.Itoa(t.Line)
		if t.Implicit {
			line = "implicit"
		}
		weight := "-"
		if t.CPUWeight > 0 {
			weight = strconv.FormatUint(t.CPUWeight, 10)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", t.Name, sizeOrNone(t.Memory), weight, cpuOrNone(t.MilliCPU),
			countOrNone(int(t.Pids)), countOrNone(t.MaxCells), t.Queue, durationOrNone(t.QueueTimeout), line)
	}
	tw.Flush()
	fmt.Fprintln(w)

	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "ROUTE\tHOST\tPATH\tMETHODS\tTENANT\tPROGRAM\tMEMORY\tSWAP\tCPU\tPIDS\tTIMEOUT\tMAX_BODY\tUSER\tRESPONSE\tLINE\tCONFINEMENT")
	for _, r := range p.Routes {
		host, methods, program := r.Host, strings.Join(r.Methods, ","), r.Program
		if host == "" {
			host = "*"
		}
		if methods == "" {
			methods = "*"
		}
		if r.Dir != "" {
			program = strings.TrimSuffix(r.Dir, "/") + "/*"
		}
		if r.Fork != nil {
			program = "fork " + string(r.Fork.Runtime) + " " + r.Fork.App + " in " + r.Fork.AppDir
		}
		response := string(r.Response)
		if r.ServerTiming {
			response += ",server-timing"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\t%d\t%s\n", r.Name, host, r.PathPrefix, methods, r.Tenant, program,
			policy.FormatBytes(r.Memory), policy.FormatBytes(r.Swap), policy.FormatCPU(r.MilliCPU), r.Pids, r.Timeout,
			maxBodyString(r.MaxBody), userString(r), response, r.Line, r.Confinement)
	}
	tw.Flush()
	fmt.Fprintln(w, "\n- = not limited; cpu max = no cap; a dir route's PROGRAM/* runs the program named by the first path segment;")
	fmt.Fprintln(w, "MAX_BODY flag = neither the route nor the defaults set max_body: serve's --max-body applies; 0 = no body accepted.")
	fmt.Fprintln(w, "CONFINEMENT full = every namespace, the read-only view, private /tmp and /dev/shm, seccomp; otherwise what is relaxed.")
}

func userString(r *policy.Route) string {
	u := r.User
	s := "auto"
	switch {
	case u.Auto:
	case u.Name != "":
		s = u.Name
	default:
		s = "uid " + strconv.FormatUint(uint64(u.UID), 10)
	}
	if r.AllowRoot {
		s += " (allow_root)"
	}
	return s
}

func sizeOrNone(n int64) string {
	if n == 0 {
		return "-"
	}
	return policy.FormatBytes(n)
}

func countOrNone(n int) string {
	if n == 0 {
		return "-"
	}
	return strconv.Itoa(n)
}

func cpuOrNone(milli int64) string {
	if milli == 0 {
		return "-"
	}
	return policy.FormatCPU(milli)
}

func durationOrNone(d time.Duration) string {
	if d == 0 {
		return "-"
	}
	return d.String()
}
