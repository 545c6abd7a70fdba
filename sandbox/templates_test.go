package sandbox

import (
	"errors"
	"log/slog"
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

// TestTemplateSetsSweptAfterFailures: the sets of plans no request took
// for warmIdle go when a template's making fails, as when it succeeds.
// Before, a failure returned before the sweep: where every route's
// template failed (a mount's source gone), each reload left one set per
// route, and the replaced plans with it, for the daemon's life.
func TestTemplateSetsSweptAfterFailures(t *testing.T) {
	tm := newMountTemplates(&Runner{log: slog.New(slog.DiscardHandler)})
	tm.makeTemplate = func(*confine.Prepared) (*os.File, error) { return nil, errors.New("a mount's source is gone") }
	plan := func() *confine.Prepared {
		p, err := confine.Prepare(&confine.Plan{Namespaces: confine.NSMount, Seccomp: true})
		if err != nil || !p.Templatable() {
			t.Fatalf("a templatable plan: %v", err)
		}
		return p
	}
	for range 20 { // 20 reloads' plans
		if mt := tm.take(plan(), nil); mt != nil {
			t.Fatal("a template handed out though its making fails")
		}
	}
	tm.wg.Wait()
	tm.mu.Lock()
	for _, s := range tm.sets {
		s.used = time.Now().Add(-warmIdle) // none taken since
	}
	tm.mu.Unlock()
	tm.take(plan(), nil) // the newest policy's route
	tm.wg.Wait()
	tm.mu.Lock()
	n := len(tm.sets)
	tm.mu.Unlock()
	if n != 1 {
		t.Errorf("%d template sets after a failed making, want 1 (the plan just taken): the idle ones stay", n)
	}
}
