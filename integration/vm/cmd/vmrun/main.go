// Command vmrun runs a program in a QEMU microVM on a Debian kernel with
// cgroup v2, the host's root filesystem shared read-only, and exits with the
// program's status. It is meant for `go test -exec`:
//
//	go test -exec "bin/vmrun -mem 2G" ./integration/
//
// Flags come before the program; everything after it is passed through.
// Build it with CGO_ENABLED=0: the same binary is the guest's /init.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/cellgate/cellgate/integration/vm"
)

// exitRunnerFailed is the status for a run that produced no guest status.
const exitRunnerFailed = 125

// prepareTimeout bounds -prepare (an apt-get update, install and download).
const prepareTimeout = 15 * time.Minute

func main() {
	if os.Getpid() == 1 {
		vm.Guest()
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: find own binary: %v\n", err)
		os.Exit(exitRunnerFailed)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], self, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

type forwards []vm.Forward

func (f *forwards) String() string { return fmt.Sprint(*f) }
func (f *forwards) Set(s string) error {
	fw, err := vm.ParseForward(s)
	if err != nil {
		return err
	}
	*f = append(*f, fw)
	return nil
}

// run is vmrun with its arguments; self is the static binary that becomes
// the guest's /init.
func run(ctx context.Context, args []string, self string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("vmrun", flag.ContinueOnError)
	fs.SetOutput(stderr)
	fs.Usage = func() {
		fmt.Fprintf(fs.Output(), "usage: vmrun [flags] PROGRAM [ARGS...]\n       vmrun -prepare\n")
		fs.PrintDefaults()
	}
	mem := fs.String("mem", "2G", "guest memory (qemu -m syntax)")
	cpus := fs.Int("smp", 2, "guest CPUs")
	timeout := fs.Duration("timeout", 10*time.Minute, "kill the VM and fail after this long")
	cache := fs.String("cache", "", "kernel cache directory (default $CELLGATE_VM_CACHE, else <repo>/.cache/vm)")
	verbose := fs.Bool("v", false, "show the guest kernel's messages")
	prepare := fs.Bool("prepare", false, "install qemu and fetch the kernel, then exit")
	var fwd forwards
	fs.Var(&fwd, "forward", "forward a host TCP port to the guest, HOSTIP:HOSTPORT:GUESTPORT (repeatable)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	wd, err := os.Getwd()
	if err != nil {
		fmt.Fprintf(stderr, "vmrun: working directory: %v\n", err)
		return exitRunnerFailed
	}
	cacheDir, err := vm.CacheDir(*cache, os.Getenv("CELLGATE_VM_CACHE"), wd)
	if err != nil {
		fmt.Fprintf(stderr, "vmrun: %v\n", err)
		return exitRunnerFailed
	}
	if *prepare {
		ctx, cancel := context.WithTimeout(ctx, prepareTimeout)
		defer cancel()
		if _, err := vm.EnsureQEMU(ctx, stderr); err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", err)
			return exitRunnerFailed
		}
		k, err := vm.EnsureKernel(ctx, cacheDir, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", err)
			return exitRunnerFailed
		}
		fmt.Fprintf(stderr, "vmrun: ready: %s, kernel %s\n", vm.QEMUBinary, k.Package)
		return 0
	}
	if fs.NArg() == 0 {
		fs.Usage()
		return 2
	}
	prog, err := programPath(fs.Arg(0), wd)
	if err != nil {
		fmt.Fprintf(stderr, "vmrun: %v\n", err)
		return exitRunnerFailed
	}
	code, err := vm.Run(ctx, vm.Options{
		Args:     append([]string{prog}, fs.Args()[1:]...),
		Dir:      wd,
		Env:      os.Environ(),
		Mem:      *mem,
		CPUs:     *cpus,
		Timeout:  *timeout,
		CacheDir: cacheDir,
		KVMPath:  "/dev/kvm",
		Forwards: fwd,
		Verbose:  *verbose,
		Init:     self,
		Stdout:   stdout,
		Log:      stderr,
	})
	if err != nil {
		fmt.Fprintf(stderr, "vmrun: FAIL: %v\n", err)
		return exitRunnerFailed
	}
	return code
}

// programPath makes the program's path absolute, looking a bare name up in
// PATH, so that the guest finds it in the shared root.
func programPath(p, wd string) (string, error) {
	if !strings.Contains(p, "/") {
		lp, err := exec.LookPath(p)
		if err != nil {
			return "", fmt.Errorf("find program %s: %w", p, err)
		}
		p = lp
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(wd, p)
	}
	return p, nil
}
