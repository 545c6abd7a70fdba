package confine

import (
	"encoding/binary"
	"reflect"
	"slices"
	"strings"
	"testing"
)

func TestLaunchRoundTrip(t *testing.T) {
	plan, err := Build(Options{Programs: "/srv/cgi", Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}, Hidden: []string{"/srv/cgi/tls.key"}, HugePages: true, Root: true, RootMap: &RootMap{UID: 2000000042, GID: 3000}}, debian)
	if err != nil {
		t.Fatal(err)
	}
	if !plan.HugePages || !plan.Root || plan.RootMap == nil || *plan.RootMap != (RootMap{UID: 2000000042, GID: 3000}) || !slices.ContainsFunc(plan.Binds, func(b Bind) bool { return b.Mask }) {
		t.Fatalf("Build dropped Options.HugePages, Root, RootMap or Hidden: %+v", plan)
	}
	prep, err := Prepare(plan)
	if err != nil {
		t.Fatal(err)
	}
	ex := &Exec{
		Path: "/srv/cgi/hello", Args: []string{"/srv/cgi/hello", "", "a b"}, Env: []string{"A=1", "EMPTY="}, Dir: "/srv/cgi",
		Credential: Credential{UID: 2000000001, GID: 2000000000, Groups: []uint32{5, 6}},
	}
	frame := prep.Frame()
	if n := binary.LittleEndian.Uint32(frame); int(n) != len(frame)-4 {
		t.Fatalf("plan frame length %d, body %d", n, len(frame)-4)
	}
	gotPlan, gotFilter, err := DecodePlan(frame[4:])
	if err != nil {
		t.Fatalf("DecodePlan: %v", err)
	}
	// The plain frame is a cell's that is not resident; the resident
	// frame differs from it in that alone.
	if !reflect.DeepEqual(prep.Hidden(), []string{"/srv/cgi/tls.key"}) {
		t.Errorf("Hidden() = %q, want the masked file", prep.Hidden())
	}
	// A mask's Hides stays with the daemon.
	sent := *plan
	sent.Binds = slices.Clone(plan.Binds)
	for i := range sent.Binds {
		sent.Binds[i].Hides = ""
	}
	fresh := sent
	fresh.Resident = false
	if !reflect.DeepEqual(gotPlan, &fresh) {
		t.Errorf("plan:\n got %+v\nwant %+v", gotPlan, &fresh)
	}
	if !plan.Resident || prep.ResidentFrame() == nil {
		t.Fatalf("a plan with a PID namespace of its own: Resident %v, resident frame %d bytes", plan.Resident, len(prep.ResidentFrame()))
	}
	if gotPlan, _, err := DecodePlan(prep.ResidentFrame()[4:]); err != nil || !reflect.DeepEqual(gotPlan, &sent) {
		t.Errorf("resident plan: %v\n got %+v\nwant %+v", err, gotPlan, &sent)
	}
	if _, _, err := DecodePlan([]byte("CGL1{}")); err == nil || !strings.Contains(err.Error(), "bad magic") {
		t.Errorf("an older frame: %v", err)
	}
	for i := len(launchMagic); i < len(frame)-4; i++ {
		if _, _, err := DecodePlan(frame[4 : 4+i]); err == nil {
			t.Fatalf("DecodePlan of %d of %d bytes: no error", i, len(frame)-4)
		}
	}
	if _, _, err := DecodePlan(append(frame[4:len(frame):len(frame)], 0)); err == nil || !strings.Contains(err.Error(), "after the end") {
		t.Errorf("plan frame with a trailing byte: %v", err)
	}
	// The filter travels in the frame: the whole assembled program, the
	// root map's (setns of a user namespace allowed).
	if filter, _ := FilterFor(plan, false); !reflect.DeepEqual(gotFilter, filter) {
		t.Errorf("plan frame carries %d filter instructions, want the %d of FilterFor, unchanged", len(gotFilter), len(filter))
	}
	if filter, _ := Filter(); reflect.DeepEqual(gotFilter, filter) {
		t.Errorf("a root map's plan frame carries Filter, which refuses setns of a user namespace")
	}
	msg, err := EncodeExec(ex)
	if err != nil {
		t.Fatal(err)
	}
	if n := binary.LittleEndian.Uint32(msg); int(n) != len(msg)-4 {
		t.Fatalf("exec frame length %d, body %d", n, len(msg)-4)
	}
	body := msg[4:]
	gotExec, err := DecodeExec(body)
	if err != nil {
		t.Fatalf("DecodeExec: %v", err)
	}
	if !reflect.DeepEqual(gotExec, ex) {
		t.Errorf("exec:\n got %+v\nwant %+v", gotExec, ex)
	}
	// Every truncation and a trailing byte are errors, never a panic.
	for i := 0; i < len(body); i++ {
		if _, err := DecodeExec(body[:i]); err == nil {
			t.Fatalf("DecodeExec of %d of %d bytes: no error", i, len(body))
		}
	}
	if _, err := DecodeExec(append(body, 0)); err == nil || !strings.Contains(err.Error(), "after the end") {
		t.Errorf("trailing byte: %v", err)
	}
	// A NUL in a string is refused, as the C init refuses it: the kernel
	// would read the path, an argument or a variable only up to it.
	for _, bad := range []*Exec{{Path: "/bin/x\x00y"}, {Path: "/x", Args: []string{"a\x00"}}, {Path: "/x", Env: []string{"A=1\x00B=2"}}, {Path: "/x", Dir: "/\x00"}} {
		msg, err := EncodeExec(bad)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := DecodeExec(msg[4:]); err == nil || !strings.Contains(err.Error(), "NUL") {
			t.Errorf("DecodeExec of %+v: %v, want a NUL refused", bad, err)
		}
	}
	if _, err := EncodeExec(&Exec{Path: "/x", Env: []string{strings.Repeat("x", MaxLaunch)}}); err == nil {
		t.Error("EncodeExec over MaxLaunch: no error")
	}
}

