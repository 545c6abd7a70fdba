package policy

import (
	"testing"
	"time"
)

func TestParseBytes(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "0", want: 0},
		{in: "1048576", want: 1 << 20},
		{in: "512k", want: 512000},
		{in: "512K", want: 512000},
		{in: "512Ki", want: 512 << 10},
		{in: "64Mi", want: 64 << 20},
		{in: "1G", want: 1e9},
		{in: "1Gi", want: 1 << 30},
		{in: "1.5Gi", want: 3 << 29},
		{in: "2Ti", want: 2 << 40},
		{in: "0.5k", want: 500},
		{in: "8388607Ti", want: 8388607 << 40},
		{in: "8388608Ti", wantErr: true}, // 2^63 overflows
		{in: "1.5", wantErr: true},       // half a byte
		{in: "0.0001k", wantErr: true},   // a tenth of a byte
		{in: "", wantErr: true},
		{in: "Mi", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "+1", wantErr: true},
		{in: "1 Mi", wantErr: true},
		{in: "1MB", wantErr: true},
		{in: "1e6", wantErr: true},
		{in: ".5Mi", wantErr: true},
		{in: "5.Mi", wantErr: true},
		{in: "max", wantErr: true},
		{in: "99999999999999999999", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseBytes(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseBytes(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseBytes(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestParseCPU(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		wantErr bool
	}{
		{in: "1", want: 1000},
		{in: "0.5", want: 500},
		{in: "1.5", want: 1500},
		{in: "1.25", want: 1250},
		{in: "0.001", want: 1},
		{in: "250m", want: 250},
		{in: "0", want: 0},
		{in: "max", want: 0},
		{in: "100000", want: MaxMilliCPU},
		{in: "100001", wantErr: true},
		{in: "100000.999", wantErr: true}, // the bound's whole part and a fraction past it
		{in: "100000.0", want: MaxMilliCPU},
		{in: "0.0005", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "1.5m", wantErr: true},
		{in: "m", wantErr: true},
		{in: "", wantErr: true},
		{in: "one", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseCPU(tt.in)
			if tt.wantErr {
				if err == nil {
					t.Fatalf("ParseCPU(%q) = %d, want an error", tt.in, got)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("ParseCPU(%q) = %d, %v; want %d", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestFormat(t *testing.T) {
	for _, tt := range []struct{ got, want string }{
		{FormatBytes(64 << 20), "64Mi"},
		{FormatBytes(1536 << 10), "1536Ki"},
		{FormatBytes(1 << 30), "1Gi"},
		{FormatBytes(1000), "1000"},
		{FormatBytes(0), "0"},
		{FormatCPU(1500), "1.5"},
		{FormatCPU(1000), "1"},
		{FormatCPU(250), "0.25"},
		{FormatCPU(10), "0.01"},
		{FormatCPU(0), "max"},
	} {
		if tt.got != tt.want {
			t.Errorf("got %q, want %q", tt.got, tt.want)
		}
	}
}

func TestLimitsResources(t *testing.T) {
	l := Limits{Memory: 64 << 20, Swap: 16 << 20, MilliCPU: 500, Pids: 32, Timeout: time.Second}
	res := l.Resources()
	if got := *res.Memory.Limit; got != 64<<20 {
		t.Errorf("Memory.Limit = %d, want %d", got, 64<<20)
	}
	if got := *res.Memory.Swap; got != 80<<20 {
		t.Errorf("Memory.Swap = %d, want memory+swap %d", got, 80<<20)
	}
	if *res.CPU.Quota != 50000 || *res.CPU.Period != 100000 {
		t.Errorf("CPU = %d/%d, want 50000/100000", *res.CPU.Quota, *res.CPU.Period)
	}
	if *res.Pids.Limit != 32 {
		t.Errorf("Pids.Limit = %d, want 32", *res.Pids.Limit)
	}

	none := Limits{Memory: 64 << 20}.Resources()
	if *none.Memory.Swap != 64<<20 {
		t.Errorf("no swap: Memory.Swap = %d, want the limit %d (memory+0)", *none.Memory.Swap, 64<<20)
	}
	if none.CPU != nil || none.Pids != nil {
		t.Errorf("unset CPU and pids: got %+v %+v, want nil (not controlled)", none.CPU, none.Pids)
	}
	// Each call returns fresh values.
	*res.Memory.Limit = 1
	if *l.Resources().Memory.Limit != 64<<20 {
		t.Error("Resources shares its pointers between calls")
	}
}

func TestTenantResources(t *testing.T) {
	tn := &Tenant{Memory: 1 << 30, CPUWeight: 200, MilliCPU: 1500, Pids: 100}
	res := tn.Resources()
	if *res.Memory.Limit != 1<<30 || res.Memory.Swap != nil {
		t.Errorf("Memory = %d swap %v, want %d and no swap setting", *res.Memory.Limit, res.Memory.Swap, 1<<30)
	}
	if res.Unified["cpu.weight"] != "200" || res.CPU.Shares != nil {
		t.Errorf("weight: Unified %v Shares %v, want cpu.weight=200 and no Shares", res.Unified, res.CPU.Shares)
	}
	if *res.CPU.Quota != 150000 || *res.Pids.Limit != 100 {
		t.Errorf("CPU quota %d pids %d, want 150000 and 100", *res.CPU.Quota, *res.Pids.Limit)
	}
	empty := (&Tenant{}).Resources()
	if empty.Memory != nil || empty.CPU != nil || empty.Pids != nil || empty.Unified != nil {
		t.Errorf("empty tenant: %+v, want nothing controlled", empty)
	}
}

func TestLimitsValidate(t *testing.T) {
	if err := DefaultLimits().Validate(); err != nil {
		t.Fatalf("DefaultLimits().Validate() = %v", err)
	}
	tests := []struct {
		name string
		edit func(*Limits)
	}{
		{"memory below floor", func(l *Limits) { l.Memory = MinMemory - 1 }},
		{"negative swap", func(l *Limits) { l.Swap = -1 }},
		{"cpu below floor", func(l *Limits) { l.MilliCPU = MinMilliCPU - 1 }},
		{"cpu above max", func(l *Limits) { l.MilliCPU = MaxMilliCPU + 1 }},
		{"no pids", func(l *Limits) { l.Pids = 0 }},
		{"pids above pids.max with the init's", func(l *Limits) { l.Pids = MaxPids - InitPids + 1 }},
		{"memory above the largest size", func(l *Limits) { l.Memory = MaxSize + 1 }},
		{"swap above the largest size", func(l *Limits) { l.Swap = MaxSize + 1 }},
		{"body above the largest size", func(l *Limits) { l.MaxBody = new(int64(MaxSize + 1)) }},
		{"zero timeout", func(l *Limits) { l.Timeout = 0 }},
		{"negative body", func(l *Limits) { l.MaxBody = new(int64(-1)) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := DefaultLimits()
			tt.edit(&l)
			if err := l.Validate(); err == nil {
				t.Fatalf("Validate(%+v) = nil, want an error", l)
			}
		})
	}
	l := DefaultLimits()
	l.Pids, l.Memory, l.Swap, l.MaxBody = MaxPids-InitPids, MaxSize, MaxSize, new(int64(MaxSize))
	if err := l.Validate(); err != nil {
		t.Fatalf("the ceilings: %v", err)
	}
	l = DefaultLimits()
	l.MilliCPU = 0 // no cap is valid
	if err := l.Validate(); err != nil {
		t.Fatalf("no CPU cap: %v", err)
	}
}
