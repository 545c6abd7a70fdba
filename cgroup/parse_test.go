package cgroup

import (
	"errors"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestParseFlatKeyed(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    map[string]uint64
		wantErr bool
	}{
		{name: "cpu.stat", in: "usage_usec 312955\nuser_usec 200000\nsystem_usec 112955\nnr_periods 10\nnr_throttled 3\nthrottled_usec 4500\nnr_bursts 0\nburst_usec 0\n",
			want: map[string]uint64{"usage_usec": 312955, "user_usec": 200000, "system_usec": 112955, "nr_periods": 10, "nr_throttled": 3, "throttled_usec": 4500, "nr_bursts": 0, "burst_usec": 0}},
		{name: "memory.events", in: "low 0\nhigh 0\nmax 18\noom 1\noom_kill 2\noom_group_kill 1\n",
			want: map[string]uint64{"low": 0, "high": 0, "max": 18, "oom": 1, "oom_kill": 2, "oom_group_kill": 1}},
		{name: "cgroup.events", in: "populated 1\nfrozen 0\n", want: map[string]uint64{"populated": 1, "frozen": 0}},
		{name: "max value", in: "limit max\n", want: map[string]uint64{"limit": ^uint64(0)}},
		{name: "empty", in: "", want: map[string]uint64{}},
		{name: "no trailing newline", in: "a 1", want: map[string]uint64{"a": 1}},
		{name: "no value", in: "usage_usec\n", wantErr: true},
		{name: "not a number", in: "usage_usec x\n", wantErr: true},
		{name: "negative", in: "usage_usec -1\n", wantErr: true},
		{name: "plus sign", in: "usage_usec +1\n", wantErr: true},
		{name: "largest", in: "a 18446744073709551615\n", want: map[string]uint64{"a": ^uint64(0)}},
		{name: "over 64 bits", in: "a 18446744073709551616\n", wantErr: true},
		{name: "21 digits", in: "a 000000000000000000001\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseFlatKeyed([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && !maps.Equal(got, tt.want) {
				t.Fatalf("got %v, want %v", got, tt.want)
			}
		})
	}
}

// TestReadUsageAllocates: a cell's accounting is read at the end of every
// request; reading it allocates nothing per value (it allocated a map, its
// keys and a buffer per file).
func TestReadUsageAllocates(t *testing.T) {
	files := map[string]string{
		"cpu.stat":      "usage_usec 312955\nuser_usec 200000\nsystem_usec 112955\nnr_periods 10\nnr_throttled 3\nthrottled_usec 4500\nnr_bursts 0\nburst_usec 0\n",
		"memory.peak":   "1048576\n",
		"memory.events": "low 0\nhigh 0\nmax 18\noom 1\noom_kill 2\noom_group_kill 1\n",
		"pids.peak":     "3\n",
		"pids.events":   "max 0\n",
		"io.stat":       "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n",
	}
	read := func(i int, buf []byte) ([]byte, error) { return buf[:copy(buf, files[acctFiles[i]])], nil }
	var u Usage
	allocs := testing.AllocsPerRun(100, func() { u, _ = readUsage("/cell", read) })
	if allocs > 2 {
		t.Errorf("readUsage allocates %.0f times, want at most 2", allocs)
	}
	if u.CPUUsageUsec != 312955 || u.OOMKill != 2 || u.MemoryPeak != 1048576 || u.IOWriteBytes != 8192 || len(u.Missing) != 0 {
		t.Errorf("readUsage = %+v", u)
	}
}

func TestPopulated(t *testing.T) {
	tests := []struct {
		in      string
		want    bool
		wantErr bool
	}{
		{"populated 0\nfrozen 0\n", false, false},
		{"populated 1\nfrozen 0\n", true, false},
		{"frozen 0\n", false, true},
		{"populated\n", false, true},
	}
	for _, tt := range tests {
		got, err := populated([]byte(tt.in))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("populated(%q) = %v, %v; want %v, err %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestIOTotals(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		r, w    uint64
		wantErr bool
	}{
		{name: "empty", in: ""},
		{name: "two devices", in: "8:0 rbytes=4096 wbytes=8192 rios=1 wios=2 dbytes=0 dios=0\n8:16 rbytes=1 wbytes=2 rios=1 wios=1 dbytes=5 dios=1\n", r: 4097, w: 8194},
		{name: "missing wbytes", in: "253:0 rbytes=10 rios=1\n", r: 10},
		{name: "bad number", in: "8:0 rbytes=x wbytes=1\n", wantErr: true},
		{name: "not key=value", in: "8:0 rbytes\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, w, err := ioTotals([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if !tt.wantErr && (r != tt.r || w != tt.w) {
				t.Fatalf("got %d/%d, want %d/%d", r, w, tt.r, tt.w)
			}
		})
	}
}

