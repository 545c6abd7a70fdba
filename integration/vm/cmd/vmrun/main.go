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
	if len(os.Args) == 2 && os.Args[1] == vm.SystemdProgramArg {
		vm.SystemdProgram() // the program's unit in the systemd guest
	}
	self, err := os.Executable()
	if err != nil {
		fmt.Fprintf(os.Stderr, "vmrun: find own binary: %v\n", err)
		os.Exit(exitRunnerFailed)
	}
	// Signals go to the guest's program once it runs (make run: Ctrl-C is
	// cellgate's drain, SIGHUP its reload); before that they kill the VM.
	sigs := make(chan os.Signal, 4)
	signal.Notify(sigs, vm.ForwardedSignals...)
	code := run(context.Background(), sigs, os.Args[1:], self, os.Stdout, os.Stderr)
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
func run(ctx context.Context, sigs <-chan os.Signal, args []string, self string, stdout, stderr io.Writer) int {
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
	systemd := fs.Bool("systemd", false, "boot the guest's systemd as pid 1 and run PROGRAM as its service")
	verbose := fs.Bool("v", false, "show the guest kernel's messages")
	prepare := fs.Bool("prepare", false, "install qemu, fetch the kernel and settle the accelerator, then exit")
	accelFlag := fs.String("accel", "", "accelerator: auto (KVM when a KVM guest really boots, else TCG), kvm or tcg (default $CELLGATE_VM_ACCEL, else auto)")
	lifeBound := fs.Duration("kvm-boot-bound", vm.DefaultLifeBound, "with -accel auto or kvm: how long a KVM guest may stay silent before KVM is judged unusable")
	forget := fs.Bool("forget-accel", false, "forget the cached verdict that KVM is unusable here, then exit (or go on with -prepare)")
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
	accel := vm.Accel(*accelFlag)
	if *accelFlag == "" {
		if accel, err = vm.ParseAccel("CELLGATE_VM_ACCEL", os.Getenv("CELLGATE_VM_ACCEL")); err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", err)
			return 2
		}
	} else if accel, err = vm.ParseAccel("-accel", *accelFlag); err != nil {
		fmt.Fprintf(stderr, "vmrun: %v\n", err)
		return 2
	}
	if *forget {
		had, err := vm.ForgetKVMVerdict(cacheDir)
		if err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", err)
			return exitRunnerFailed
		}
		if had {
			fmt.Fprintf(stderr, "vmrun: forgot %s; the next run tries KVM again\n", vm.KVMVerdictPath(cacheDir))
		} else {
			fmt.Fprintf(stderr, "vmrun: no cached KVM verdict in %s\n", cacheDir)
		}
		if !*prepare {
			return 0
		}
	}
	opts := vm.Options{
		Dir:       wd,
		Env:       os.Environ(),
		Mem:       *mem,
		CPUs:      *cpus,
		Timeout:   *timeout,
		CacheDir:  cacheDir,
		Accel:     accel,
		KVMPath:   "/dev/kvm",
		LifeBound: *lifeBound,
		Forwards:  fwd,
		Verbose:   *verbose,
		Init:      self,
		Stdout:    stdout,
		Log:       stderr,
		Signals:   sigs,
		Systemd:   *systemd,
	}
	if *prepare {
		ctx, cancel := context.WithTimeout(ctx, prepareTimeout)
		defer cancel()
		qemu, err := vm.EnsureQEMU(ctx, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", err)
			return exitRunnerFailed
		}
		k, err := vm.EnsureKernel(ctx, cacheDir, stderr)
		if err != nil {
			fmt.Fprintf(stderr, "vmrun: %v\n", err)
			return exitRunnerFailed
		}
		if c := opts.FirstChoice(qemu); !c.KVM {
			fmt.Fprintf(stderr, "vmrun: accelerator: %s\n", c)
			fmt.Fprintf(stderr, "vmrun: ready: %s, kernel %s\n", vm.QEMUBinary, k.Package)
			return 0
		}
		// Settle whether KVM works now, so that no test run pays the
		// trial: boot /bin/true once and say what was used.
		opts.Args = []string{"/bin/true"}
		opts.Dir = "/"
		opts.Forwards = nil
		opts.SayAccel = true
		opts.Timeout = min(opts.Timeout, prepareTimeout)
		if code, err := vm.Run(ctx, opts); err != nil || code != 0 {
			fmt.Fprintf(stderr, "vmrun: FAIL: booting /bin/true in the VM: status %d, %v\n", code, err)
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
	opts.Args = append([]string{prog}, fs.Args()[1:]...)
	code, err := vm.Run(ctx, opts)
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
