package main

import (
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/cgroup"
	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
	"golang.org/x/sys/unix"
)

// TestVerifyWritableMounts: a writable mount that another tenant's route
// shows (the directory itself, one below it, one holding it: its system
// directories included), or that another route of the same tenant shows
// something below (its program), is refused, on the writing route's
// mount, naming the other route; what tenants keep apart, or what one
// tenant's routes share as is, passes.
func TestVerifyWritableMounts(t *testing.T) {
	dir := t.TempDir()
	real := filepath.Join(dir, "real")
	if err := os.Mkdir(real, 0o755); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(dir, "link")
	if err := os.Symlink(real, link); err != nil {
		t.Fatal(err)
	}
	// route is a route of tenant with extra keys.
	route := func(name, tenant, keys string) string {
		return "  - {name: " + name + ", match: {path: /" + name + "}, tenant: " + tenant + ", " + keys + "}\n"
	}
	rw := func(src string) string { return "mounts: [{source: " + src + ", target: /data, writable: true}]" }
	ro := func(src string) string { return "mounts: [{source: " + src + ", target: /data}]" }
	for _, tc := range []struct {
		name   string
		routes string
		want   []string // substrings of the error; none: valid
	}{
		{"tenants apart", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/a/data")) + route("o", "b", "program: /srv/b/bin/p, "+ro("/srv/b/data")), nil},
		{"one tenant's routes share a writable directory", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/a/data")) + route("o", "a", "program: /srv/a/bin/q, "+rw("/srv/a/data")), nil},
		{"one tenant's route shows what holds the other's writable mount", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/a/data")) + route("o", "a", "program: /srv/a/bin/q, "+ro("/srv/a")), nil},
		{"a route's own program in its writable mount", route("w", "a", "program: /srv/a/data/p, "+rw("/srv/a/data")), nil},
		{"another tenant's host filesystem", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/a/data")) + route("o", "b", "program: /srv/b/bin/p, filesystem: host"), nil},
		{"another tenant's mount of the same directory", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/shared")) + route("o", "b", "program: /srv/b/bin/p, "+ro("/srv/shared")),
			[]string{`routes[w].mounts[0]: "/srv/shared": route o (line 5) shows /srv/shared (its mounts[0]) of tenant b, this writable mount`, "(fix: give each tenant a directory of its own"}},
		{"another tenant's mount below it", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv")) + route("o", "b", "program: /opt/b/p, "+ro("/srv/b/data")),
			[]string{`routes[w].mounts[0]: "/srv": route o (line 5) shows /srv/b/data (its mounts[0]) of tenant b, from inside this writable mount`}},
		{"another tenant's program below it", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv")) + route("o", "b", "program: /srv/b/bin/p"),
			[]string{`route o (line 5) shows /srv/b/bin (its program) of tenant b, from inside this writable mount`}},
		{"another tenant's mount holding it", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/a/data")) + route("o", "b", "program: /opt/b/p, "+ro("/srv")),
			[]string{`route o (line 5) shows /srv (its mounts[0]) of tenant b, which holds this writable mount`}},
		{"every tenant's system directories", route("w", "a", "program: /srv/a/bin/p, "+rw("/etc/app")) + route("o", "b", "program: /srv/b/bin/p"),
			[]string{`routes[w].mounts[0]: "/etc/app": route o (line 5) shows /etc (its system_dirs) of tenant b, which holds this writable mount`}},
		{"another tenant's mount through a symlink", route("w", "a", "program: /srv/a/bin/p, "+rw(link)) + route("o", "b", "program: /srv/b/bin/p, "+ro(real)),
			[]string{`routes[w].mounts[0]: "` + real + `": route o (line 5) shows ` + real + ` (its mounts[0]) of tenant b, this writable mount`}},
		{"the same tenant's program below it", route("w", "a", "program: /srv/a/bin/p, "+rw("/srv/a")) + route("o", "a", "program: /srv/a/admin/p"),
			[]string{`routes[w].mounts[0]: "/srv/a": route o (line 5) shows /srv/a/admin (its program) from inside this writable mount: this route's cells could replace it`, "(fix: move /srv/a/admin out of /srv/a, or make this mount read-only)"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p, err := policy.Parse("p.yaml", []byte("version: 1\ntenants: [{name: a}, {name: b}]\nroutes:\n"+tc.routes))
			if err != nil {
				t.Fatal(err)
			}
			wantErrHas(t, "verifyWritableMounts", verifyWritableMounts(p, routeViews(p, resolvePath)), tc.want)
		})
	}
}

// TestServeRefusesSharedWritableMount: serve refuses, at load, a policy
// whose writable mount another tenant's route shows, as check does.
func TestServeRefusesSharedWritableMount(t *testing.T) {
	shared := t.TempDir()
	path := filepath.Join(t.TempDir(), "policy.yaml")
	writeFile(t, path, "version: 1\ntenants: [{name: a}, {name: b}]\nroutes:\n"+
		"  - {name: w, match: {path: /w}, tenant: a, program: /bin/true, mounts: [{source: "+shared+", target: /data, writable: true}]}\n"+
		"  - {name: o, match: {path: /o}, tenant: b, program: /bin/true, mounts: [{source: "+shared+", target: /data}]}\n")
	pol, err := policy.Load(path)
	if err != nil {
		t.Fatal(err)
	}
	d := &daemon{cfg: &serveConfig{Policy: path, Isolation: isolationCells, Shared: Shared{GID: sandbox.DefaultGID, UIDs: uidRange(sandbox.DefaultUIDRange)}}, log: slog.New(slog.DiscardHandler)}
	if _, err := d.buildSpecs(context.Background(), pol); err == nil || !strings.Contains(err.Error(), "routes[w].mounts[0]: \""+shared+"\": route o (line 5) shows "+shared+" (its mounts[0]) of tenant b") {
		t.Errorf("serve's buildSpecs: %v, want the writable mount refused, naming route o", err)
	}
}

// TestExposedDaemonFiles: a daemon file is named when a route's cells
// see it (in their view, or the host's files) and its mode lets them read
// it (others', or a group the cells run with), and only then.
func TestExposedDaemonFiles(t *testing.T) {
	shown, hidden := t.TempDir(), t.TempDir()
	const cellGID, tenantGID, otherGID = 2000000000, 3000, 4000
	pol := func(routes string) *policy.Policy {
		p, err := policy.Parse("p.yaml", []byte("version: 1\ntenants: [{name: a, gid: 3000}]\nroutes:\n"+routes))
		if err != nil {
			t.Fatal(err)
		}
		return p
	}
	confined := pol("  - {name: r, match: {path: /}, tenant: a, program: /bin/true, mounts: [{source: " + shown + ", target: /data}]}\n")
	host := pol("  - {name: h, match: {path: /}, tenant: a, program: /bin/true, filesystem: host}\n")
	for _, tc := range []struct {
		name string
		p    *policy.Policy
		dir  string
		mode os.FileMode
		gid  int
		want string // a substring of the one warning; "": none
	}{
		{"readable by others in a view", confined, shown, 0o644, 0, "is readable by the cells of route r, whose view shows " + shown},
		{"readable by the tenant's group", confined, shown, 0o640, tenantGID, "(mode 0640, gid 3000)"},
		{"readable by the cells' shared group", confined, shown, 0o640, cellGID, "(mode 0640, gid 2000000000)"},
		{"readable by another group", confined, shown, 0o640, otherGID, ""},
		{"0600", confined, shown, 0o600, 0, ""},
		{"out of every view", confined, hidden, 0o644, 0, ""},
		{"the host's files", host, hidden, 0o644, 0, "is readable by the cells of route h, which see the host's files (filesystem: host)"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			f := filepath.Join(tc.dir, "policy.yaml")
			writeFile(t, f, "version: 1\n")
			if err := os.Chmod(f, tc.mode); err != nil {
				t.Fatal(err)
			}
			if tc.gid != 0 {
				if err := os.Chown(f, -1, tc.gid); err != nil {
					t.Skipf("chown: %v (needs root)", err)
				}
			}
			got := exposedDaemonFiles(tc.p, routeViews(tc.p, resolvePath), []string{f}, cellGID)
			switch {
			case tc.want == "" && len(got) != 0:
				t.Errorf("got %q, want none", got)
			case tc.want != "" && (len(got) != 1 || !strings.Contains(got[0], tc.want) || !strings.Contains(got[0], "(fix: chmod 600 "+f+", or keep it out of the routes' views)")):
				t.Errorf("got %q, want one holding %q and the fix", got, tc.want)
			}
		})
	}
}

// TestRootSetuidMounts: a route run as the host's root without the
// seccomp filter is warned of for each writable mount whose host file
// system is not mounted nosuid, with the fix; read-only mounts, routes
// under other users, routes run as root of a user namespace of their own
// (their files are a uid of the range's), routes under the filter (which
// refuses set-uid modes) and nosuid file systems are not.
func TestRootSetuidMounts(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`version: 1
routes:
  - {name: root, match: {path: /a}, program: /bin/true, user: root, allow_root: true, host_namespaces: [user], seccomp: off, mounts: [{source: /srv/data, target: /data, writable: true}, {source: /srv/ro, target: /ro}, {source: /srv/safe, target: /safe, writable: true}]}
  - {name: nsroot, match: {path: /e}, program: /bin/true, user: root, allow_root: true, seccomp: off, mounts: [{source: /srv/data, target: /data, writable: true}]}
  - {name: filtered, match: {path: /d}, program: /bin/true, user: root, allow_root: true, mounts: [{source: /srv/more, target: /data, writable: true}]}
  - {name: auto, match: {path: /b}, program: /bin/true, mounts: [{source: /srv/data, target: /data, writable: true}]}
  - {name: hostroot, match: {path: /c}, program: /bin/true, user: root, allow_root: true, filesystem: host, host_namespaces: [user]}
`))
	if err != nil {
		t.Fatal(err)
	}
	nosuid := func(path string) bool { return path == "/srv/safe" }
	got := rootSetuidMounts(routeViews(p, func(s string) string { return s }), nosuid)
	if len(got) != 1 || !strings.Contains(got[0], "route root runs as the host's root with seccomp: off and mounts[0] (/srv/data) writable") || !strings.Contains(got[0], "fix: mount /srv/data nosuid on the host") {
		t.Errorf("warnings %q, want one for route root's mounts[0] with the fix", got)
	}
	if mountedNosuid("/nonexistent/path") {
		t.Error("mountedNosuid of a missing path: true, want false (it cannot tell)")
	}
	// Against the mount table: a mount point with nosuid in its options
	// and one without, where this machine has both.
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		t.Skip(err)
	}
	opts := map[string]string{} // the last mount on a point is the one seen
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		if len(f) >= 6 && !strings.Contains(f[4], `\`) { // no escaped character
			opts[f[4]] = f[5]
		}
	}
	for point, o := range opts {
		var st unix.Statfs_t
		if unix.Statfs(point, &st) != nil {
			continue
		}
		want := slices.Contains(strings.Split(o, ","), "nosuid")
		if got := mountedNosuid(point); got != want {
			t.Errorf("mountedNosuid(%s) = %v, its options %s", point, got, o)
		}
	}
}

// TestHugetlbfsMounts: a route is warned of for each source of its view
// that is on a hugetlbfs or holds one below it, naming where, with the
// fix; other sources and filesystem: host routes are not. onHugetlbfs is
// false for other file systems and missing paths, and agrees with the
// mount table where this machine has a hugetlbfs mounted, as does the
// finder over the mount table.
func TestHugetlbfsMounts(t *testing.T) {
	p, err := policy.Parse("p.yaml", []byte(`version: 1
routes:
  - {name: huge, match: {path: /a}, program: /bin/true, mounts: [{source: /dev/hugepages, target: /huge, writable: true}, {source: /srv/ro, target: /ro}]}
  - {name: above, match: {path: /d}, program: /bin/true, mounts: [{source: /srv/data, target: /data}]}
  - {name: plain, match: {path: /b}, program: /bin/true, mounts: [{source: /srv/other, target: /data, writable: true}]}
  - {name: hosthuge, match: {path: /c}, program: /bin/true, filesystem: host}
`))
	if err != nil {
		t.Fatal(err)
	}
	find := hugetlbfsAmong([]string{"/dev/hugepages", "/srv/data/pages"})
	got := hugetlbfsMounts(routeViews(p, func(s string) string { return s }), find)
	if len(got) != 2 ||
		!strings.Contains(got[0], "route huge binds mounts[0] (/dev/hugepages), which shows the hugetlbfs at /dev/hugepages: its cells map huge pages of the host's pool") ||
		!strings.Contains(got[0], "fix: keep the hugetlbfs out of the route's view, or run cellgate where the hugetlb controller reaches its group") ||
		!strings.Contains(got[1], "route above binds mounts[0] (/srv/data), which shows the hugetlbfs at /srv/data/pages") {
		t.Errorf("warnings %q, want one for route huge's mounts[0] and one for route above's, with the fix", got)
	}
	for _, path := range []string{"/nonexistent/path", t.TempDir(), "/proc"} {
		if onHugetlbfs(path) {
			t.Errorf("onHugetlbfs(%s) = true, want false", path)
		}
	}
	points, err := cgroup.MountPoints("", "hugetlbfs")
	if err != nil {
		t.Skip(err)
	}
	host := hugetlbfsIn()
	for _, p := range points {
		if !onHugetlbfs(p) {
			t.Errorf("onHugetlbfs(%s) = false, a hugetlbfs in the mount table", p)
		}
		if at, ok := host(filepath.Dir(p)); !ok || !confine.Within(at, filepath.Dir(p)) {
			t.Errorf("the host's finder at %s: %q, %v; want a hugetlbfs below it (%s)", filepath.Dir(p), at, ok, p)
		}
	}
}
