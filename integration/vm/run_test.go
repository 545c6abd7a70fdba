package vm

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/integration/vm/internal/vmtest"
)

func TestMain(m *testing.M) { vmtest.Main(m, fakeQEMU) }

// fakeQEMU reads the spec from the -initrd it is given, as the guest would,
// and behaves as mode says.
func fakeQEMU(mode string, args []string) int {
	b, err := vmtest.Initrd(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	spec, err := SpecFromInitramfs(b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	accel := args[slices.Index(args, "-accel")+1]
	if log := os.Getenv(fakeQEMULogEnv); log != "" {
		f, err := os.OpenFile(log, os.O_APPEND|os.O_CREATE|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
		fmt.Fprintln(f, accel)
		f.Close()
	}
	kvm := accel == "kvm"
	switch {
	case mode == "kvm-abort" && kvm:
		// What a broken nested KVM does: qemu aborts on an assertion.
		err := syscall.Exec("/bin/sh", []string{"sh", "-c", `echo "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69" >&2
echo "qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion 'ret == cpu->kvm_msr_buf->nmsrs' failed." >&2
kill -ABRT $$`}, os.Environ())
		fmt.Fprintln(os.Stderr, "fake qemu: exec sh:", err)
		return 1
	case mode == "kvm-silent" && kvm:
		// The other broken case: the guest spins and never prints.
		time.Sleep(time.Hour)
		return 1
	case mode == "kvm-abort" || mode == "kvm-silent":
		mode = "echo"
	case mode == "kvm-fail" && kvm:
		mode = "fail"
	}
	fmt.Println("[    0.000000] Linux version 6.1.0-fake")
	if mode != "crash" {
		fmt.Println(spec.Alive)
	}
	switch mode {
	case "control", "silent-control":
		// Play qemu's control socket and the guest's /init: each signal
		// line is answered on the console; SIGTERM ends the program
		// (silent-control never ends).
		i := slices.IndexFunc(args, func(a string) bool { return strings.HasPrefix(a, "socket,id=ctl,") })
		if i < 0 {
			fmt.Fprintln(os.Stderr, "fake qemu: no control socket chardev")
			return 1
		}
		_, path, _ := strings.Cut(args[i], ",path=")
		ln, err := net.Listen("unix", path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
		fmt.Println("ready")
		if mode == "silent-control" {
			time.Sleep(time.Hour)
		}
		c, err := ln.Accept()
		if err != nil {
			fmt.Fprintln(os.Stderr, "fake qemu:", err)
			return 1
		}
		sc := bufio.NewScanner(c)
		for sc.Scan() {
			sig, err := parseControlLine(sc.Text())
			fmt.Printf("program got %v (%v)\n", sig, err)
			if sig == syscall.SIGTERM {
				break
			}
		}
		fmt.Printf("%s 0\n", spec.Marker)
	case "echo":
		// The guest's view of what it was asked to run, then success.
		fmt.Printf("args=%q dir=%s tmpdir=%s accel=%s\n", spec.Args, spec.Dir, envValue(spec.Env, "TMPDIR"), args[slices.Index(args, "-accel")+1])
		fmt.Printf("%s 0\n", spec.Marker)
	case "fail":
		fmt.Println("--- FAIL: TestSomething")
		fmt.Printf("%s 1\n", spec.Marker)
	case "panic":
		fmt.Println("[    1.234567] Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100")
	case "nostatus":
		fmt.Println("PASS")
	case "spoof":
		fmt.Println("PASS\nvmrun-exit-status-0000000000000000: 0")
	case "hang":
		fmt.Println("PASS")
		time.Sleep(time.Hour)
	case "crash":
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: -kernel: could not load kernel")
		return 1
	default:
		fmt.Fprintf(os.Stderr, "fake qemu: unknown mode %q\n", mode)
		return 1
	}
	fmt.Println("[    3.000000] reboot: Power down")
	return 0
}

// fakeQEMULogEnv names a file to which the fake qemu appends the -accel
// of each boot.
const fakeQEMULogEnv = "VMTEST_QEMU_LOG"

func envValue(env []string, key string) string {
	for _, kv := range env {
		if v, ok := strings.CutPrefix(kv, key+"="); ok {
			return v
		}
	}
	return ""
}

func TestRunWithFakeQEMU(t *testing.T) {
	for _, tc := range []struct {
		mode     string
		timeout  time.Duration
		wantCode int
		wantErr  string // "" for success
		wantOut  string
	}{
		{mode: "echo", wantOut: `args=["/bin/prog" "-test.v"] dir=/work/dir tmpdir=/run/vmrun-tmp accel=tcg,thread=multi`},
		{mode: "fail", wantCode: 1, wantOut: "--- FAIL: TestSomething\n"},
		{mode: "panic", wantErr: "panicked", wantOut: "Kernel panic"},
		{mode: "nostatus", wantErr: "without printing an exit status", wantOut: "PASS\n"},
		{mode: "spoof", wantErr: "without printing an exit status"},
		{mode: "hang", timeout: 2 * time.Second, wantErr: "timed out"},
		{mode: "crash", wantErr: "qemu failed"},
	} {
		t.Run(tc.mode, func(t *testing.T) {
			vmtest.UseFakeQEMU(t, QEMUBinary, tc.mode)
			timeout := tc.timeout
			if timeout == 0 {
				timeout = time.Minute
			}
			var out, log bytes.Buffer
			code, err := Run(context.Background(), Options{
				Args:     []string{"/bin/prog", "-test.v"},
				Dir:      "/work/dir",
				Env:      []string{"HOME=/root", "TMPDIR=/tmp/host"},
				Mem:      "2G",
				CPUs:     2,
				Timeout:  timeout,
				CacheDir: vmtest.KernelCache(t, GuestModules),
				KVMPath:  filepath.Join(t.TempDir(), "no-kvm"),
				Init:     vmtest.StaticInit(t),
				Stdout:   &out,
				Log:      &log,
			})
			if tc.wantErr == "" {
				if err != nil || code != tc.wantCode {
					t.Errorf("Run = %d, %v; want %d, nil\nlog: %s", code, err, tc.wantCode, log.String())
				}
			} else if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("Run = %d, %v; want an error containing %q\nlog: %s", code, err, tc.wantErr, log.String())
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("output %q lacks %q", out.String(), tc.wantOut)
			}
			if strings.Contains(out.String(), "vmrun-exit-status-") && tc.mode != "spoof" {
				t.Errorf("status line leaked into the output: %q", out.String())
			}
			if err == nil && strings.Contains(out.String(), "Power down") {
				t.Errorf("output after the status line was not dropped: %q", out.String())
			}
		})
	}
}

func TestRunRejectsDynamicInit(t *testing.T) {
	// An ELF header followed by one program header: PT_INTERP, as a
	// binary linked against libc has.
	var b bytes.Buffer
	h := elf.Header64{
		Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Phoff: 64, Ehsize: 64, Phentsize: 56, Phnum: 1,
	}
	copy(h.Ident[:], "\x7fELF\x02\x01\x01")
	binary.Write(&b, binary.LittleEndian, h)
	binary.Write(&b, binary.LittleEndian, elf.Prog64{Type: uint32(elf.PT_INTERP)})
	dyn := filepath.Join(t.TempDir(), "dynamic")
	if err := os.WriteFile(dyn, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	_, err := Run(context.Background(), Options{Args: []string{"/bin/true"}, Init: dyn, Timeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "CGO_ENABLED=0") {
		t.Errorf("Run with a dynamic init: %v, want an error telling to build with CGO_ENABLED=0", err)
	}
}

func TestGuestEnv(t *testing.T) {
	got := guestEnv([]string{"A=1", "TMPDIR=/tmp/x", "B=2", "TMPDIR=/y"})
	want := []string{"A=1", "B=2", "TMPDIR=" + GuestTmp}
	if !slices.Equal(got, want) {
		t.Errorf("guestEnv = %q, want %q", got, want)
	}
}

func TestCacheDir(t *testing.T) {
	repo := t.TempDir()
	sub := filepath.Join(repo, "integration", "vm")
	if err := os.MkdirAll(sub, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(repo, "go.mod"), []byte("module x\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, flag, env, wd, want string
	}{
		{"flag wins", "/c/flag", "/c/env", sub, "/c/flag"},
		{"env next", "", "/c/env", sub, "/c/env"},
		{"repository root from a subdirectory", "", "", sub, filepath.Join(repo, ".cache", "vm")},
	} {
		t.Run(tc.name, func(t *testing.T) {
			got, err := CacheDir(tc.flag, tc.env, tc.wd)
			if err != nil || got != tc.want {
				t.Errorf("CacheDir = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
	if _, err := CacheDir("", "", "/"); err == nil {
		t.Error("CacheDir outside any repository succeeded, want an error")
	}
}

func TestParseImageDepends(t *testing.T) {
	rec := "Package: linux-image-amd64\nVersion: 6.1.172-1\nDepends: linux-image-6.1.0-48-amd64 (= 6.1.172-1)\n"
	got, err := parseImageDepends([]byte(rec))
	if err != nil || got != "linux-image-6.1.0-48-amd64" {
		t.Errorf("parseImageDepends = %q, %v; want linux-image-6.1.0-48-amd64", got, err)
	}
	if _, err := parseImageDepends([]byte("Package: linux-image-amd64\nDepends: initramfs-tools\n")); err == nil {
		t.Error("parseImageDepends without an image dependency succeeded, want an error")
	}
}

// TestEnsureKernelAfterUpdate: package lists older than the mirror name an
// image package the mirror no longer serves; after the update the image
// package is asked for again. Before, the download was retried with the
// stale name, and failed again.
func TestEnsureKernelAfterUpdate(t *testing.T) {
	if _, err := exec.LookPath("dpkg-deb"); err != nil {
		t.Skip("dpkg-deb not installed")
	}
	fake := t.TempDir()
	updated := filepath.Join(fake, "updated")
	script := func(name, body string) {
		if err := os.WriteFile(filepath.Join(fake, name), []byte("#!/bin/sh\n"+body), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	// Before the update the lists name -48, which the mirror no longer
	// has; after it, -57, which it has.
	script("apt-cache", `abi=48; [ -e `+updated+` ] && abi=57
printf 'Package: linux-image-amd64\nDepends: linux-image-6.1.0-%s-amd64 (= 1)\n' $abi
`)
	script("apt-get", `case "$1" in
update) touch `+updated+`;;
download)
	[ "$2" = linux-image-6.1.0-57-amd64 ] || { echo "E: $2 not found" >&2; exit 100; }
	tree=$(mktemp -d)
	mkdir -p $tree/DEBIAN $tree/boot $tree/lib/modules/6.1.0-57-amd64
	printf 'Package: %s\nVersion: 1\nArchitecture: amd64\nMaintainer: t <t@t>\nDescription: t\n' "$2" > $tree/DEBIAN/control
	: > $tree/boot/vmlinuz-6.1.0-57-amd64
	: > $tree/lib/modules/6.1.0-57-amd64/modules.order
	dpkg-deb --root-owner-group --build $tree "$2"_1_amd64.deb >/dev/null;;
*) exit 2;;
esac
`)
	t.Setenv("PATH", fake+string(os.PathListSeparator)+os.Getenv("PATH"))
	var log strings.Builder
	k, err := EnsureKernel(t.Context(), t.TempDir(), &log)
	if err != nil || k.Package != "linux-image-6.1.0-57-amd64" {
		t.Fatalf("EnsureKernel = %+v, %v; want linux-image-6.1.0-57-amd64 after the update\n%s", k, err, log.String())
	}
}
