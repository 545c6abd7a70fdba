// Command cellgate is a reverse proxy that runs every request in its own
// short-lived cgroup v2 cell. This file only dispatches to the subcommands,
// one file each; each subcommand turns its flags and CELLGATE_* environment
// into one Config, validates it once, and wires the packages together.
package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"sort"
	"strings"

	"github.com/cellgate/cellgate/confine"
)

// Exit statuses shared by the subcommands.
const (
	exitOK    = 0
	exitUsage = 2 // bad flags, values or environment
)

// command is one subcommand.
type command struct {
	summary string
	main    func(ctx context.Context, args []string, stdio stdio) int
}

// stdio is the command's standard streams and environment.
type stdio struct {
	in, out, err *os.File
	environ      []string // KEY=value, for CELLGATE_* settings
}

var commands = map[string]command{
	"run":     {"run one command in a cell and print what it used", runMain},
	"serve":   {"serve HTTP, every request in its own cell", serveMain},
	"doctor":  {"check this machine for what cellgate needs", doctorMain},
	"check":   {"validate a policy file and print its routes and limits", checkMain},
	"reload":  {"reload a running serve's policy and wait for the verdict", reloadMain},
	"version": {"print the version, commit and Go version", versionMain},
}

func main() {
	// Started as a cell's init by the sandbox (argv[0] set, the launch
	// message on fd 3): confine the cell and run its program, nothing else.
	if len(os.Args) > 0 && os.Args[0] == confine.InitArg0 {
		os.Exit(confine.InitMain(os.Args[1:]))
	}
	std := stdio{in: os.Stdin, out: os.Stdout, err: os.Stderr, environ: os.Environ()}
	os.Exit(dispatch(context.Background(), os.Args[1:], std))
}

func dispatch(ctx context.Context, args []string, std stdio) int {
	// Help asked for goes to stdout with status 0; help for want of a
	// command to stderr with status 2, as every subcommand's -h and its
	// bad flags.
	if len(args) == 0 {
		usage(std.err)
		return exitUsage
	}
	if args[0] == "-h" || args[0] == "--help" || args[0] == "help" {
		usage(std.out)
		return exitOK
	}
	if args[0] == "--version" || args[0] == "-version" {
		return versionMain(ctx, args[1:], std)
	}
	c, ok := commands[args[0]]
	if !ok {
		fmt.Fprintf(std.err, "cellgate: unknown command %q (want one of %s)\n", args[0], strings.Join(names(), ", "))
		return exitUsage
	}
	for _, w := range unknownEnv(std.environ) {
		fmt.Fprintf(std.err, "cellgate: warning: %s\n", w)
	}
	return c.main(ctx, args[1:], std)
}

func names() []string {
	var n []string
	for k := range commands {
		n = append(n, k)
	}
	sort.Strings(n)
	return n
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: cellgate COMMAND [flags]")
	fmt.Fprintln(w)
	for _, n := range names() {
		fmt.Fprintf(w, "  %-8s %s\n", n, commands[n].summary)
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "Run cellgate COMMAND -h for its flags.")
}