func TestReportRoundTrip(t *testing.T) {
	for _, r := range []Report{
		{Kind: ReportExited, Code: 3},
		{Kind: ReportExited, Code: -1, Signal: 9},
		{Kind: ReportSpawn, Errno: 2, Msg: "fork/exec /x: no such file"},
		{Kind: ReportSetup, Msg: strings.Repeat("m", maxReportMsg)},
		{Kind: ReportReady},
		{Kind: ReportStarted},
		{Kind: ReportExited, Code: 0, Unclean: true},
	} {
		got, ok := DecodeReport(r.Encode())
		if !ok || !reflect.DeepEqual(got, r) {
			t.Errorf("round trip of %+v: %+v, %v", r, got, ok)
		}
	}
	long := Report{Kind: ReportSetup, Msg: strings.Repeat("m", 2*maxReportMsg)}
	if got, ok := DecodeReport(long.Encode()); !ok || len(got.Msg) != maxReportMsg {
		t.Errorf("long message: %d bytes, %v", len(got.Msg), ok)
	}
	for _, b := range [][]byte{nil, make([]byte, 15), make([]byte, 16), append([]byte{byte(ReportStarted + 1)}, make([]byte, 15)...)} {
		if r, ok := DecodeReport(b); ok {
			t.Errorf("DecodeReport(%v) = %+v, want none", b, r)
		}
	}
}

// TestResidentOnlyWithPIDNamespace: a resident cell's init ends what a
// request left through its PID namespace, so a plan sharing the host's
// has no resident frame, a route may ask for fresh cells, a preloader's
// plan is never resident, and a resident frame without the namespace is
// refused by the decoder (the C init checks the same).
func TestResidentOnlyWithPIDNamespace(t *testing.T) {
	for _, tc := range []struct {
		name string
		opts Options
		want bool
	}{
		{"every namespace", Options{Programs: "/srv/cgi"}, true},
		{"the host's PIDs", Options{Programs: "/srv/cgi", Share: NSPID}, false},
		{"fresh cells", Options{Programs: "/srv/cgi", Fresh: true}, false},
	} {
		plan, err := Build(tc.opts, debian)
		if err != nil {
			t.Fatal(err)
		}
		prep, err := Prepare(plan)
		if err != nil {
			t.Fatal(err)
		}
		if plan.Resident != tc.want || (prep.ResidentFrame() != nil) != tc.want {
			t.Errorf("%s: Resident %v, resident frame %v; want %v", tc.name, plan.Resident, prep.ResidentFrame() != nil, tc.want)
		}
	}
	plan, err := Build(Options{Programs: "/srv/cgi"}, debian)
	if err != nil {
		t.Fatal(err)
	}
	pre, err := plan.ForPreloader()
	if err != nil {
		t.Fatal(err)
	}
	if pre.Resident {
		t.Errorf("a preloader's plan is resident")
	}
	bad := *plan
	bad.Namespaces &^= NSPID
	bad.Seccomp = false
	frame, err := encodePlan(&bad, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := DecodePlan(frame[4:]); err == nil || !strings.Contains(err.Error(), "PID namespace") {
		t.Errorf("a resident frame without a PID namespace: %v, want refused", err)
	}
}
