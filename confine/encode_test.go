package confine

import (
	"reflect"
	"strings"
	"testing"
)

func TestLaunchRoundTrip(t *testing.T) {
	plan, err := Build(Options{Programs: "/srv/cgi", Mounts: []Bind{{Source: "/srv/data", Target: "/data", Writable: true}}}, debian)
	if err != nil {
		t.Fatal(err)
	}
	prep, err := Prepare(plan)
	if err != nil {
		t.Fatal(err)
	}
	ex := &Exec{
		Path: "/srv/cgi/hello", Args: []string{"/srv/cgi/hello", "", "a b"}, Env: []string{"A=1", "EMPTY="}, Dir: "/srv/cgi",
		Credential: Credential{UID: 2000000001, GID: 2000000000, Groups: []uint32{5, 6}},
	}
	msg, err := prep.Launch(ex)
	if err != nil {
		t.Fatal(err)
	}
	gotPlan, gotExec, err := DecodeLaunch(msg)
	if err != nil {
		t.Fatalf("DecodeLaunch: %v", err)
	}
	if !reflect.DeepEqual(gotPlan, plan) {
		t.Errorf("plan:\n got %+v\nwant %+v", gotPlan, plan)
	}
	if !reflect.DeepEqual(gotExec, ex) {
		t.Errorf("exec:\n got %+v\nwant %+v", gotExec, ex)
	}
	// Every truncation and a trailing byte are errors, never a panic.
	for i := 0; i < len(msg); i++ {
		if _, _, err := DecodeLaunch(msg[:i]); err == nil {
			t.Fatalf("DecodeLaunch of %d of %d bytes: no error", i, len(msg))
		}
	}
	if _, _, err := DecodeLaunch(append(msg, 0)); err == nil || !strings.Contains(err.Error(), "after the end") {
		t.Errorf("trailing byte: %v", err)
	}
	if _, err := prep.Launch(&Exec{Path: "/x", Env: []string{strings.Repeat("x", MaxLaunch)}}); err == nil {
		t.Error("Launch over MaxLaunch: no error")
	}
}

func TestReportRoundTrip(t *testing.T) {
	for _, r := range []Report{
		{Kind: ReportExited, Code: 3},
		{Kind: ReportExited, Code: -1, Signal: 9},
		{Kind: ReportSpawn, Errno: 2, Msg: "fork/exec /x: no such file"},
		{Kind: ReportSetup, Msg: strings.Repeat("m", maxReportMsg)},
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
	for _, b := range [][]byte{nil, make([]byte, 15), make([]byte, 16), append([]byte{9}, make([]byte, 15)...)} {
		if r, ok := DecodeReport(b); ok {
			t.Errorf("DecodeReport(%v) = %+v, want none", b, r)
		}
	}
}
