package vm

import (
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
	CacheDir string    // where the kernel is kept
	KVMPath  string    // /dev/kvm; KVM is used when it opens read-write
	Forwards []Forward // host TCP ports forwarded into the guest
	Verbose  bool      // show the kernel's messages
	Init     string    // the static binary that becomes /init (os.Executable())
	Stdout   io.Writer // the guest console, less the status line
	Log      io.Writer // the runner's own messages
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
	marker, err := newMarker()
	if err != nil {
		return 0, err
	}
	spec := Spec{
		Args:    o.Args,
		Dir:     o.Dir,
		Env:     guestEnv(o.Env),
		Marker:  marker,
		Network: len(o.Forwards) > 0,
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
		KVM:       KVMUsable(o.KVMPath),
		Forwards:  o.Forwards,
		Verbose:   o.Verbose,
	}
	return Boot(ctx, m, marker, o.Timeout, o.Stdout, o.Log)
}

// Boot runs qemu for m, streams the console to stdout without the status
// line, and returns the guest's status. It kills qemu after timeout.
func Boot(ctx context.Context, m Machine, marker string, timeout time.Duration, stdout, log io.Writer) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	filter := &StatusFilter{W: stdout, Marker: marker}
	cmd := exec.CommandContext(ctx, m.QEMU, m.Command()...)
	cmd.Stdin = nil
	cmd.Stdout = filter
	cmd.Stderr = log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	cmd.WaitDelay = 5 * time.Second
	runErr := cmd.Run()
	filter.Close()
	code, found, panicked := filter.Status()
	return Verdict(code, found, panicked, ctx.Err(), timeout, runErr)
}

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

func newMarker() (string, error) {
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		return "", fmt.Errorf("make status marker: %w", err)
	}
	return "vmrun-exit-status-" + hex.EncodeToString(b) + ":", nil
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
