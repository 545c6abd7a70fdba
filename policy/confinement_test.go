package policy

import (
	"reflect"
	"testing"
)

func TestParseConfinement(t *testing.T) {
	const src = `version: 1
tenants: [{name: acme, gid: 3000}]
routes:
  - name: full
    match: {path: /full}
    tenant: acme
    program: /srv/cgi/full
  - name: relaxed
    match: {path: /relaxed}
    program: /srv/cgi/relaxed
    network: host
    host_namespaces: [pid, uts]
    seccomp: off
    system_dirs: [/usr, /etc]
    mounts:
      - {source: /srv/data, target: /data, writable: true}
      - {source: shared}
    tmpfs_size: 16Mi
    nofile: 4096
    huge_pages: system
    cells: fresh
  - name: host
    match: {path: /host}
    program: /srv/cgi/host
    filesystem: host
  - name: reused
    match: {path: /reused}
    program: /srv/cgi/reused
    groups: reused
  - name: hostroot
    match: {path: /hostroot}
    program: /srv/cgi/hostroot
    user: root
    allow_root: true
    host_namespaces: [user]
`
	p, err := parse("/etc/cellgate/policy.yaml", "/etc/cellgate", []byte(src))
	if err != nil {
		t.Fatal(err)
	}
	if p.Tenants[0].GID != 3000 {
		t.Errorf("tenant gid = %d, want 3000", p.Tenants[0].GID)
	}
	want := []Confinement{
		{},
		{
			HostNetwork: true, HostNamespaces: []string{"pid", "uts"}, NoSeccomp: true, SystemDirs: []string{"/usr", "/etc"},
			Mounts:    []Mount{{Source: "/srv/data", Target: "/data", Writable: true}, {Source: "/etc/cellgate/shared", Target: "/etc/cellgate/shared"}},
			TmpfsSize: 16 << 20, NoFile: 4096, HugePages: true, FreshCells: true,
		},
		{HostFilesystem: true},
		{ReusedGroups: true},
		{HostNamespaces: []string{HostUserNamespace}},
	}
	for i, w := range want {
		if got := p.Routes[i].Confinement; !reflect.DeepEqual(got, w) {
			t.Errorf("route %s:\n got %+v\nwant %+v", p.Routes[i].Name, got, w)
		}
	}
	if s := p.Routes[0].Confinement.String(); s != "full" {
		t.Errorf("String of the default = %q", s)
	}
	if s := p.Routes[1].Confinement.String(); s != "network: host, host namespaces: pid uts, seccomp: off, huge_pages: system, cells: fresh, mount /srv/data:/data:rw, mount /etc/cellgate/shared:/etc/cellgate/shared:ro" {
		t.Errorf("String = %q", s)
	}
	if s := p.Routes[3].Confinement.String(); s != "groups: reused" {
		t.Errorf("String of groups: reused = %q", s)
	}
}

func TestParseConfinementProblems(t *testing.T) {
	const head = "version: 1\nroutes:\n  - name: a\n    match: {path: /}\n    program: /a\n" // the route's keys from line 6
	tests := []struct {
		name string
		src  string
		want []problem
	}{
		{"network", head + "    network: off\n", []problem{{6, "routes[a].network", "not one of none, host"}}},
		{"filesystem", head + "    filesystem: none\n", []problem{{6, "routes[a].filesystem", "not one of confined, host"}}},
		{"seccomp", head + "    seccomp: strict\n", []problem{{6, "routes[a].seccomp", "not one of default, off"}}},
		{"host namespace net", head + "    host_namespaces: [net]\n", []problem{{6, "routes[a].host_namespaces", "not a namespace cells may share"}}},
		{"host namespace twice", head + "    host_namespaces: [pid, pid]\n", []problem{{6, "routes[a].host_namespaces", "listed twice"}}},
		{"host user namespace not root", head + "    host_namespaces: [user]\n", []problem{{6, "routes[a].host_namespaces", "only a program run as root has a user namespace to share"}}},
		{"host user namespace of another user", head + "    allow_root: true\n    user: 1000\n    host_namespaces: [user]\n", []problem{{8, "routes[a].host_namespaces", "only a program run as root has a user namespace to share"}}},
		{"host user namespace of per-cell uids", head + "    allow_root: true\n    host_namespaces: [user]\n", []problem{{7, "routes[a].host_namespaces", "only a program run as root has a user namespace to share"}}},
		{"root with the host's filesystem, unsaid", head + "    allow_root: true\n    user: root\n    filesystem: host\n", []problem{{8, "routes[a].filesystem", "is the host's root, with every capability"}}},
		{"reused groups sharing the host's PIDs", head + "    host_namespaces: [pid]\n    groups: reused\n", []problem{{7, "routes[a].groups", "no effect with host_namespaces: [pid]"}}},
		{"system dir relative", head + "    system_dirs: [usr]\n", []problem{{6, "routes[a].system_dirs", "not an absolute clean path"}}},
		{"mount no source", head + "    mounts: [{target: /data}]\n", []problem{{6, "routes[a].mounts[0]", "no source"}}},
		{"mount bad target", head + "    mounts: [{source: /srv, target: data}]\n", []problem{{6, "routes[a].mounts[0].target", "not an absolute clean path"}}},
		{"mount unknown key", head + "    mounts: [{source: /srv, mode: rw}]\n", []problem{{6, "routes[a].mounts[0].mode", "unknown key"}}},
		{"tmpfs size", head + "    tmpfs_size: 1k\n", []problem{{6, "routes[a].tmpfs_size", "below the floor"}}},
		{"nofile", head + "    nofile: 3\n", []problem{{6, "routes[a].nofile", "out of range"}}},
		{"huge_pages", head + "    huge_pages: on\n", []problem{{6, "routes[a].huge_pages", "not one of off, system"}}},
		{"cells", head + "    cells: shared\n", []problem{{6, "routes[a].cells", "not one of resident, fresh"}}},
		{"groups", head + "    groups: shared\n", []problem{{6, "routes[a].groups", "not one of fresh, reused"}}},
		{"reused groups of fresh cells", head + "    cells: fresh\n    groups: reused\n", []problem{{7, "routes[a].groups", "no effect with cells: fresh"}}},
		{"mounts with host filesystem", head + "    filesystem: host\n    mounts: [{source: /srv}]\n", []problem{{7, "routes[a].mounts", "no effect with filesystem: host"}}},
		{"system_dirs with rootfs", head + "    rootfs: /srv/root\n    system_dirs: [/usr]\n", []problem{{7, "routes[a].system_dirs", "no effect with rootfs"}}},
		{"tenant gid 0", "version: 1\ntenants: [{name: t, gid: 0}]\nroutes:\n  - {name: a, match: {path: /}, tenant: t, program: /a}\n", []problem{{2, "tenants[t].gid", "out of range"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Parse("p.yaml", []byte(tt.src))
			requireProblems(t, err, tt.want)
		})
	}
}
