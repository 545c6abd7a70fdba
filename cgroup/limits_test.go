package cgroup

import (
	"errors"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

func i64(v int64) *int64   { return &v }
func u64(v uint64) *uint64 { return &v }
func u16(v uint16) *uint16 { return &v }
func boolp(v bool) *bool   { return &v }
func set(kv ...string) []Setting {
	var s []Setting
	for i := 0; i+1 < len(kv); i += 2 {
		s = append(s, Setting{kv[i], kv[i+1]})
	}
	return s
}

func TestConvert(t *testing.T) {
	const mi = 1 << 20
	tests := []struct {
		name string
		r    *specs.LinuxResources
		want []Setting
		err  string // the LimitError field, "" = no error
	}{
		{name: "nil", r: nil, want: nil},
		{name: "empty", r: &specs.LinuxResources{}, want: nil},
		{
			name: "limit, swap, quota with period, pids",
			r: &specs.LinuxResources{
				Memory: &specs.LinuxMemory{Limit: i64(32 * mi), Swap: i64(32 * mi)},
				CPU:    &specs.LinuxCPU{Quota: i64(50000), Period: u64(100000)},
				Pids:   &specs.LinuxPids{Limit: i64(16)},
			},
			want: set("memory.max", "33554432", "memory.swap.max", "0", "cpu.max", "50000 100000", "pids.max", "16"),
		},
		{name: "memory limit -1 is max", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}}, want: set("memory.max", "max")},
		{name: "memory limit 0", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(0)}}, want: set("memory.max", "0")},
		{name: "memory limit below -1", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-2)}}, err: "memory.limit"},
		{name: "swap -1 is max", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 * mi), Swap: i64(-1)}}, want: set("memory.max", "33554432", "memory.swap.max", "max")},
		{name: "swap is memory+swap", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 * mi), Swap: i64(48 * mi)}}, want: set("memory.max", "33554432", "memory.swap.max", "16777216")},
		{name: "swap 0 is unset", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 * mi), Swap: i64(0)}}, want: set("memory.max", "33554432")},
		{name: "swap below limit", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(32 * mi), Swap: i64(16 * mi)}}, err: "memory.swap"},
		{name: "swap without limit", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Swap: i64(16 * mi)}}, err: "memory.swap"},
		{name: "swap with unlimited memory", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1), Swap: i64(16 * mi)}}, err: "memory.swap"},
		{name: "swap -1 with unlimited memory", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1), Swap: i64(-1)}}, want: set("memory.max", "max", "memory.swap.max", "max")},
		{name: "reservation", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Reservation: i64(8 * mi)}}, want: set("memory.low", "8388608")},
		{name: "kernel memory", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Kernel: i64(mi)}}, err: "memory.kernel"},
		{name: "kernel tcp", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{KernelTCP: i64(mi)}}, err: "memory.kernelTCP"},
		{name: "swappiness", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{Swappiness: u64(10)}}, err: "memory.swappiness"},
		{name: "disable oom killer", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{DisableOOMKiller: boolp(true)}}, err: "memory.disableOOMKiller"},
		{name: "oom killer enabled is fine", r: &specs.LinuxResources{Memory: &specs.LinuxMemory{DisableOOMKiller: boolp(false), UseHierarchy: boolp(true)}}, want: nil},
		{name: "quota without period", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000)}}, want: set("cpu.max", "50000 100000")},
		{name: "period without quota", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Period: u64(50000)}}, want: set("cpu.max", "max 50000")},
		{name: "quota -1", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-1), Period: u64(20000)}}, want: set("cpu.max", "max 20000")},
		{name: "quota 0 is unset", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(0)}}, want: nil},
		{name: "quota below kernel minimum", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(999)}}, err: "cpu.quota"},
		{name: "quota below -1", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(-5)}}, err: "cpu.quota"},
		{name: "period too small", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(5000), Period: u64(999)}}, err: "cpu.period"},
		{name: "period too large", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(5000), Period: u64(1000001)}}, err: "cpu.period"},
		{name: "burst after max", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Burst: u64(20000)}}, want: set("cpu.max", "50000 100000", "cpu.max.burst", "20000")},
		{name: "burst over quota", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Quota: i64(50000), Burst: u64(60000)}}, err: "cpu.burst"},
		{name: "burst without quota", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Burst: u64(1000)}}, want: set("cpu.max.burst", "1000")},
		{name: "shares default", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(1024)}}, want: set("cpu.weight", "100")},
		{name: "shares min", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(2)}}, want: set("cpu.weight", "1")},
		{name: "shares max", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(262144)}}, want: set("cpu.weight", "10000")},
		{name: "shares 0 unset", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(0)}}, want: nil},
		{name: "idle", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Idle: i64(1)}}, want: set("cpu.idle", "1")},
		{name: "not idle before its weight", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(1024), Idle: i64(0)}}, want: set("cpu.idle", "0", "cpu.weight", "100")},
		{name: "idle after its weight", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Shares: u64(1024), Idle: i64(1)}}, want: set("cpu.weight", "100", "cpu.idle", "1")},
		{name: "idle out of range", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Idle: i64(2)}}, err: "cpu.idle"},
		{name: "realtime", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{RealtimeRuntime: i64(1)}}, err: "cpu.realtimeRuntime"},
		{name: "cpuset", r: &specs.LinuxResources{CPU: &specs.LinuxCPU{Cpus: "0-1", Mems: "0"}}, want: set("cpuset.cpus", "0-1", "cpuset.mems", "0")},
		{name: "pids 0 is a limit", r: &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(0)}}, want: set("pids.max", "0")},
		{name: "pids -1", r: &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(-1)}}, want: set("pids.max", "max")},
		{name: "pids below -1", r: &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(-2)}}, err: "pids.limit"},
		{name: "pids nil limit", r: &specs.LinuxResources{Pids: &specs.LinuxPids{}}, want: nil},
		{
			name: "blkio",
			r: &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{
				Weight:                  u16(500),
				WeightDevice:            []specs.LinuxWeightDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Weight: u16(10)}},
				ThrottleReadBpsDevice:   []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 0}, Rate: 1000}},
				ThrottleWriteIOPSDevice: []specs.LinuxThrottleDevice{{LinuxBlockIODevice: specs.LinuxBlockIODevice{Major: 8, Minor: 16}, Rate: 0}},
			}},
			want: set("io.weight", "default 4950", "io.weight", "8:0 1", "io.max", "8:0 rbps=1000", "io.max", "8:16 wiops=max"),
		},
		{name: "blkio weight out of range", r: &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{Weight: u16(5)}}, err: "blockIO.weight"},
		{name: "blkio leaf weight", r: &specs.LinuxResources{BlockIO: &specs.LinuxBlockIO{LeafWeight: u16(500)}}, err: "blockIO.leafWeight"},
		{name: "hugetlb", r: &specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "2MB", Limit: 4 * mi}}}, want: set("hugetlb.2MB.max", "4194304")},
		{name: "hugetlb bad size", r: &specs.LinuxResources{HugepageLimits: []specs.LinuxHugepageLimit{{Pagesize: "../x", Limit: 1}}}, err: "hugepageLimits[0].pageSize"},
		{name: "devices", r: &specs.LinuxResources{Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}}}, err: "devices"},
		{name: "network", r: &specs.LinuxResources{Network: &specs.LinuxNetwork{}}, err: "network"},
		{
			name: "unified verbatim, sorted, after the rest",
			r: &specs.LinuxResources{
				Pids:    &specs.LinuxPids{Limit: i64(16)},
				Unified: map[string]string{"memory.high": "1048576", "cpu.max.burst": "1000", "cgroup.max.descendants": "10"},
			},
			want: set("pids.max", "16", "cgroup.max.descendants", "10", "cpu.max.burst", "1000", "memory.high", "1048576"),
		},
		{
			name: "unified replaces a converted write",
			r: &specs.LinuxResources{
				Memory:  &specs.LinuxMemory{Limit: i64(mi)},
				Unified: map[string]string{"memory.max": "max"},
			},
			want: set("memory.max", "max"),
		},
		{name: "unified path escape", r: &specs.LinuxResources{Unified: map[string]string{"../memory.max": "1"}}, err: "unified[../memory.max]"},
		{name: "unified no controller", r: &specs.LinuxResources{Unified: map[string]string{"max": "1"}}, err: "unified[max]"},
		{name: "unified cgroup.procs", r: &specs.LinuxResources{Unified: map[string]string{"cgroup.procs": "1"}}, err: "unified[cgroup.procs]"},
		{name: "unified cgroup.kill", r: &specs.LinuxResources{Unified: map[string]string{"cgroup.kill": "1"}}, err: "unified[cgroup.kill]"},
		{name: "unified subtree_control", r: &specs.LinuxResources{Unified: map[string]string{"cgroup.subtree_control": "+memory"}}, err: "unified[cgroup.subtree_control]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := Convert(tt.r)
			checkSettings(t, got, err, tt.want, tt.err)
		})
	}
}

