package confine

import (
	"errors"
	"os"
	"runtime"
	"testing"

	"golang.org/x/sys/unix"
)

// onThread runs f on a thread of its own that is thrown away after
// (capabilities are a thread's; a goroutine that ends locked ends its
// thread).
func onThread(f func()) {
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		defer close(done)
		f()
	}()
	<-done
}

// dropEffective clears c from the calling thread's effective set.
func dropEffective(t testing.TB, c uint) {
	t.Helper()
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		t.Error(err)
		return
	}
	data[c/32].Effective &^= 1 << (c % 32)
	if err := unix.Capset(&hdr, &data[0]); err != nil {
		t.Error(err)
	}
}

// TestCanCutRootCaps: serve refuses a route run as root where its inits
// could not cut the program's capabilities (no CAP_SETPCAP, a bounding set
// beyond RootCaps), and accepts it where they can or need not.
func TestCanCutRootCaps(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("capabilities to drop need root")
	}
	onThread(func() {
		if err := CanCutRootCaps(); err != nil {
			t.Errorf("root with CAP_SETPCAP: %v", err)
		}
	})
	onThread(func() {
		dropEffective(t, unix.CAP_SETPCAP)
		if err := CanCutRootCaps(); !errors.Is(err, ErrNoSetpcap) {
			t.Errorf("without CAP_SETPCAP, a bounding set beyond RootCaps: %v, want the missing CAP_SETPCAP named", err)
		}
	})
	onThread(func() {
		if err := rootBounding(); err != nil {
			t.Error(err)
			return
		}
		dropEffective(t, unix.CAP_SETPCAP)
		if err := CanCutRootCaps(); err != nil {
			t.Errorf("without CAP_SETPCAP, the bounding set already RootCaps: %v", err)
		}
		if extra, err := beyondRootCaps(); err != nil || len(extra) != 0 {
			t.Errorf("after rootBounding: %v beyond RootCaps (%v)", extra, err)
		}
	})
}
