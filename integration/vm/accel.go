package vm

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// Accel is how the runner picks qemu's accelerator.
type Accel string

const (
	// AccelAuto tries KVM when the device opens and falls back to TCG when
	// a KVM guest shows no sign of life (qemu exits first, or the guest is
	// silent past the boot bound). A /dev/kvm that opens is not proof that
	// KVM works: under broken nested virtualization qemu aborts or the
	// guest spins.
	AccelAuto Accel = "auto"
	// AccelKVM insists on KVM: a guest it cannot start is a failure.
	AccelKVM Accel = "kvm"
	// AccelTCG is software emulation; /dev/kvm is never touched.
	AccelTCG Accel = "tcg"
)

// ParseAccel parses an -accel value (or CELLGATE_VM_ACCEL, named by from).
func ParseAccel(from, s string) (Accel, error) {
	switch a := Accel(s); a {
	case AccelAuto, AccelKVM, AccelTCG:
		return a, nil
	case "":
		return AccelAuto, nil
	}
	return "", fmt.Errorf("%s=%q: want auto, kvm or tcg", from, s)
}

// DefaultLifeBound is how long a KVM guest may take to show its first sign
// of life before KVM is judged unable to start it. A working KVM guest
// reaches /init in a second or two; a generous bound costs only the broken
// case, once per machine (the verdict is cached).
const DefaultLifeBound = 30 * time.Second

// Choice is the accelerator picked for a boot and why.
type Choice struct {
	KVM bool
	Why string
}

func (c Choice) String() string {
	name := "tcg"
	if c.KVM {
		name = "kvm"
	}
	return name + " (" + c.Why + ")"
}

// choose decides the first accelerator to try for mode. openKVM and
// verdict (a cached "KVM cannot start a guest here" reason, or "") are
// only called in auto mode: forced tcg never touches the KVM device.
func choose(mode Accel, openKVM func() error, verdict func() string) Choice {
	switch mode {
	case AccelTCG:
		return Choice{Why: "forced by -accel tcg"}
	case AccelKVM:
		return Choice{KVM: true, Why: "forced by -accel kvm"}
	}
	if err := openKVM(); err != nil {
		return Choice{Why: fmt.Sprintf("KVM device: %v", err)}
	}
	if v := verdict(); v != "" {
		return Choice{Why: "KVM unusable here: " + v + " (cached; forget it with vmrun -forget-accel)"}
	}
	return Choice{KVM: true, Why: "the KVM device opens; trying it, TCG if the guest does not start"}
}

// openDevice opens path read-write and closes it again.
func openDevice(path string) error {
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// NoLifeError says that the accelerator could not start the guest: qemu
// exited, or the guest stayed silent, before the guest's /init printed its
// first line. Nothing of the program ran.
type NoLifeError struct {
	Reason string
	Stderr []byte // what qemu wrote to its stderr meanwhile (bounded)
}

func (e *NoLifeError) Error() string { return e.Reason }

// qemuReason picks the line of qemu's stderr that says why it failed: the
// last one naming an error, else the last one; qemu's own prefix is
// dropped.
func qemuReason(stderr []byte) string {
	var last, lastErr string
	for _, l := range strings.Split(string(stderr), "\n") {
		l = strings.TrimSpace(l)
		if l == "" {
			continue
		}
		l = strings.TrimPrefix(l, QEMUBinary+": ")
		last = l
		if strings.Contains(strings.ToLower(l), "error") {
			lastErr = strings.TrimPrefix(l, "error: ")
		}
	}
	if lastErr != "" {
		return lastErr
	}
	return last
}

// The verdict cache: one file in the kernel cache directory saying that
// KVM could not start a guest on this machine, keyed by what would change
// that (the host kernel and the qemu binary), so a kernel or qemu upgrade
// probes again.
const kvmVerdictFile = "kvm-verdict"

// KVMVerdictPath is where the cached verdict of cacheDir lives.
func KVMVerdictPath(cacheDir string) string { return filepath.Join(cacheDir, kvmVerdictFile) }

// kvmVerdictKey identifies the host and qemu a verdict was reached on.
func kvmVerdictKey(qemu string) string {
	var u unix.Utsname
	release := "unknown"
	if unix.Uname(&u) == nil {
		release = unix.ByteSliceToString(u.Release[:])
	}
	id := "unknown"
	if st, err := os.Stat(qemu); err == nil {
		id = fmt.Sprintf("%d-%d", st.Size(), st.ModTime().Unix())
	}
	return "kernel=" + release + " qemu=" + qemu + ":" + id
}

// readKVMVerdict returns the cached reason for key, or "" when there is none
// or it was reached on another host kernel or qemu.
func readKVMVerdict(cacheDir, key string) string {
	b, err := os.ReadFile(KVMVerdictPath(cacheDir))
	if err != nil {
		return ""
	}
	k, reason, ok := strings.Cut(strings.TrimSpace(string(b)), "\n")
	if !ok || k != key {
		return ""
	}
	return reason
}

// writeKVMVerdict caches reason for key, atomically (parallel runners may
// write at once).
func writeKVMVerdict(cacheDir, key, reason string) error {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return fmt.Errorf("cache KVM verdict: %w", err)
	}
	f, err := os.CreateTemp(cacheDir, kvmVerdictFile+".*")
	if err != nil {
		return fmt.Errorf("cache KVM verdict: %w", err)
	}
	_, err = fmt.Fprintf(f, "%s\n%s\n", key, strings.ReplaceAll(reason, "\n", " "))
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(f.Name(), KVMVerdictPath(cacheDir))
	}
	if err != nil {
		os.Remove(f.Name())
		return fmt.Errorf("cache KVM verdict: %w", err)
	}
	return nil
}

// ForgetKVMVerdict removes the cached verdict of cacheDir; it reports whether
// there was one.
func ForgetKVMVerdict(cacheDir string) (bool, error) {
	err := os.Remove(KVMVerdictPath(cacheDir))
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("forget KVM verdict: %w", err)
	}
	return true, nil
}

// heldWriter holds what is written to it, up to max bytes (the rest is
// dropped), until release; from then on it writes through to w. The
// runner holds qemu's stderr while KVM is on trial, so that a KVM failure
// that falls back to TCG shows one line, not qemu's assertion.
type heldWriter struct {
	mu       sync.Mutex
	w        interface{ Write([]byte) (int, error) }
	max      int
	held     bytes.Buffer
	released bool
}

func (h *heldWriter) Write(p []byte) (int, error) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return h.w.Write(p)
	}
	if room := h.max - h.held.Len(); room > 0 {
		h.held.Write(p[:min(len(p), room)])
	}
	return len(p), nil
}

// release writes out what was held and passes everything after through.
func (h *heldWriter) release() {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.released {
		return
	}
	h.released = true
	h.w.Write(h.held.Bytes())
	h.held.Reset()
}

// bytes returns what is held (before release).
func (h *heldWriter) bytes() []byte {
	h.mu.Lock()
	defer h.mu.Unlock()
	return bytes.Clone(h.held.Bytes())
}