func checkSettings(t *testing.T, got []Setting, err error, want []Setting, wantErr string) {
	t.Helper()
	if wantErr != "" {
		var le *LimitError
		if !errors.As(err, &le) || !errors.Is(err, ErrInvalidLimit) {
			t.Fatalf("err = %v, want a *LimitError for %s", err, wantErr)
		}
		if le.Field != wantErr {
			t.Fatalf("LimitError.Field = %q, want %q (%v)", le.Field, wantErr, err)
		}
		return
	}
	if err != nil {
		t.Fatalf("err = %v", err)
	}
	if !slices.Equal(got, want) {
		t.Fatalf("settings\n got %v\nwant %v", got, want)
	}
}

func TestCellSettings(t *testing.T) {
	tests := []struct {
		name string
		r    *specs.LinuxResources
		want []Setting
		err  string
	}{
		{name: "nil gets oom.group", r: nil, want: set("memory.oom.group", "1")},
		{
			name: "limit without swap gets swap.max 0",
			r:    &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20)}, Pids: &specs.LinuxPids{Limit: i64(8)}},
			want: set("memory.max", "1048576", "memory.swap.max", "0", "memory.oom.group", "1", "pids.max", "8"),
		},
		{
			name: "explicit swap kept",
			r:    &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20), Swap: i64(-1)}},
			want: set("memory.max", "1048576", "memory.swap.max", "max", "memory.oom.group", "1"),
		},
		{
			name: "unlimited memory gets no swap default",
			r:    &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(-1)}, CPU: &specs.LinuxCPU{Quota: i64(10000)}},
			want: set("memory.max", "max", "memory.oom.group", "1", "cpu.max", "10000 100000"),
		},
		{
			name: "unified oom.group 1 accepted",
			r:    &specs.LinuxResources{Unified: map[string]string{"memory.oom.group": "1"}},
			want: set("memory.oom.group", "1"),
		},
		{name: "unified oom.group 0 refused", r: &specs.LinuxResources{Unified: map[string]string{"memory.oom.group": "0"}}, err: "unified[memory.oom.group]"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := CellSettings(tt.r)
			checkSettings(t, got, err, tt.want, tt.err)
		})
	}
}