func TestParseSingle(t *testing.T) {
	if v, err := parseSingle([]byte("33554432\n")); err != nil || v != 33554432 {
		t.Errorf("parseSingle = %d, %v", v, err)
	}
	if v, err := parseSingle([]byte("max\n")); err != nil || v != ^uint64(0) {
		t.Errorf("parseSingle(max) = %d, %v", v, err)
	}
	if _, err := parseSingle([]byte("")); err == nil {
		t.Error("parseSingle(empty): no error")
	}
}

// The host's mountinfo: hybrid layout, cgroup2 at /sys/fs/cgroup/unified.
const hybridMountinfo = `22 1 0:21 / /sys rw,nosuid,nodev,noexec,relatime - sysfs sysfs rw
30 22 0:27 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
31 30 0:28 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
34 30 0:31 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 30 0:37 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
`

func TestParseMountinfo(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    mountInfo
		wantErr bool
	}{
		{name: "hybrid", in: hybridMountinfo, want: mountInfo{Point: "/sys/fs/cgroup/unified", Root: "/"}},
		{name: "unified with optional fields", in: "35 24 0:30 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 master:2 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot\n",
			want: mountInfo{Point: "/sys/fs/cgroup", Root: "/"}},
		{name: "container bind of a subtree", in: "700 690 0:30 /system.slice/docker-1.scope /sys/fs/cgroup ro,nosuid - cgroup2 cgroup rw\n",
			want: mountInfo{Point: "/sys/fs/cgroup", Root: "/system.slice/docker-1.scope"}},
		{name: "escaped space", in: `41 30 0:37 / /mnt/cg\0402 rw - cgroup2 none rw` + "\n", want: mountInfo{Point: "/mnt/cg 2", Root: "/"}},
		{name: "fstype named like the source is not it", in: "41 30 0:37 / /mnt rw - tmpfs cgroup2 rw\n", wantErr: true},
		{name: "none", in: "22 1 0:21 / /sys rw - sysfs sysfs rw\n", wantErr: true},
		{name: "short line", in: "garbage\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseMountinfo([]byte(tt.in))
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Fatalf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestParseProcCgroup(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr bool
	}{
		{name: "hybrid host", in: "9:name=systemd:/\n4:memory:/process_api/x\n0::/\n", want: "/"},
		{name: "unified", in: "0::/system.slice/cellgate.service\n", want: "/system.slice/cellgate.service"},
		{name: "v1 only", in: "4:memory:/x\n1:cpu:/\n", wantErr: true},
		{name: "relative", in: "0::x\n", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := parseProcCgroup([]byte(tt.in))
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %q, %v; want %q, wantErr %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestGroupDir(t *testing.T) {
	tests := []struct {
		name    string
		m       mountInfo
		cg      string
		want    string
		wantErr bool
	}{
		{name: "root mount", m: mountInfo{"/sys/fs/cgroup", "/"}, cg: "/system.slice/cg.service", want: "/sys/fs/cgroup/system.slice/cg.service"},
		{name: "own is root", m: mountInfo{"/sys/fs/cgroup/unified", "/"}, cg: "/", want: "/sys/fs/cgroup/unified"},
		{name: "subtree mount", m: mountInfo{"/sys/fs/cgroup", "/docker/1"}, cg: "/docker/1/app", want: "/sys/fs/cgroup/app"},
		{name: "outside subtree", m: mountInfo{"/sys/fs/cgroup", "/docker/1"}, cg: "/docker/2", wantErr: true},
		{name: "outside namespace", m: mountInfo{"/sys/fs/cgroup", "/"}, cg: "/../../x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := groupDir(tt.m, tt.cg)
			if (err != nil) != tt.wantErr || got != tt.want {
				t.Fatalf("got %q, %v; want %q, wantErr %v", got, err, tt.want, tt.wantErr)
			}
		})
	}
}

func TestValidName(t *testing.T) {
	tests := []struct {
		name string
		ok   bool
	}{
		{"a", true}, {"default", true}, {"t-1_x", true}, {"0abc", true}, {strings.Repeat("a", 63), true},
		{"", false}, {strings.Repeat("a", 64), false}, {"-a", false}, {"_probe", false}, {"A", false},
		{"a.b", false}, {"a/b", false}, {"..", false}, {".", false}, {"cgroup.procs", false}, {"a b", false}, {"é", false},
	}
	for _, tt := range tests {
		err := ValidName(tt.name)
		if (err == nil) != tt.ok {
			t.Errorf("ValidName(%q) = %v, want ok %v", tt.name, err, tt.ok)
		}
		if err != nil && !errors.Is(err, ErrInvalidName) {
			t.Errorf("ValidName(%q) = %v, not ErrInvalidName", tt.name, err)
		}
	}
}

func TestMountpoint(t *testing.T) {
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	mi := "25 30 0:22 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs rw\n" +
		"35 25 0:30 / /sys/fs/cgroup/un\\040ified rw,nosuid shared:9 - cgroup2 cgroup2 rw\n"
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(mi), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := Mountpoint(proc)
	if err != nil || got != "/sys/fs/cgroup/un ified" {
		t.Fatalf("Mountpoint = %q, %v; want %q", got, err, "/sys/fs/cgroup/un ified")
	}
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(mi[:strings.Index(mi, "\n")+1]), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Mountpoint(proc); err == nil {
		t.Fatal("Mountpoint without a cgroup2 line: no error")
	}
}

// TestMountPoints: every mount of the type, in order, escapes undone; a
// type named like another's source is not it; none is no error.
func TestMountPoints(t *testing.T) {
	proc := t.TempDir()
	if err := os.MkdirAll(filepath.Join(proc, "self"), 0o755); err != nil {
		t.Fatal(err)
	}
	mi := "25 30 0:22 / /dev/hugepages rw,relatime shared:5 - hugetlbfs hugetlbfs rw,pagesize=2M\n" +
		"26 30 0:23 / /srv rw - ext4 /dev/sda2 rw\n" +
		"27 26 0:24 / /srv/huge\\0401G rw - hugetlbfs none rw,pagesize=1G\n" +
		"28 26 0:25 / /srv/tmp rw - tmpfs hugetlbfs rw\n"
	if err := os.WriteFile(filepath.Join(proc, "self", "mountinfo"), []byte(mi), 0o644); err != nil {
		t.Fatal(err)
	}
	got, err := MountPoints(proc, "hugetlbfs")
	if want := []string{"/dev/hugepages", "/srv/huge 1G"}; err != nil || !slices.Equal(got, want) {
		t.Errorf("MountPoints(hugetlbfs) = %q, %v; want %q", got, err, want)
	}
	if got, err := MountPoints(proc, "nfs"); err != nil || len(got) != 0 {
		t.Errorf("MountPoints(nfs) = %q, %v; want none, no error", got, err)
	}
	if _, err := MountPoints(filepath.Join(proc, "missing"), "hugetlbfs"); err == nil {
		t.Error("MountPoints without a mountinfo: no error")
	}
}

// TestReadUsageFailedMissing: a file that cannot be read, or parsed, has
// its figures listed in Missing as well as in the error, so that a
// record leaves them out rather than showing zeros as measured. Before,
// only an absent file was listed.
func TestReadUsageFailedMissing(t *testing.T) {
	files := map[string]string{
		"cpu.stat":    "usage_usec 312955\nuser_usec 200000\nsystem_usec 112955\nnr_throttled 3\nthrottled_usec 4500\n",
		"memory.peak": "not a number\n",
		"pids.peak":   "3\n",
		"pids.events": "max 0\n",
		"io.stat":     "",
	}
	read := func(i int, buf []byte) ([]byte, error) {
		if acctFiles[i] == "memory.events" {
			return nil, unix.EIO
		}
		return buf[:copy(buf, files[acctFiles[i]])], nil
	}
	u, err := readUsage("/cell", read)
	if err == nil {
		t.Fatal("readUsage = nil error, want the failed reads")
	}
	if !slices.Contains(u.Missing, "memory.events") || !slices.Contains(u.Missing, "memory.peak") || u.CPUUsageUsec != 312955 {
		t.Errorf("readUsage = %+v; want memory.events and memory.peak missing, cpu.stat read", u)
	}
}
