package cgroup

import (
	"slices"
	"testing"
)

func TestUpdateWrites(t *testing.T) {
	tests := []struct {
		name      string
		old, next []Setting
		want      []Setting
		unknown   []string
	}{
		{name: "first budget", next: set("memory.max", "1"), want: set("memory.max", "1")},
		{name: "same files", old: set("memory.max", "1", "pids.max", "5"), next: set("memory.max", "2", "pids.max", "6"), want: set("memory.max", "2", "pids.max", "6")},
		{name: "dropped limits reset first", old: set("memory.max", "1", "cpu.max", "1000 100000", "cpu.weight", "50"), next: set("pids.max", "6"),
			want: set("memory.max", "max", "cpu.max", "max", "cpu.weight", "100", "pids.max", "6")},
		{name: "io per device", old: set("io.max", "8:0 rbps=1", "io.max", "8:0 wbps=2", "io.weight", "8:0 50", "io.weight", "default 10"), next: set("io.max", "8:0 wbps=3"),
			want: set("io.max", "8:0 rbps=max", "io.weight", "8:0 default", "io.weight", "default 100", "io.max", "8:0 wbps=3")},
		{name: "hugetlb", old: set("hugetlb.2MB.max", "4096"), want: set("hugetlb.2MB.max", "max")},
		{name: "unknown unified file", old: set("memory.zswap.max", "0", "memory.high", "9"), want: set("memory.high", "max"), unknown: []string{"memory.zswap.max"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, unknown := updateWrites(tt.old, tt.next)
			if !slices.Equal(got, tt.want) || !slices.Equal(unknown, tt.unknown) {
				t.Fatalf("got %v (unknown %v)\nwant %v (unknown %v)", got, unknown, tt.want, tt.unknown)
			}
		})
	}
}
