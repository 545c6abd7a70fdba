package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/integration/vm"
	"github.com/cellgate/cellgate/integration/vm/internal/vmtest"
)

func TestMain(m *testing.M) { vmtest.Main(m, fakeQEMU) }

// fakeQEMU plays the guest: it finds the spec in the -initrd it is given
// and answers as mode says ("status:N", "panic" or "echo").
func fakeQEMU(mode string, args []string) int {
	b, err := vmtest.Initrd(args)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	spec, err := vm.SpecFromInitramfs(b)
	if err != nil {
		fmt.Fprintln(os.Stderr, "fake qemu:", err)
		return 1
	}
	var code int
	if mode == "kvm-abort" && args[slices.Index(args, "-accel")+1] == "kvm" {
		fmt.Fprintln(os.Stderr, "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69")
		return 134
	}
	fmt.Println(spec.Alive)
	switch {
	case mode == "panic":
		fmt.Println("Kernel panic - not syncing: Attempted to kill init!")
		return 0
	case mode == "echo":
		fmt.Printf("mem=%s smp=%s args=%q\n", args[slices.Index(args, "-m")+1], args[slices.Index(args, "-smp")+1], spec.Args)
	case strings.HasPrefix(mode, "status:"):
		fmt.Sscanf(mode, "status:%d", &code)
	}
	fmt.Printf("%s %d\n", spec.Marker, code)
	return 0
}

// setup puts the fake qemu on PATH and returns a kernel cache whose guest
// modules are all built in, and a static "init".
func setup(t *testing.T, mode string) (cache, init string) {
	t.Helper()
	vmtest.UseFakeQEMU(t, vm.QEMUBinary, mode)
	return vmtest.KernelCache(t, vm.GuestModules), vmtest.StaticInit(t)
}

func TestRunExitStatus(t *testing.T) {
	for _, tc := range []struct {
		name     string
		mode     string
		args     []string
		wantCode int
		env      string // CELLGATE_VM_ACCEL
		wantOut  string
		wantErr  string
	}{
		{name: "guest passes", mode: "status:0", args: []string{"/bin/true"}, wantCode: 0},
		{name: "guest fails", mode: "status:1", args: []string{"/bin/false"}, wantCode: 1},
		{name: "guest status 2 (go test's FAIL on a panic)", mode: "status:2", args: []string{"/x.test"}, wantCode: 2},
		{name: "guest kernel panic", mode: "panic", args: []string{"/x.test"}, wantCode: exitRunnerFailed, wantErr: "vmrun: FAIL: guest kernel panicked"},
		{
			name:     "flags before the program, the rest passed through",
			mode:     "echo",
			args:     []string{"-mem", "3G", "-smp", "1", "-timeout", "1m", "/tmp/x.test", "-test.v", "-mem", "x"},
			wantCode: 0,
			wantOut:  `mem=3G smp=1 args=["/tmp/x.test" "-test.v" "-mem" "x"]`,
		},
		{name: "no program", mode: "status:0", args: nil, wantCode: 2, wantErr: "usage: vmrun"},
		{name: "forced kvm that fails", mode: "kvm-abort", args: []string{"-accel", "kvm", "/bin/true"}, wantCode: exitRunnerFailed,
			wantErr: "vmrun: FAIL: KVM could not start the guest (forced by -accel kvm; -accel auto falls back to TCG): qemu failed before the guest started: exit status 134: failed to set MSR 0x10a to 0x69"},
		{name: "forced kvm from the environment", mode: "kvm-abort", env: "kvm", args: []string{"/bin/true"}, wantCode: exitRunnerFailed, wantErr: "vmrun: FAIL: KVM could not start"},
		{name: "the flag wins over the environment", mode: "kvm-abort", env: "kvm", args: []string{"-accel", "tcg", "/bin/true"}, wantCode: 0},
		{name: "bad -accel", mode: "status:0", args: []string{"-accel", "hvf", "/bin/true"}, wantCode: 2, wantErr: `-accel="hvf": want auto, kvm or tcg`},
		{name: "bad CELLGATE_VM_ACCEL", mode: "status:0", env: "on", args: []string{"/bin/true"}, wantCode: 2, wantErr: `CELLGATE_VM_ACCEL="on"`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache, init := setup(t, tc.mode)
			t.Setenv("CELLGATE_VM_ACCEL", tc.env)
			var out, errOut bytes.Buffer
			args := append([]string{"-cache", cache}, tc.args...)
			code := run(context.Background(), nil, args, init, &out, &errOut)
			if code != tc.wantCode {
				t.Errorf("vmrun %q exited %d, want %d\nstdout: %s\nstderr: %s", args, code, tc.wantCode, out.String(), errOut.String())
			}
			if !strings.Contains(out.String(), tc.wantOut) {
				t.Errorf("stdout %q lacks %q", out.String(), tc.wantOut)
			}
			if !strings.Contains(errOut.String(), tc.wantErr) {
				t.Errorf("stderr %q lacks %q", errOut.String(), tc.wantErr)
			}
		})
	}
}

func TestProgramPath(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"/tmp/x.test", "/tmp/x.test"},
		{"./x.test", "/work/x.test"},
		{"sub/x.test", "/work/sub/x.test"},
	} {
		got, err := programPath(tc.in, "/work")
		if err != nil || got != tc.want {
			t.Errorf("programPath(%q) = %q, %v; want %q", tc.in, got, err, tc.want)
		}
	}
	if got, err := programPath("sh", "/work"); err != nil || !filepath.IsAbs(got) {
		t.Errorf("programPath(sh) = %q, %v; want an absolute path from PATH", got, err)
	}
}

func TestForgetAccel(t *testing.T) {
	cache, init := setup(t, "status:0")
	verdict := vm.KVMVerdictPath(cache)
	if err := os.WriteFile(verdict, []byte("key\nreason\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), nil, []string{"-cache", cache, "-forget-accel"}, init, &out, &errOut); code != 0 {
		t.Fatalf("vmrun -forget-accel exited %d: %s", code, errOut.String())
	}
	if _, err := os.Stat(verdict); !os.IsNotExist(err) {
		t.Errorf("verdict still there after -forget-accel: %v", err)
	}
	if !strings.Contains(errOut.String(), "forgot "+verdict) {
		t.Errorf("stderr %q does not say what was forgotten", errOut.String())
	}
}
