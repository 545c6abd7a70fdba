package sandbox

import (
	"os"
	"path/filepath"
	"testing"

	"golang.org/x/sys/unix"
)

// newTestNetnsPool is a pool without its kernel side: namespaces are
// stood in for by pipe fds, and clean says whether one holds a socket.
func newTestNetnsPool(t *testing.T, size int, clean func(fd int) bool) *netnsPool {
	t.Helper()
	host, err := unix.Open(os.DevNull, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	// started, with no refill running: its done is closed already.
	p := &netnsPool{host: host, size: size, used: map[string][]int{}, started: true, wake: make(chan struct{}, 1), done: make(chan struct{}), empty: clean}
	close(p.done)
	t.Cleanup(func() {
		if !p.closed {
			p.close()
		}
	})
	return p
}

// fakeNetns returns an fd standing in for a namespace.
func fakeNetns(t *testing.T) int {
	t.Helper()
	var fds [2]int
	if err := unix.Pipe2(fds[:], unix.O_CLOEXEC); err != nil {
		t.Fatal(err)
	}
	unix.Close(fds[1])
	return fds[0]
}

func isOpen(fd int) bool {
	_, err := unix.FcntlInt(uintptr(fd), unix.F_GETFD, 0)
	return err == nil
}

func TestNetnsReuseWithinTenant(t *testing.T) {
	p := newTestNetnsPool(t, 2, func(int) bool { return true })
	fresh := fakeNetns(t)
	p.ready = []int{fresh}

	a := fakeNetns(t)
	p.give("a", a, true)
	if got := p.take("b"); got != fresh {
		t.Errorf("tenant b took %d, want the fresh %d, not tenant a's %d", got, fresh, a)
	}
	if got := p.take("a"); got != a {
		t.Errorf("tenant a took %d, want its own %d back", got, a)
	}
	if got := p.take("a"); got != -1 {
		t.Errorf("take with nothing ready = %d, want -1", got)
	}
	if hits, misses, reused := p.hits.Load(), p.misses.Load(), p.reused.Load(); hits != 2 || misses != 1 || reused != 1 {
		t.Errorf("hits, misses, reused = %d, %d, %d; want 2, 1, 1", hits, misses, reused)
	}
}

func TestNetnsGiveEndsWhatCannotBeReused(t *testing.T) {
	dirty := fakeNetns(t)
	p := newTestNetnsPool(t, 2, func(fd int) bool { return fd != dirty })
	root := fakeNetns(t)
	p.give("a", root, false) // its program ran as root, or its cell did not empty
	p.give("a", dirty, true) // a socket is left in it
	if isOpen(root) || isOpen(dirty) {
		t.Errorf("namespaces that cannot be reused are still held: root %v, with a socket %v", isOpen(root), isOpen(dirty))
	}
	if got := p.take("a"); got != -1 {
		t.Errorf("take = %d after only namespaces that cannot be reused came back; want -1", got)
	}
}

func TestNetnsReuseBounded(t *testing.T) {
	p := newTestNetnsPool(t, 2, func(int) bool { return true })
	var kept []int
	give := func(tenant string, want bool) {
		t.Helper()
		fd := fakeNetns(t)
		p.give(tenant, fd, true)
		// Checked at once: a closed fd's number is soon handed out again.
		if isOpen(fd) != want {
			t.Errorf("tenant %s, with %d waiting: kept %v, want %v", tenant, p.nused, isOpen(fd), want)
		}
		if want {
			kept = append(kept, fd)
		}
	}
	give("a", true)
	give("a", true)
	give("a", false) // size per tenant
	for i := range maxUsedFactor*2 - 2 {
		give(string(rune('b'+i/2)), true)
	}
	give("z", false) // maxUsedFactor*size in all
	p.close()
	for _, fd := range kept {
		if isOpen(fd) {
			t.Errorf("fd %d still open after close", fd)
		}
	}
}

func TestOneLine(t *testing.T) {
	dir := t.TempDir()
	var buf [4096]byte
	for name, tc := range map[string]struct {
		text string
		want bool
	}{
		"header only":  {"  sl  local_address rem_address\n", true},
		"one socket":   {"  sl  local_address\n   0: 0100007F:1F90\n", false},
		"empty":        {"", false},
		"long sockets": {"h\n" + string(make([]byte, 9000)) + "\n", false},
	} {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := oneLine(&buf, p); got != tc.want {
			t.Errorf("%s: oneLine = %v, want %v", name, got, tc.want)
		}
	}
	if !oneLine(&buf, filepath.Join(dir, "absent")) {
		t.Error("an absent table (a protocol the kernel lacks) counts as holding a socket")
	}
	for text, want := range map[string]int{"sockets: used 0\nTCP: inuse 0\n": 0, "sockets: used 12\n": 12, "sockets: used x\n": -1, "TCP: inuse 0\n": -1, "": -1} {
		p := filepath.Join(dir, "sockstat")
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
		n, ok := socketsUsed(&buf, p)
		if !ok {
			n = -1
		}
		if n != want {
			t.Errorf("socketsUsed(%q) = %d, %v; want %d", text, n, ok, want)
		}
	}
}

// TestHasNoSocket: a namespace holding a socket of any family, even one
// that no table lists (made, never bound: a process outside the cell
// could hold it), is not empty; once it is closed the namespace is. Needs root (a namespace of its own).
func TestHasNoSocket(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root for a network namespace")
	}
	p, err := newNetnsPool(1, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer p.close()
	ns, err := p.create()
	if err != nil {
		t.Skipf("no network namespace here: %v", err)
	}
	defer unix.Close(ns)
	if !p.hasNoSocket(ns) {
		t.Fatal("a fresh namespace holds a socket")
	}
	for _, k := range []struct {
		name         string
		domain, kind int
	}{{"unbound TCP", unix.AF_INET, unix.SOCK_STREAM}, {"UDP", unix.AF_INET, unix.SOCK_DGRAM}, {"Unix", unix.AF_UNIX, unix.SOCK_STREAM}} {
		sock := -1
		if err := p.onThread(func() error { return unix.Setns(ns, unix.CLONE_NEWNET) }, func() {
			sock, err = unix.Socket(k.domain, k.kind|unix.SOCK_CLOEXEC, 0)
		}); err != nil || sock < 0 {
			t.Fatalf("a %s socket in the namespace: %v", k.name, err)
		}
		if p.hasNoSocket(ns) {
			t.Errorf("a namespace holding a %s socket counts as empty", k.name)
		}
		unix.Close(sock)
		if !p.hasNoSocket(ns) {
			t.Errorf("the namespace still counts a closed %s socket", k.name)
		}
	}
}
