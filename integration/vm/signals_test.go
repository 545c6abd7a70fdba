package vm

import (
	"bytes"
	"context"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/cellgate/cellgate/integration/vm/internal/vmtest"
)

func TestControlLine(t *testing.T) {
	for _, sig := range []syscall.Signal{syscall.SIGHUP, syscall.SIGINT, syscall.SIGTERM} {
		got, err := parseControlLine(controlLine(sig))
		if err != nil || got != sig {
			t.Errorf("parseControlLine(controlLine(%v)) = %v, %v", sig, got, err)
		}
	}
	for _, bad := range []string{"", "vmrun-signal", "vmrun-signal x\n", "vmrun-signal 0\n", "vmrun-signal 99\n", "noise 1\n"} {
		if _, err := parseControlLine(bad); err == nil {
			t.Errorf("parseControlLine(%q) succeeded", bad)
		}
	}
}

func TestForwardSignalsGuestSide(t *testing.T) {
	// The guest's reader signals the program: here, a child sleeping.
	p, err := os.StartProcess("/bin/sleep", []string{"sleep", "60"}, &os.ProcAttr{})
	if err != nil {
		t.Fatal(err)
	}
	in := strings.NewReader("line noise\n" + controlLine(syscall.SIGTERM))
	var log bytes.Buffer
	forwardSignals(in, p.Pid, &log)
	st, err := p.Wait()
	if err != nil {
		t.Fatal(err)
	}
	if ws := st.Sys().(syscall.WaitStatus); !ws.Signaled() || ws.Signal() != syscall.SIGTERM {
		t.Errorf("program ended with %v, want killed by SIGTERM", st)
	}
}

// lineWaiter is a console that says when a line containing want appeared.
type lineWaiter struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	want string
	seen chan struct{}
	once sync.Once
}

func (w *lineWaiter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.buf.Write(p)
	if strings.Contains(w.buf.String(), w.want) {
		w.once.Do(func() { close(w.seen) })
	}
	return len(p), nil
}

func (w *lineWaiter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

func runWithSignals(t *testing.T, mode string, send func(chan<- os.Signal, *lineWaiter)) (int, error, string, string) {
	t.Helper()
	vmtest.UseFakeQEMU(t, QEMUBinary, mode)
	sigs := make(chan os.Signal, 4)
	out := &lineWaiter{want: "ready", seen: make(chan struct{})}
	var log bytes.Buffer
	done := make(chan struct{})
	var code int
	var err error
	go func() {
		defer close(done)
		code, err = Run(context.Background(), Options{
			Args: []string{"/bin/prog"}, Dir: "/", Mem: "2G", CPUs: 2, Timeout: time.Minute,
			CacheDir: vmtest.KernelCache(t, GuestModules), Accel: AccelTCG,
			Init: vmtest.StaticInit(t), Stdout: out, Log: &log, Signals: sigs,
		})
	}()
	send(sigs, out)
	<-done
	return code, err, out.String(), log.String()
}

func TestSignalsReachTheGuestProgram(t *testing.T) {
	code, err, out, log := runWithSignals(t, "control", func(sigs chan<- os.Signal, out *lineWaiter) {
		<-out.seen
		sigs <- syscall.SIGHUP
		sigs <- syscall.SIGHUP
		sigs <- syscall.SIGTERM
	})
	if err != nil || code != 0 {
		t.Fatalf("Run = %d, %v; want 0, nil (the program drained and exited)\nlog: %s", code, err, log)
	}
	want := "program got hangup (<nil>)\nprogram got hangup (<nil>)\nprogram got terminated (<nil>)\n"
	if !strings.Contains(out, want) {
		t.Errorf("console %q lacks %q", out, want)
	}
	if !strings.Contains(log, "passing terminated to the guest's program; send it again to kill the VM") {
		t.Errorf("log %q does not say the signal was passed on", log)
	}
}

func TestSecondInterruptKillsTheVM(t *testing.T) {
	_, err, _, _ := runWithSignals(t, "silent-control", func(sigs chan<- os.Signal, out *lineWaiter) {
		<-out.seen
		sigs <- syscall.SIGINT
		sigs <- syscall.SIGINT
	})
	if err == nil || !strings.Contains(err.Error(), "interrupted; VM killed: interrupt a second time") {
		t.Errorf("Run = %v, want the VM killed on the second interrupt", err)
	}
}

func TestInterruptBeforeTheGuestLivesKillsTheVM(t *testing.T) {
	_, err, _, _ := runWithSignals(t, "hang", func(sigs chan<- os.Signal, out *lineWaiter) {
		sigs <- syscall.SIGINT
	})
	if err == nil || !strings.Contains(err.Error(), "interrupted") {
		t.Errorf("Run = %v, want interrupted", err)
	}
}
