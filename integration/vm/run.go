package vm

import (
	"cmp"
	"context"
	"crypto/rand"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"
)

// Options describe one run of a program in the VM.
type Options struct {
	Args     []string // program and arguments; Args[0] is a host path
	Dir      string   // working directory (the same path in the guest)
	Env      []string // environment; TMPDIR is replaced by GuestTmp
	Mem      string   // guest memory, qemu -m syntax (2G)
	CPUs     int      // guest CPUs
	Timeout  time.Duration
	CacheDir string // where the kernel (and the cached KVM verdict) is kept
	Accel    Accel  // how the accelerator is chosen ("" = auto)
	KVMPath  string // /dev/kvm
	// LifeBound is how long a KVM guest may stay silent before KVM is
	// judged unable to start it (DefaultLifeBound).
	LifeBound time.Duration
	// SayAccel prints the accelerator used and why (a fallback from KVM to
	// TCG is always said).
	SayAccel bool
	Forwards []Forward // host TCP ports forwarded into the guest
	Verbose  bool      // show the kernel's messages
	Init     string    // the static binary that becomes /init (os.Executable())
	Stdout   io.Writer // the guest console, less the status line
	Log      io.Writer // the runner's own messages
	// Signals, when set, are passed to the guest's program once the guest
	// lives (SIGHUP any number of times; a second SIGINT or SIGTERM kills
	// the VM); before that, any of them kills the VM.
	Signals <-chan os.Signal
	// Systemd boots the guest's systemd as pid 1 and runs the program as a
	// service of it (systemd.go).
	Systemd bool
}

// Run boots the VM, runs the program and returns its exit status. Any
// outcome other than a status line from the guest (a panic, a timeout, qemu
// failing, the guest's setup failing) is an error.
func Run(ctx context.Context, o Options) (int, error) {
	if len(o.Args) == 0 {
		return 0, errors.New("run in VM: no program given")
	}
	// The timeout bounds the whole run, a first download included.
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	if err := checkStatic(o.Init); err != nil {
		return 0, err
	}
	qemu, err := EnsureQEMU(ctx, o.Log)
	if err != nil {
		return 0, timedOut(ctx, o.Timeout, err)
	}
	kernel, err := EnsureKernel(ctx, o.CacheDir, o.Log)
	if err != nil {
		return 0, timedOut(ctx, o.Timeout, err)
	}
	marker, err := newMarker("vmrun-exit-status-", ":")
	if err != nil {
		return 0, err
	}
	alive, err := newMarker("vmrun-guest-alive-", "")
	if err != nil {
		return 0, err
	}
	spec := Spec{
		Args:    o.Args,
		Dir:     o.Dir,
		Env:     guestEnv(o.Env),
		Marker:  marker,
		Alive:   alive,
		Network: len(o.Forwards) > 0,
		Control: o.Signals != nil,
		Systemd: o.Systemd,
	}
	initrd, err := os.CreateTemp("", "vmrun-initramfs-*.cpio")
	if err != nil {
		return 0, fmt.Errorf("create initramfs file: %w", err)
	}
	defer os.Remove(initrd.Name())
	err = BuildInitramfs(initrd, o.Init, kernel.Modules, &spec)
	if cerr := initrd.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write %s: %w", initrd.Name(), cerr)
	}
	if err != nil {
		return 0, err
	}
	m := Machine{
		QEMU:      qemu,
		Kernel:    kernel.Image,
		Initramfs: initrd.Name(),
		MemSize:   o.Mem,
		CPUs:      o.CPUs,
		Forwards:  o.Forwards,
		Verbose:   o.Verbose,
	}
	if o.Signals != nil {
		dir, err := os.MkdirTemp("", "vmrun-control-")
		if err != nil {
			return 0, fmt.Errorf("make control socket directory: %w", err)
		}
		defer os.RemoveAll(dir)
		m.Control = filepath.Join(dir, "control.sock")
	}
	b := BootOptions{Marker: marker, Alive: alive, Timeout: o.Timeout, Stdout: o.Stdout, Log: o.Log, Signals: o.Signals}
	choice := o.FirstChoice(qemu)
	if !choice.KVM {
		o.say(choice)
		return Boot(ctx, m, b)
	}
	m.KVM = true
	b.LifeBound = cmp.Or(o.LifeBound, DefaultLifeBound)
	code, err := Boot(ctx, m, b)
	var noLife *NoLifeError
	if !errors.As(err, &noLife) {
		o.say(choice)
		return code, err
	}
	if o.Accel == AccelKVM {
		o.Log.Write(noLife.Stderr)
		return 0, fmt.Errorf("KVM could not start the guest (forced by -accel kvm; -accel auto falls back to TCG): %w", err)
	}
	if werr := writeKVMVerdict(o.CacheDir, kvmVerdictKey(qemu), noLife.Reason); werr != nil {
		fmt.Fprintf(o.Log, "vmrun: %v\n", werr)
	}
	fmt.Fprintf(o.Log, "vmrun: KVM unusable here (%s); using TCG\n", noLife.Reason)
	m.KVM = false
	b.LifeBound = 0
	return Boot(ctx, m, b)
}

