package sandbox

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// TestCanEnterTemplates: without CAP_SYS_CHROOT (or, unprivileged,
// CAP_SYS_ADMIN) in the effective set, templates are refused with the
// missing capability named. Capabilities are per thread: the check runs
// on a thread whose effective set the test lowers and then restores.
func TestCanEnterTemplates(t *testing.T) {
	if os.Geteuid() != 0 {
		if err := canEnterTemplates(); err == nil || !strings.Contains(err.Error(), "CAP_SYS_ADMIN") {
			t.Errorf("unprivileged: canEnterTemplates = %v, want an error naming CAP_SYS_ADMIN", err)
		}
		return
	}
	if err := unix.Setns(-1, unix.CLONE_NEWNS); !errors.Is(err, unix.EBADF) {
		t.Skipf("setns is filtered here (%v): canEnterTemplates refuses for that already", err)
	}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var saved [2]unix.CapUserData
	if err := unix.Capget(&hdr, &saved[0]); err != nil {
		t.Fatal(err)
	}
	bit := uint(unix.CAP_SYS_CHROOT)
	if saved[bit/32].Effective&(1<<(bit%32)) == 0 {
		t.Skip("root without CAP_SYS_CHROOT here: nothing to take away")
	}
	if err := canEnterTemplates(); err != nil {
		t.Fatalf("with every capability: %v", err)
	}
	lowered := saved
	lowered[bit/32].Effective &^= 1 << (bit % 32)
	if err := unix.Capset(&hdr, &lowered[0]); err != nil {
		t.Fatal(err)
	}
	err := canEnterTemplates()
	if rerr := unix.Capset(&hdr, &saved[0]); rerr != nil {
		t.Fatalf("restore the thread's capabilities: %v", rerr)
	}
	if err == nil || !strings.Contains(err.Error(), "CAP_SYS_CHROOT") {
		t.Errorf("without CAP_SYS_CHROOT: canEnterTemplates = %v, want an error naming it", err)
	}
}
