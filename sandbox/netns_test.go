package sandbox

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
	p.give("a", root, false) // its program ran as the host's root, or its cell did not empty
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
	// One tenant may fill the pool (maxUsedFactor*size in all), beyond
	// size: a busy tenant keeps a namespace for each of its cells.
	for range maxUsedFactor * 2 {
		give("a", true)
	}
	give("a", false) // the pool is full
	oldest := kept[0]
	// Each other tenant is still sure of size (2): its namespaces take the
	// place of the oldest of the tenant holding the most.
	give("b", true)
	if isOpen(oldest) {
		t.Errorf("tenant a's oldest namespace (fd %d) still held after tenant b's took its place", oldest)
	}
	give("b", true)
	give("b", false) // b holds size
	give("c", true)
	give("c", true)
	give("c", false)
	if n := len(p.used["a"]); n != maxUsedFactor*2-4 {
		t.Errorf("tenant a holds %d namespaces after b and c took four places; want %d", n, maxUsedFactor*2-4)
	}
	if p.nused != maxUsedFactor*2 {
		t.Errorf("%d namespaces wait; want the pool's %d", p.nused, maxUsedFactor*2)
	}
	p.close()
	for _, fd := range kept {
		if isOpen(fd) {
			t.Errorf("fd %d still open after close", fd)
		}
	}
}

func TestNetnsReuseFullOfSmallTenants(t *testing.T) {
	p := newTestNetnsPool(t, 2, func(int) bool { return true })
	for i := range maxUsedFactor {
		for range 2 {
			fd := fakeNetns(t)
			p.give(fmt.Sprint("t", i), fd, true)
			if !isOpen(fd) {
				t.Fatalf("tenant t%d's namespace not kept with %d waiting", i, p.nused)
			}
		}
	}
	// Every tenant holds size: none gives a place to a newcomer.
	fd := fakeNetns(t)
	p.give("z", fd, true)
	if isOpen(fd) {
		t.Errorf("a full pool of tenants at size kept a newcomer's namespace")
	}
	if p.nused != maxUsedFactor*2 {
		t.Errorf("%d namespaces wait; want %d", p.nused, maxUsedFactor*2)
	}
}

func TestSockstatZero(t *testing.T) {
	dir := t.TempDir()
	var buf [4096]byte
	const clean = "sockets: used 0\nTCP: inuse 0 orphan 3 tw 0 alloc 7 mem 1\nUDP: inuse 0 mem 0\n"
	keys := []string{"sockets: used", "TCP: inuse", "TCP: tw"}
	for name, tc := range map[string]struct {
		text string
		want bool
	}{
		"clean (orphan and alloc are the host's)": {clean, true},
		"a socket":               {"sockets: used 1\nTCP: inuse 0 orphan 0 tw 0\n", false},
		"an orphaned TCP":        {"sockets: used 0\nTCP: inuse 1 orphan 1 tw 0\n", false},
		"a TIME_WAIT":            {"sockets: used 0\nTCP: inuse 0 orphan 0 tw 1\n", false},
		"no TCP line":            {"sockets: used 0\n", false},
		"no tw field":            {"sockets: used 0\nTCP: inuse 0 orphan 0\n", false},
		"a number that is not":   {"sockets: used 0\nTCP: inuse 0 orphan 0 tw x\n", false},
		"a label within a line":  {"sockets: used 0\nUDP: TCP: inuse 0 tw 0\n", false},
		"empty":                  {"", false},
		"longer than the buffer": {clean + strings.Repeat("X: y 1\n", 1000), false},
	} {
		p := filepath.Join(dir, "sockstat")
		if err := os.WriteFile(p, []byte(tc.text), 0o644); err != nil {
			t.Fatal(err)
		}
		if got := sockstatZero(&buf, p, false, keys...); got != tc.want {
			t.Errorf("%s: sockstatZero = %v, want %v", name, got, tc.want)
		}
	}
	if sockstatZero(&buf, filepath.Join(dir, "absent"), false, keys...) {
		t.Error("an absent sockstat counts as clean")
	}
	if !sockstatZero(&buf, filepath.Join(dir, "absent"), true, "TCP6: inuse") {
		t.Error("an absent sockstat6 (IPv6 disabled) counts as holding a socket")
	}
}