// FirstChoice returns the accelerator a run with o tries first, with qemu
// as the emulator, without booting anything.
func (o Options) FirstChoice(qemu string) Choice {
	return choose(o.Accel,
		func() error { return openDevice(o.KVMPath) },
		func() string { return readKVMVerdict(o.CacheDir, kvmVerdictKey(qemu)) })
}

// say prints the accelerator choice when asked to.
func (o Options) say(c Choice) {
	if o.SayAccel {
		fmt.Fprintf(o.Log, "vmrun: accelerator: %s\n", c)
	}
}

// BootOptions are what one qemu boot needs besides the Machine.
type BootOptions struct {
	Marker  string // the status line's prefix (Spec.Marker)
	Alive   string // the guest's sign of life (Spec.Alive)
	Timeout time.Duration
	// LifeBound, when set, puts the accelerator on trial: a guest that
	// shows no sign of life within it, or a qemu that exits before the
	// guest does, ends the boot with a *NoLifeError. qemu's stderr is held
	// meanwhile and shown only once the guest lives (or in the error).
	LifeBound time.Duration
	// Signals are forwarded to the guest's program through m.Control (see
	// Options.Signals).
	Signals <-chan os.Signal
	Stdout  io.Writer
	Log     io.Writer
}

// Boot runs qemu for m, streams the console to stdout without the status
// line, and returns the guest's status. It kills qemu after the timeout.
func Boot(ctx context.Context, m Machine, b BootOptions) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, b.Timeout)
	defer cancel()
	// killVM ends qemu early: a guest silent past the life bound, or an
	// interrupt.
	vmCtx, killVM := context.WithCancelCause(ctx)
	defer killVM(nil)
	// qemu's stderr and the runner's own lines share the log.
	b.Log = &lockedWriter{w: b.Log}
	stderr := &heldWriter{w: b.Log, max: 64 << 10}
	lived := make(chan struct{})
	filter := &StatusFilter{W: b.Stdout, Marker: b.Marker, Alive: b.Alive, OnAlive: func() { close(lived) }}
	cmd := exec.CommandContext(vmCtx, m.QEMU, m.Command()...)
	cmd.Stdin = nil
	cmd.Stdout = filter
	cmd.Stderr = b.Log
	if b.LifeBound > 0 {
		cmd.Stderr = stderr
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		return 0, fmt.Errorf("start %s: %w", m.QEMU, err)
	}
	silent := errors.New("silent")
	if b.LifeBound > 0 {
		timer := time.AfterFunc(b.LifeBound, func() { killVM(silent) })
		defer timer.Stop()
		go func() {
			select {
			case <-lived:
				timer.Stop()
				stderr.release()
			case <-vmCtx.Done():
			}
		}()
	}
	forwarded := make(chan struct{})
	if b.Signals != nil {
		go func() {
			defer close(forwarded)
			forwardToGuest(vmCtx, killVM, m.Control, filter, b.Signals, b.Log)
		}()
	} else {
		close(forwarded)
	}
	runErr := cmd.Wait()
	filter.Close()
	// Why qemu was ended early, if it was; then stop the forwarder.
	cause := context.Cause(vmCtx)
	killVM(errQEMUExited)
	<-forwarded
	var interrupted *interruptError
	if errors.As(cause, &interrupted) {
		return 0, fmt.Errorf("interrupted; VM killed: %w", interrupted)
	}
	if b.LifeBound > 0 && !filter.SawLife() && ctx.Err() == nil {
		if errors.Is(cause, silent) {
			return 0, &NoLifeError{Reason: fmt.Sprintf("the guest printed nothing within %v", b.LifeBound), Stderr: stderr.bytes()}
		}
		reason := "qemu exited before the guest started"
		if runErr != nil {
			reason = "qemu failed before the guest started: " + runErr.Error()
			if strings.Contains(runErr.Error(), "aborted") {
				reason = "qemu aborted"
			}
		}
		if r := qemuReason(stderr.bytes()); r != "" {
			reason += ": " + r
		}
		return 0, &NoLifeError{Reason: reason, Stderr: stderr.bytes()}
	}
	stderr.release()
	code, found, panicked := filter.Status()
	return Verdict(code, found, panicked, ctx.Err(), b.Timeout, runErr)
}

// lockedWriter serializes writes to w.
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// errQEMUExited ends a boot's helpers once qemu has exited.
var errQEMUExited = errors.New("qemu exited")

