package vm

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cellgate/cellgate/integration/vm/internal/vmtest"
)

func TestParseAccel(t *testing.T) {
	for in, want := range map[string]Accel{"": AccelAuto, "auto": AccelAuto, "kvm": AccelKVM, "tcg": AccelTCG} {
		if got, err := ParseAccel("-accel", in); err != nil || got != want {
			t.Errorf("ParseAccel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	_, err := ParseAccel("CELLGATE_VM_ACCEL", "hvf")
	if err == nil || !strings.Contains(err.Error(), `CELLGATE_VM_ACCEL="hvf"`) {
		t.Errorf("ParseAccel(hvf) = %v, want an error naming the variable and value", err)
	}
}

func TestChoose(t *testing.T) {
	opens := func() error { return nil }
	missing := func() error { return os.ErrNotExist }
	none := func() string { return "" }
	cached := func() string { return "qemu aborted: failed to set MSR 0x10a" }
	for _, tc := range []struct {
		name    string
		mode    Accel
		open    func() error
		verdict func() string
		wantKVM bool
		wantWhy string
	}{
		{"auto, device opens, no verdict", AccelAuto, opens, none, true, "trying it"},
		{"auto, no device", AccelAuto, missing, none, false, "KVM device"},
		{"auto, cached verdict", AccelAuto, opens, cached, false, "failed to set MSR 0x10a (cached"},
		{"forced kvm ignores the verdict", AccelKVM, opens, cached, true, "forced"},
		{"forced kvm without a device still tries", AccelKVM, missing, none, true, "forced"},
		{"forced tcg", AccelTCG, opens, none, false, "forced"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := choose(tc.mode, tc.open, tc.verdict)
			if c.KVM != tc.wantKVM || !strings.Contains(c.Why, tc.wantWhy) {
				t.Errorf("choose = %+v, want KVM %v and a reason containing %q", c, tc.wantKVM, tc.wantWhy)
			}
		})
	}
	// Forced tcg never touches the KVM device nor the cache.
	choose(AccelTCG,
		func() error { t.Error("forced tcg opened the KVM device"); return nil },
		func() string { t.Error("forced tcg read the KVM verdict"); return "" })
}

func TestOpenDevice(t *testing.T) {
	dir := t.TempDir()
	dev := filepath.Join(dir, "kvm")
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := openDevice(dev); err != nil {
		t.Errorf("openDevice(file opening read-write) = %v", err)
	}
	if err := openDevice(filepath.Join(dir, "nope")); err == nil {
		t.Error("openDevice(missing) succeeded")
	}
	if err := openDevice(dir); err == nil {
		t.Error("openDevice(directory) succeeded, want an error (not writable)")
	}
}

func TestQEMUReason(t *testing.T) {
	stderr := "qemu-system-x86_64: error: failed to set MSR 0x10a to 0x69\n" +
		"qemu-system-x86_64: ../../target/i386/kvm/kvm.c:3183: kvm_buf_set_msrs: Assertion `ret == cpu->kvm_msr_buf->nmsrs' failed.\n"
	if got := qemuReason([]byte(stderr)); got != "failed to set MSR 0x10a to 0x69" {
		t.Errorf("qemuReason = %q", got)
	}
	if got := qemuReason([]byte("qemu-system-x86_64: could not open /dev/kvm\n\n")); got != "could not open /dev/kvm" {
		t.Errorf("qemuReason without an error line = %q, want the last line", got)
	}
}

// accelRun runs /bin/prog through the fake qemu in mode with accel and
// returns the status, the error, the console, the runner's log and the
// accelerators qemu was started with, in order.
type accelRun struct {
	code      int
	err       error
	out, log  string
	qemuAccel []string
}

// The fake qemu must be on PATH already (vmtest.UseFakeQEMU).
func runAccel(t *testing.T, accel Accel, cache string) accelRun {
	t.Helper()
	qlog := filepath.Join(t.TempDir(), "qemu.log")
	t.Setenv(fakeQEMULogEnv, qlog)
	dev := filepath.Join(t.TempDir(), "kvm") // a "/dev/kvm" that opens
	if err := os.WriteFile(dev, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	var out, log bytes.Buffer
	code, err := Run(context.Background(), Options{
		Args:      []string{"/bin/prog"},
		Dir:       "/work/dir",
		Mem:       "2G",
		CPUs:      2,
		Timeout:   time.Minute,
		CacheDir:  cache,
		Accel:     accel,
		KVMPath:   dev,
		LifeBound: 2 * time.Second,
		Init:      vmtest.StaticInit(t),
		Stdout:    &out,
		Log:       &log,
	})
	b, _ := os.ReadFile(qlog)
	return accelRun{code: code, err: err, out: out.String(), log: log.String(), qemuAccel: strings.Fields(string(b))}
}

func TestAccelFallback(t *testing.T) {
	for _, tc := range []struct {
		name      string
		mode      string
		accel     Accel
		wantCode  int
		wantErr   string
		wantLog   string
		wantAccel string
	}{
		{"auto: KVM aborts at start -> TCG, said", "kvm-abort", AccelAuto, 0, "",
			"vmrun: KVM unusable here (qemu aborted: failed to set MSR 0x10a to 0x69); using TCG\n", "kvm tcg,thread=multi"},
		{"auto: KVM guest silent past the bound -> TCG, said", "kvm-silent", AccelAuto, 0, "",
			"vmrun: KVM unusable here (the guest printed nothing within 2s); using TCG\n", "kvm tcg,thread=multi"},
		{"forced kvm that aborts fails", "kvm-abort", AccelKVM, 0, "KVM could not start the guest", "failed to set MSR", "kvm"},
		{"forced kvm that stays silent fails", "kvm-silent", AccelKVM, 0, "printed nothing within 2s", "", "kvm"},
		{"forced tcg: no KVM attempt", "kvm-abort", AccelTCG, 0, "", "", "tcg,thread=multi"},
		{"a KVM guest that boots and fails its test: that failure, no retry", "kvm-fail", AccelAuto, 1, "", "", "kvm"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cache := vmtest.KernelCache(t, GuestModules)
			vmtest.UseFakeQEMU(t, QEMUBinary, tc.mode)
			r := runAccel(t, tc.accel, cache)
			if tc.wantErr == "" {
				if r.err != nil || r.code != tc.wantCode {
					t.Errorf("Run = %d, %v; want %d, nil\nlog: %s", r.code, r.err, tc.wantCode, r.log)
				}
			} else if r.err == nil || !strings.Contains(r.err.Error(), tc.wantErr) {
				t.Errorf("Run = %d, %v; want an error containing %q", r.code, r.err, tc.wantErr)
			}
			if !strings.Contains(r.log, tc.wantLog) {
				t.Errorf("log %q lacks %q", r.log, tc.wantLog)
			}
			if tc.wantErr == "" && tc.accel != AccelKVM && strings.Contains(r.log, "Assertion") {
				t.Errorf("a fallback showed qemu's own stderr: %q", r.log)
			}
			if got := strings.Join(r.qemuAccel, " "); got != tc.wantAccel {
				t.Errorf("qemu started with -accel %q, want %q", got, tc.wantAccel)
			}
			if strings.Contains(r.out, "vmrun-guest-alive-") {
				t.Errorf("the sign of life leaked into the output: %q", r.out)
			}
			if tc.mode == "kvm-fail" && !strings.Contains(r.out, "--- FAIL") {
				t.Errorf("output %q lacks the guest's failure", r.out)
			}
		})
	}
}

func TestAccelVerdictCached(t *testing.T) {
	cache := vmtest.KernelCache(t, GuestModules)
	vmtest.UseFakeQEMU(t, QEMUBinary, "kvm-abort")
	first := runAccel(t, AccelAuto, cache)
	if first.err != nil || strings.Join(first.qemuAccel, " ") != "kvm tcg,thread=multi" {
		t.Fatalf("first run: %v, qemu -accel %q", first.err, first.qemuAccel)
	}
	if _, err := os.Stat(KVMVerdictPath(cache)); err != nil {
		t.Fatalf("no verdict cached: %v", err)
	}
	// The cached verdict spares later runs the trial, silently.
	second := runAccel(t, AccelAuto, cache)
	if second.err != nil || strings.Join(second.qemuAccel, " ") != "tcg,thread=multi" || second.log != "" {
		t.Errorf("second run: %v, qemu -accel %q, log %q; want TCG straight away, nothing said", second.err, second.qemuAccel, second.log)
	}
	// A verdict reached on another host kernel or qemu is not used.
	if err := os.WriteFile(KVMVerdictPath(cache), []byte("kernel=other qemu=x\nold reason\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if c := (Options{Accel: AccelAuto, KVMPath: "/dev/null", CacheDir: cache}).FirstChoice("/usr/bin/qemu"); !c.KVM {
		t.Errorf("a verdict with another key was used: %+v", c)
	}
	had, err := ForgetKVMVerdict(cache)
	if err != nil || !had {
		t.Fatalf("ForgetKVMVerdict = %v, %v; want true, nil", had, err)
	}
	if had, err := ForgetKVMVerdict(cache); err != nil || had {
		t.Errorf("second ForgetKVMVerdict = %v, %v; want false, nil", had, err)
	}
	third := runAccel(t, AccelAuto, cache)
	if strings.Join(third.qemuAccel, " ") != "kvm tcg,thread=multi" {
		t.Errorf("after forgetting, qemu -accel %q; want KVM tried again", third.qemuAccel)
	}
}

func TestBootTimeoutIsNotAnAcceleratorFailure(t *testing.T) {
	// A guest that lives and then hangs times out as before: no fallback.
	vmtest.UseFakeQEMU(t, QEMUBinary, "hang")
	var out, log bytes.Buffer
	_, err := Boot(context.Background(), Machine{QEMU: QEMUBinary, Initramfs: writeSpecInitrd(t), KVM: true}, BootOptions{
		Marker: "m:", Alive: "alive-x", Timeout: 3 * time.Second, LifeBound: time.Second, Stdout: &out, Log: &log,
	})
	var noLife *NoLifeError
	if err == nil || errors.As(err, &noLife) || !strings.Contains(err.Error(), "timed out") {
		t.Errorf("Boot = %v, want a timeout that is not a *NoLifeError", err)
	}
}

// writeSpecInitrd writes an initramfs holding only a spec whose sign of
// life is "alive-x", for Boot called directly.
func writeSpecInitrd(t *testing.T) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "initrd")
	f, err := os.Create(p)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	js := `{"Args":["/bin/prog"],"Marker":"m:","Alive":"alive-x"}`
	if err := WriteInitramfs(f, []File{{Name: SpecPath, Mode: ModeRegular | 0o644, Data: []byte(js)}}); err != nil {
		t.Fatal(err)
	}
	return p
}
