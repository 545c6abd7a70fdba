// Package vmtest fakes, for the tests of package vm and of vmrun, what
// vm.Run needs from the host: qemu on PATH (the test binary itself, told by
// an environment variable to play the guest), a kernel cache and a static
// /init. It does not import vm, so that vm's own tests can use it; callers
// pass vm's names in. Only tests under integration/vm import it.
package vmtest

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// fakeQEMUEnv tells a test binary started as qemu (UseFakeQEMU) to play
// it (Main), and how.
const fakeQEMUEnv = "VMTEST_FAKE_QEMU"

// Main is the TestMain of a package that uses UseFakeQEMU: started as the
// fake qemu, the test binary exits with play(mode, its arguments);
// otherwise it runs the tests.
func Main(m *testing.M, play func(mode string, args []string) int) {
	if mode := os.Getenv(fakeQEMUEnv); mode != "" {
		os.Exit(play(mode, os.Args[1:]))
	}
	os.Exit(m.Run())
}

// UseFakeQEMU puts the test binary on PATH as binary (vm.QEMUBinary),
// playing it in mode (see Main).
func UseFakeQEMU(t *testing.T, binary, mode string) {
	t.Helper()
	bin := t.TempDir()
	if err := os.Symlink(os.Args[0], filepath.Join(bin, binary)); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+string(os.PathListSeparator)+os.Getenv("PATH"))
	t.Setenv(fakeQEMUEnv, mode)
}

// Initrd returns the file that a qemu command line boots as its initramfs
// (-initrd), read whole.
func Initrd(args []string) ([]byte, error) {
	i := slices.Index(args, "-initrd")
	if i < 0 || i+1 >= len(args) {
		return nil, fmt.Errorf("no -initrd")
	}
	return os.ReadFile(args[i+1])
}

// KernelCache makes a cache directory holding a kernel package (release
// 6.1.0-fake-amd64) in which every one of modules (vm.GuestModules) is
// built in.
func KernelCache(t testing.TB, modules []string) string {
	t.Helper()
	dir := t.TempDir()
	pkg := filepath.Join(dir, "linux-image-6.1.0-fake-amd64")
	mods := filepath.Join(pkg, "lib", "modules", "6.1.0-fake-amd64")
	var builtin bytes.Buffer
	for _, m := range modules {
		fmt.Fprintf(&builtin, "kernel/fake/%s.ko\n", m)
	}
	for p, data := range map[string]string{
		filepath.Join(dir, "kernel"):                           "linux-image-6.1.0-fake-amd64\n",
		filepath.Join(pkg, "boot", "vmlinuz-6.1.0-fake-amd64"): "not a kernel",
		filepath.Join(mods, "modules.order"):                   "",
		filepath.Join(mods, "modules.builtin"):                 builtin.String(),
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(data), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

// StaticInit writes an x86-64 ELF executable header with no program
// header, so no interpreter: vm.Run accepts it as the guest's /init (the
// test binary itself may be dynamic, under -race).
func StaticInit(t testing.TB) string {
	t.Helper()
	var b bytes.Buffer
	h := elf.Header64{Type: uint16(elf.ET_EXEC), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT), Ehsize: 64}
	copy(h.Ident[:], "\x7fELF\x02\x01\x01")
	binary.Write(&b, binary.LittleEndian, h)
	p := filepath.Join(t.TempDir(), "init")
	if err := os.WriteFile(p, b.Bytes(), 0o755); err != nil {
		t.Fatal(err)
	}
	return p
}