// Verdict turns what was seen of a boot into the runner's result: the
// guest's status when it printed one, otherwise an error saying why not.
func Verdict(code int, found, panicked bool, ctxErr error, timeout time.Duration, qemuErr error) (int, error) {
	switch {
	case errors.Is(ctxErr, context.DeadlineExceeded):
		return 0, fmt.Errorf("VM timed out after %v and was killed (raise -timeout)", timeout)
	case ctxErr != nil:
		return 0, fmt.Errorf("interrupted; VM killed: %w", ctxErr)
	case found:
		return code, nil
	case panicked:
		return 0, fmt.Errorf("guest kernel panicked before the program's exit status (see the console output above)")
	case qemuErr != nil:
		return 0, fmt.Errorf("qemu failed before the guest printed an exit status: %w", qemuErr)
	default:
		return 0, errors.New("guest powered off without printing an exit status (see the console output above)")
	}
}

// timedOut says so when err came from ctx's deadline.
func timedOut(ctx context.Context, timeout time.Duration, err error) error {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		return fmt.Errorf("timed out after %v while preparing the VM (raise -timeout): %w", timeout, err)
	}
	return err
}

// guestEnv returns env with TMPDIR pointing at the guest's writable tmpfs.
func guestEnv(env []string) []string {
	out := make([]string, 0, len(env)+1)
	for _, kv := range env {
		if !strings.HasPrefix(kv, "TMPDIR=") {
			out = append(out, kv)
		}
	}
	return append(out, "TMPDIR="+GuestTmp)
}

// newMarker returns prefix, 16 random hex digits and suffix: a console
// line no program prints by chance.
func newMarker(prefix, suffix string) (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make console marker: %w", err)
	}
	return prefix + hex.EncodeToString(b) + suffix, nil
}

// checkStatic makes sure the init binary can run in an initramfs without
// libc.
func checkStatic(p string) error {
	f, err := elf.Open(p)
	if err != nil {
		return fmt.Errorf("open init binary %s: %w", p, err)
	}
	defer f.Close()
	for _, prog := range f.Progs {
		if prog.Type == elf.PT_INTERP {
			return fmt.Errorf("init binary %s is dynamically linked: build vmrun with CGO_ENABLED=0", p)
		}
	}
	return nil
}

// BuildInitramfs writes the guest's initramfs: init as /init, the modules
// the guest needs (from the module tree modDir) and the spec, whose Modules
// it fills in.
func BuildInitramfs(w io.Writer, init, modDir string, spec *Spec) error {
	initData, err := os.ReadFile(init)
	if err != nil {
		return fmt.Errorf("read init binary %s: %w", init, err)
	}
	order, err := moduleOrder(modDir)
	if err != nil {
		return err
	}
	files := []File{
		{Name: "dev", Mode: ModeDir | 0o755},
		{Name: "dev/console", Mode: ModeCharDev | 0o600, Major: 5, Minor: 1},
		{Name: modulesDir, Mode: ModeDir | 0o755},
		{Name: "init", Mode: ModeRegular | 0o755, Data: initData},
	}
	spec.Modules = nil
	for _, p := range order {
		data, err := os.ReadFile(filepath.Join(modDir, p))
		if err != nil {
			return fmt.Errorf("read module %s: %w", filepath.Join(modDir, p), err)
		}
		name := filepath.Base(p)
		spec.Modules = append(spec.Modules, name)
		files = append(files, File{Name: modulesDir + "/" + name, Mode: ModeRegular | 0o644, Data: data})
	}
	js, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	files = append(files, File{Name: SpecPath, Mode: ModeRegular | 0o644, Data: js})
	return WriteInitramfs(w, files)
}

// moduleOrder returns the module files (relative to modDir) the guest loads,
// dependencies first. It uses modules.dep when the tree has one (an
// installed kernel), else the modules' own .modinfo (Debian's package).
func moduleOrder(modDir string) ([]string, error) {
	builtin := map[string]bool{}
	if f, err := os.Open(filepath.Join(modDir, "modules.builtin")); err == nil {
		builtin, err = ParseModulesBuiltin(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	}
	var deps ModuleDeps
	if f, err := os.Open(filepath.Join(modDir, "modules.dep")); err == nil {
		deps, err = ParseModulesDep(f)
		f.Close()
		if err != nil {
			return nil, err
		}
	} else {
		b, err := os.ReadFile(filepath.Join(modDir, "modules.order"))
		if err != nil {
			return nil, fmt.Errorf("read module list: %w (the kernel package is incomplete: remove the cache dir)", err)
		}
		deps, err = ModinfoDeps(strings.Fields(string(b)), GuestModules, func(p string) ([]byte, error) {
			return os.ReadFile(filepath.Join(modDir, p))
		})
		if err != nil {
			return nil, err
		}
	}
	return deps.LoadOrder(GuestModules, builtin)
}