// TestSockstatHeld: a resident init's sockstat files, held open, are
// read from their start at each check: a count that appears after the
// first read, and one that goes away after it, are seen. The files of a
// process's network namespace open, and are let go with the init's end.
func TestSockstatHeld(t *testing.T) {
	keys := []string{"TCP: tw"}
	p := filepath.Join(t.TempDir(), "sockstat")
	write := func(text string) {
		if err := os.WriteFile(p, []byte(text), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("TCP: inuse 0 tw 0\n")
	f, err := unix.Open(p, unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(f)
	var buf [4096]byte
	for i, tc := range []struct {
		text string
		want bool
	}{{"", true}, {"TCP: inuse 0 tw 1\n", false}, {"TCP: inuse 0 tw 0\n", true}} {
		if tc.text != "" {
			write(tc.text)
		}
		if got := sockstatZeroAt(&buf, f, keys...); got != tc.want {
			t.Errorf("check %d of the held file: %v, want %v", i, got, tc.want)
		}
	}

	ip := &initProc{proc: &os.Process{Pid: os.Getpid()}}
	ip.sockstat = openSockstat(os.Getpid())
	held := *ip.sockstat
	if held[0] < 0 || (held[1] < 0 && held[1] != noIPv6) {
		t.Fatalf("openSockstat of this process: %v", held)
	}
	for range 2 { // what it reads is this process's namespace's: whatever the counts, the text parses
		if _, ok := sockstatCount(readAt(t, held[0]), "TCP: inuse"); !ok {
			t.Errorf("no TCP: inuse in the held sockstat")
		}
	}
	ip.closeSockstat()
	if ip.sockstat != nil {
		t.Error("closeSockstat left the files")
	}
	ip.closeSockstat() // twice: nothing left to close
}

// readAt reads the held file f from its start.
func readAt(t *testing.T, f int) []byte {
	t.Helper()
	var buf [4096]byte
	n, err := unix.Pread(f, buf[:], 0)
	if err != nil {
		t.Fatal(err)
	}
	return buf[:n]
}

// TestHasNoSocket: a namespace holding a socket of any family, even one
// that no table lists (made, never bound: a process outside the cell
// could hold it), is not empty; once it is closed the namespace is. Nor
// is one where a closed connection waits in TIME_WAIT, which is no one's
// socket. Needs root (a namespace of its own).
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
	var metrics []byte
	if err := p.onThread(func() error { return unix.Setns(ns, unix.CLONE_NEWNET) }, func() { metrics, err = os.ReadFile(noMetricsSave) }); err != nil || string(metrics) != "1\n" {
		t.Errorf("%s in a namespace made ahead: %q (%v), want 1", noMetricsSave, metrics, err)
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
	// A connection closed by its client first leaves the client's end in
	// TIME_WAIT once the server's end closes too.
	var twErr error
	if err := p.onThread(func() error { return unix.Setns(ns, unix.CLONE_NEWNET) }, func() { twErr = timeWait() }); err != nil || twErr != nil {
		t.Fatalf("a TIME_WAIT connection in the namespace: %v %v", err, twErr)
	}
	deadline := time.Now().Add(5 * time.Second)
	for p.hasNoSocket(ns) {
		if time.Now().After(deadline) {
			t.Fatal("a namespace with a connection in TIME_WAIT counts as empty")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// timeWait brings the thread's namespace's loopback up and leaves a TCP
// connection over it in TIME_WAIT, every socket closed.
func timeWait() error {
	s, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(s)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(s, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCGIFFLAGS lo: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(s, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("SIOCSIFFLAGS lo: %w", err)
	}
	l, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(l)
	if err := unix.Bind(l, &unix.SockaddrInet4{Addr: [4]byte{127, 0, 0, 1}}); err != nil {
		return err
	}
	if err := unix.Listen(l, 1); err != nil {
		return err
	}
	addr, err := unix.Getsockname(l)
	if err != nil {
		return err
	}
	c, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	if err := unix.Connect(c, addr); err != nil {
		unix.Close(c)
		return err
	}
	a, _, err := unix.Accept4(l, unix.SOCK_CLOEXEC)
	if err != nil {
		unix.Close(c)
		return err
	}
	unix.Close(c)
	time.Sleep(50 * time.Millisecond) // the client's FIN reaches the server
	unix.Close(a)
	return nil
}