func TestTenantSettingsAddNothing(t *testing.T) {
	got, err := TenantSettings(&specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 30)}})
	checkSettings(t, got, err, set("memory.max", "1073741824"), "")
}

func TestSharesToWeight(t *testing.T) {
	tests := []struct{ shares, weight uint64 }{{0, 1}, {1, 1}, {2, 1}, {1024, 100}, {262144, 10000}, {1 << 30, 10000}, {512, 59}, {2048, 174}}
	for _, tt := range tests {
		if got := sharesToWeight(tt.shares); got != tt.weight {
			t.Errorf("sharesToWeight(%d) = %d, want %d", tt.shares, got, tt.weight)
		}
	}
}

func TestProfileKey(t *testing.T) {
	r := &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20)}}
	a, err := NewProfile("", r)
	if err != nil {
		t.Fatal(err)
	}
	b, err := NewProfile(DefaultTenant, &specs.LinuxResources{Memory: &specs.LinuxMemory{Limit: i64(1 << 20)}})
	if err != nil {
		t.Fatal(err)
	}
	if a.Key() != b.Key() {
		t.Errorf("same tenant and limits: keys %v != %v", a.Key(), b.Key())
	}
	c, err := NewProfile("other", r)
	if err != nil {
		t.Fatal(err)
	}
	if a.Key() == c.Key() {
		t.Errorf("different tenants share key %v", a.Key())
	}
	if got := a.Controllers(); !slices.Equal(got, []string{"memory"}) {
		t.Errorf("Controllers = %v", got)
	}
	if _, err := NewProfile("Bad.Name", r); !errors.Is(err, ErrInvalidName) {
		t.Errorf("bad tenant: err = %v, want ErrInvalidName", err)
	}
	if _, err := NewProfile("t", &specs.LinuxResources{Pids: &specs.LinuxPids{Limit: i64(-9)}}); !errors.Is(err, ErrInvalidLimit) {
		t.Errorf("bad limit: err = %v, want ErrInvalidLimit", err)
	}
}
