package vm

import (
	"slices"
	"strings"
	"testing"
)

func TestMachineCommand(t *testing.T) {
	base := Machine{Kernel: "/k/vmlinuz", Initramfs: "/t/initrd", MemSize: "2G", CPUs: 2}
	for _, tc := range []struct {
		name    string
		m       func(Machine) Machine
		want    []string // each pair/flag must appear in order as a sublist
		notWant []string
	}{
		{
			name: "tcg",
			m:    func(m Machine) Machine { return m },
			want: []string{
				"-no-reboot", "-m 2G", "-smp 2", "-kernel /k/vmlinuz", "-initrd /t/initrd",
				"-accel tcg,thread=multi",
				"-fsdev local,id=hr,path=/,security_model=none,readonly=on,multidevs=remap",
				"-device virtio-9p-pci,fsdev=hr,mount_tag=hostroot",
			},
			notWant: []string{"-accel kvm", "-netdev"},
		},
		{
			name:    "kvm",
			m:       func(m Machine) Machine { m.KVM = true; return m },
			want:    []string{"-accel kvm", "-cpu host"},
			notWant: []string{"-accel tcg,thread=multi"},
		},
		{
			name: "forward",
			m: func(m Machine) Machine {
				m.Forwards = []Forward{{"127.0.0.1", 8080, 80}, {"127.0.0.1", 9090, 9090}}
				return m
			},
			want: []string{
				"-netdev user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:9090-:9090",
				"-device virtio-net-pci,netdev=net0,romfile=",
			},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			args := tc.m(base).Command()
			line := " " + strings.Join(args, " ") + " "
			for _, w := range tc.want {
				if !strings.Contains(line, " "+w+" ") {
					t.Errorf("command line lacks %q:\n%s", w, line)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(line, " "+w) {
					t.Errorf("command line has %q:\n%s", w, line)
				}
			}
			i := slices.Index(args, "-append")
			if i < 0 || i+1 >= len(args) {
				t.Fatalf("no -append in %q", args)
			}
			for _, w := range []string{"console=ttyS0", "panic=-1", "no_timer_check"} {
				if !slices.Contains(strings.Fields(args[i+1]), w) {
					t.Errorf("kernel command line %q lacks %s", args[i+1], w)
				}
			}
		})
	}
}

func TestParseForward(t *testing.T) {
	for _, tc := range []struct {
		in      string
		want    Forward
		wantErr bool
	}{
		{in: "127.0.0.1:8080:8080", want: Forward{"127.0.0.1", 8080, 8080}},
		{in: "127.0.0.1:18080:80", want: Forward{"127.0.0.1", 18080, 80}},
		{in: "8080:8080", wantErr: true},
		{in: ":8080:8080", wantErr: true},
		{in: "127.0.0.1:0:8080", wantErr: true},
		{in: "127.0.0.1:8080:65536", wantErr: true},
		{in: "127.0.0.1:http:8080", wantErr: true},
	} {
		t.Run(tc.in, func(t *testing.T) {
			got, err := ParseForward(tc.in)
			if tc.wantErr {
				if err == nil {
					t.Errorf("ParseForward(%q) = %+v, want an error", tc.in, got)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Errorf("ParseForward(%q) = %+v, %v; want %+v", tc.in, got, err, tc.want)
			}
		})
	}
}
