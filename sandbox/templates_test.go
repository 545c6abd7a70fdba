package sandbox

import (
	"errors"
	"os"
	"runtime"
	"strings"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/cellgate/cellgate/confine"
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

// TestTemplateCoversHidden: a template whose covered files are no longer
// the host's is not handed out (a miss: the cell builds its view) and is
// made again; one that still covers them is.
func TestTemplateCoversHidden(t *testing.T) {
	plan, err := confine.Prepare(&confine.Plan{Namespaces: confine.NSMount, Seccomp: true, Binds: []confine.Bind{
		{Source: os.DevNull, Target: "/etc/policy.yaml", Mask: true, Hides: "/etc/cellgate-test-policy.yaml"},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if !plan.Templatable() {
		t.Fatal("the plan is not templatable")
	}
	then := []fileID{{dev: 1, ino: 10}}
	mt := &mountTemplate{refs: 1, view: viewStamp{made: time.Now(), hidden: then}}
	tm := newMountTemplates(nil)
	tm.sets[plan] = &templateSet{cur: mt, building: true} // no making started here
	if got := tm.take(plan, then); got != mt || mt.refs != 2 {
		t.Fatalf("take with the files it covers: %v (refs %d), want the template", got, mt.refs)
	}
	if got := tm.take(plan, []fileID{{dev: 1, ino: 11}}); got != nil {
		t.Errorf("take after a covered file was replaced: the template handed out")
	}
	if got := tm.take(plan, []fileID{{}}); got != nil {
		t.Errorf("take after a covered file was removed: the template handed out")
	}
	if hits, misses := tm.hits.Load(), tm.misses.Load(); hits != 1 || misses != 2 {
		t.Errorf("hits %d misses %d, want 1 and 2", hits, misses)
	}
}
