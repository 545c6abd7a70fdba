package main

import (
	"bytes"
	"context"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

func TestRunCheck(t *testing.T) {
	dir := t.TempDir()
	openToCells(t, dir)
	file := func(name, content string, mode os.FileMode) string {
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, []byte(content), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(path, mode); err != nil {
			t.Fatal(err)
		}
		return path
	}
	// Policies are 0600: check warns of one its cells could read.
	write := func(name, content string) string { return file(name, content, 0o600) }
	prog := file("prog", "#!/bin/sh\n", 0o755)
	file("notexec", "#!/bin/sh\n", 0o644)
	file("crlf", "#!/bin/sh\r\necho\r\n", 0o755)
	file("nointerp", "#!/nonexistent/sh\n", 0o755)
	file("unreadable", "#!/bin/sh\n", 0o711)
	file("garbage", "hello\n", 0o755)
	if err := os.Mkdir(filepath.Join(dir, "private"), 0o700); err != nil {
		t.Fatal(err)
	}
	file("private/prog", "#!/bin/sh\n", 0o755)
	// Programs that lead out of the cells' view: a symlink to a file
	// elsewhere (as /usr/local/bin/app -> /opt/app/bin/app), and a script
	// whose interpreter lies outside it; and a symlink that stays inside.
	for _, d := range []string{"bin", "elsewhere", "scripts", "interp"} {
		if err := os.Mkdir(filepath.Join(dir, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	file("elsewhere/real", "#!/bin/sh\n", 0o755)
	// A cell init of its own for the routes run as root (check only opens
	// it): the test binary has no cellgate-init beside it.
	cInit := "--init=" + file("cellgate-init", "", 0o755)
	file("bin/real", "#!/bin/sh\n", 0o755)
	file("interp/sh", "#!/bin/sh\n", 0o755)
	file("scripts/s", "#!"+filepath.Join(dir, "interp/sh")+"\n", 0o755)
	for link, target := range map[string]string{"bin/away": filepath.Join(dir, "elsewhere/real"), "bin/near": "real"} {
		if err := os.Symlink(target, filepath.Join(dir, link)); err != nil {
			t.Fatal(err)
		}
	}
	valid := write("valid.yaml", `version: 1
tenants: [{name: acme, memory: 256Mi, max_cells: 4, queue: 2, queue_timeout: 1s}]
routes:
  - {name: hello, match: {host: example.com, path: /hello, methods: [GET]}, tenant: acme, program: prog, memory: 32Mi, cpu: 0.5}
`)
	invalid := write("invalid.yaml", `version: 1
routes:
  - name: hello
    match: {path: /hello}
    program: prog
    memroy: 32Mi
    cpu: lots
`)
	route := func(name, program string) string {
		return write(name+".yaml", "version: 1\nroutes:\n  - {name: r, match: {path: /}, "+program+"}\n")
	}
	shared := t.TempDir() // a directory two tenants' routes mount
	os.Chmod(shared, 0o755)
	twoTenants := write("shared.yaml", "version: 1\ntenants: [{name: a}, {name: b}]\nroutes:\n"+
		"  - {name: w, match: {path: /w}, tenant: a, program: prog, mounts: [{source: "+shared+", target: /data, writable: true}]}\n"+
		"  - {name: o, match: {path: /o}, tenant: b, program: prog, mounts: [{source: "+shared+", target: /data}]}\n")
	alias := filepath.Join(t.TempDir(), "alias") // the policies' directory through a symlink
	if err := os.Symlink(dir, alias); err != nil {
		t.Fatal(err)
	}
	keyData := t.TempDir() // a directory holding a TLS key
	if err := os.WriteFile(keyData+"/key.pem", []byte("key"), 0o600); err != nil {
		t.Fatal(err)
	}
	rootData := t.TempDir() // a directory a route run as root writes to
	rootWarn := []string{"cellgate check: warning: route r runs as the host's root with seccomp: off and mounts[0] (" + rootData + ") writable: a set-uid file", "(fix: mount " + rootData + " nosuid on the host"}
	if mountedNosuid(rootData) {
		rootWarn = nil
	}
	tests := []struct {
		name       string
		args       []string
		wantCode   int
		wantOut    []string // substrings of stdout
		wantErr    []string // substrings of stderr
		wantNoWarn bool
		environ    []string
	}{
		{
			name: "valid", args: []string{valid}, wantCode: 0,
			wantOut: []string{
				"valid: 1 route(s), 1 tenant(s)",
				"acme    256Mi", // tenant row
				"hello  example.com  /hello  GET      acme    " + prog + "  32Mi    0     0.5  64    30s      flag      auto",
			},
			wantNoWarn: true,
		},
		{name: "missing program", args: []string{route("missing", "program: nothing-here")}, wantCode: 1,
			wantErr: []string{":3: routes[r].program: \"" + filepath.Join(dir, "nothing-here") + "\": ", "no such file", "(fix: install it"}},
		{name: "missing program, syntax only", args: []string{"--syntax-only", route("missing2", "program: nothing-here")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}, wantNoWarn: true},
		{name: "unknown user", args: []string{route("user", "program: prog, user: nosuchuser")}, wantCode: 1,
			wantErr: []string{`:3: routes[r].user: "nosuchuser": `, "unknown user nosuchuser"}},
		{name: "not executable", args: []string{route("notexec", "program: notexec")}, wantCode: 1,
			wantErr: []string{"routes[r].program", "the cells (uid 2000000000 gid 2000000000) cannot execute it (mode 0644", "chmod o+x"}},
		{name: "under a 0700 directory", args: []string{route("private", "program: private/prog")}, wantCode: 1,
			wantErr: []string{"cannot reach it: directory " + filepath.Join(dir, "private") + " (mode 0700", "chmod o+x " + filepath.Join(dir, "private")}},
		{name: "other uid range", args: []string{"--uid-range", "3000-3999", "--gid", "3000", route("notexec2", "program: notexec")}, wantCode: 1,
			wantErr: []string{"the cells (uid 3000 gid 3000) cannot execute it"}},
		// The shared settings serve refuses, check refuses too: before, it
		// said "valid" and checked the routes as a gid of root's.
		{name: "gid of root's", args: []string{"--gid", "0", route("gid0", "program: prog")}, wantCode: 2,
			wantErr: []string{`--gid="0": `, "root's group"}},
		{name: "gid -1 from the environment", args: []string{route("gidneg", "program: prog")}, environ: []string{"CELLGATE_GID=4294967295"}, wantCode: 2,
			wantErr: []string{`CELLGATE_GID="4294967295": `, "no change"}},
		{name: "uid range with root", args: []string{"--uid-range", "0-10", route("uid0", "program: prog")}, wantCode: 2,
			wantErr: []string{`--uid-range="0-10": `, "root"}},
		{name: "unenforced not a controller", args: []string{route("unenf", "program: prog")}, environ: []string{"CELLGATE_UNENFORCED=bogus"}, wantCode: 2,
			wantErr: []string{`CELLGATE_UNENFORCED="bogus": "bogus" is not one of`}},
		// Before, check said "valid" and every request was a 127.
		{name: "program a symlink out of the view", args: []string{route("away", "program: bin/away")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", "program " + filepath.Join(dir, "bin/away") + " is a symlink to " + filepath.Join(dir, "elsewhere/real") + ", which is not in the cell's view", "(fix: "}},
		{name: "interpreter out of the view", args: []string{route("interp", "program: scripts/s")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", "its interpreter " + filepath.Join(dir, "interp/sh") + " (the #! line) is not in the cell's view"}},
		{name: "program a symlink within its directory", args: []string{route("near", "program: bin/near")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}, wantNoWarn: true},
		{name: "program a symlink out of the view, filesystem: host", args: []string{route("awayhost", "program: bin/away, filesystem: host")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}},
		{name: "CRLF interpreter line", args: []string{route("crlf", "program: crlf")}, wantCode: 1,
			wantErr: []string{"carriage return", "dos2unix"}},
		{name: "missing interpreter", args: []string{route("nointerp", "program: nointerp")}, wantCode: 1,
			wantErr: []string{"its interpreter /nonexistent/sh (the #! line) does not exist (fix: install /nonexistent/sh"}},
		{name: "script not readable", args: []string{route("unreadable", "program: unreadable")}, wantCode: 1,
			wantErr: []string{"cannot read it (mode 0711", "chmod o+r"}},
		{name: "not a program", args: []string{route("garbage", "program: garbage")}, wantCode: 1,
			wantErr: []string{"neither a script with a #! line nor an ELF executable"}},
		{name: "mount source missing", args: []string{route("nomount", "program: prog, mounts: [{source: /nonexistent-cellgate, target: /data}]")}, wantCode: 1,
			wantErr: []string{":3: routes[r].confinement: ", "mounts: source /nonexistent-cellgate (bound at /data): no such file", "(fix: create it, or correct or remove the mount)"}},
		{name: "rootfs missing", args: []string{route("norootfs", "program: prog, rootfs: /nonexistent-cellgate")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", "rootfs /nonexistent-cellgate: no such file"}},
		// Each source missing is a problem of its own, not the first
		// alone (one fix, one check, the next one found).
		{name: "rootfs and a mount source missing", args: []string{route("norootfsmount",
			"program: prog, rootfs: /nonexistent-cellgate, mounts: [{source: /nonexistent-cellgate-2, target: /data}]")}, wantCode: 1,
			wantErr: []string{"rootfs /nonexistent-cellgate: no such file", "mounts: source /nonexistent-cellgate-2 (bound at /data): no such file"}},
		{name: "the policy in a writable mount", args: []string{route("polrw", "program: prog, mounts: [{source: "+dir+", target: /data, writable: true}]")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", filepath.Join(dir, "polrw.yaml") + " lies in the writable mount of " + dir + " (at /data)", "move it out of " + dir}},
		{name: "the policy in a writable mount through a symlink", args: []string{route("polrwlink", "program: prog, mounts: [{source: "+alias+", target: /data, writable: true}]")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", filepath.Join(dir, "polrwlink.yaml") + " lies in the writable mount of " + alias + " (at /data)"}},
		{name: "the TLS key in a writable mount", args: []string{"--tls-key", keyData + "/key.pem", route("keyrw", "program: prog, mounts: [{source: "+keyData+", target: /data, writable: true}]")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", keyData + "/key.pem lies in the writable mount of " + keyData + " (at /data)"}},
		{name: "the TLS key of the environment in a writable mount", args: []string{route("keyrwenv", "program: prog, mounts: [{source: "+keyData+", target: /data, writable: true}]")},
			environ: []string{"CELLGATE_TLS_KEY=" + keyData + "/key.pem"}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", keyData + "/key.pem lies in the writable mount of " + keyData + " (at /data)"}},
		{name: "the TLS key in a read-only mount", args: []string{"--tls-key", keyData + "/key.pem", route("keyro", "program: prog, mounts: [{source: "+keyData+", target: /data}]")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}, wantNoWarn: true},
		{name: "nofile above fs.nr_open", args: []string{route("nofile", "program: prog, nofile: "+strconv.FormatInt(nrOpen()+1, 10))}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", "nofile " + strconv.FormatInt(nrOpen()+1, 10) + ": above this host's fs.nr_open (" + strconv.FormatInt(nrOpen(), 10) + ")", "(fix: nofile: " + strconv.FormatInt(nrOpen(), 10) + " or less, or raise fs.nr_open)"}},
		{name: "nofile at fs.nr_open", args: []string{route("nofilemax", "program: prog, nofile: "+strconv.FormatInt(nrOpen(), 10))}, wantCode: 0, wantNoWarn: true},
		{name: "system dirs over the cell's /tmp", args: []string{route("sysdirs", "program: prog, system_dirs: [/usr, /tmp, /var]")}, wantCode: 1,
			wantErr: []string{":3: routes[r].confinement: system directory /tmp: the cell's own /tmp is there; choose another\n",
				":3: routes[r].confinement: system directory /var: the cell's own /var/tmp is there; choose another\n", "2 problem(s)"}},
		{name: "a writable mount another tenant shows", args: []string{twoTenants}, wantCode: 1,
			wantErr: []string{`:4: routes[w].mounts[0]: "` + shared + `": route o (line 5) shows ` + shared + ` (its mounts[0]) of tenant b, this writable mount`, "(fix: give each tenant a directory of its own"}},
		{name: "root with a writable mount, seccomp off", args: []string{route("rootrw", "program: prog, user: root, allow_root: true, host_namespaces: [user], seccomp: off, mounts: [{source: "+rootData+", target: /data, writable: true}]")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}, wantErr: rootWarn},
		{name: "root of its user namespace with a writable mount, seccomp off", args: []string{cInit, route("nsrootrw", "program: prog, user: root, allow_root: true, seccomp: off, mounts: [{source: "+rootData+", target: /data, writable: true}]")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}, wantNoWarn: true},
		{name: "root with a writable mount, filtered", args: []string{cInit, route("rootrwf", "program: prog, user: root, allow_root: true, mounts: [{source: "+rootData+", target: /data, writable: true}]")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"}, wantNoWarn: true},
		{name: "root of its user namespace without cellgate-init", args: []string{route("nsrootnoinit", "program: prog, user: root, allow_root: true")}, wantCode: 1,
			wantErr: []string{":3: routes[r].user: \"root (allow_root)\": a program run as root runs as root of a user namespace of its own, which only cellgate-init can start, and the cells' init would be cellgate itself", "(fix: install cellgate-init beside cellgate (make build) or pass --init, or set host_namespaces: [user])"}},
		{name: "root of its user namespace, cellgate-init from the environment", args: []string{route("nsrootenv", "program: prog, user: root, allow_root: true")},
			environ: []string{"CELLGATE_INIT=" + strings.TrimPrefix(cInit, "--init=")}, wantCode: 0, wantNoWarn: true},
		{name: "--init naming no file", args: []string{"--init", filepath.Join(dir, "no-init"), valid}, wantCode: 1,
			wantErr: []string{`--init (CELLGATE_INIT): "` + filepath.Join(dir, "no-init") + `": --init: open the cell init's executable`, "no such file"}},
		{name: "a fixed uid of the per-cell range", args: []string{route("uidinrange", "program: prog, user: 2000000005")}, wantCode: 1,
			wantErr: []string{`:3: routes[r].user: "uid 2000000005": the route's user is one of the uids cellgate gives its cells, one per cell: uid 2000000005 is in the per-cell uid range 2000000000-2000065535`,
				"(fix: run the route under a uid outside --uid-range (CELLGATE_UID_RANGE), or use user: auto)"}},
		{name: "a fixed uid outside the per-cell range", args: []string{"--uid-range", "1000000000-1000065535", route("uidoutrange", "program: prog, user: 2000000005")}, wantCode: 0, wantNoWarn: true},
		{name: "host filesystem", args: []string{route("fshost", "program: prog, filesystem: host")}, wantCode: 0, wantNoWarn: true},
		{name: "a policy the cells could read", args: []string{file("readable.yaml", "version: 1\nroutes:\n  - {name: r, match: {path: /}, program: prog}\n", 0o644)}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"},
			wantErr: []string{"cellgate check: warning: " + filepath.Join(dir, "readable.yaml") + " (mode 0644, gid ", "is readable by the cells of route r, whose view shows " + dir + ": a cover hides it, but a rename over it detaches the cover", "(fix: chmod 600 " + filepath.Join(dir, "readable.yaml") + ", or keep it out of the routes' views)"}},
		{name: "fork app_dir under /tmp", args: []string{route("forktmp", "driver: fork, runtime: python-wsgi, app: \"a:app\", app_dir: .")}, wantCode: 1,
			wantErr: []string{"routes[r].confinement: ", "fresh tmpfs", "move it out of /tmp"}},
		{name: "fork app_dir under /tmp, syntax only", args: []string{"--syntax-only", route("forktmp2", "driver: fork, runtime: python-wsgi, app: \"a:app\", app_dir: .")}, wantCode: 0},
		{name: "dir route", args: []string{route("dirok", "dir: .")}, wantCode: 0, wantNoWarn: true},
		// A dir route's programs that its cells could not run are
		// warned of (they come and go between loads: not problems).
		{name: "dir route, a program a symlink out of the view", args: []string{route("dirbin", "dir: bin")}, wantCode: 0,
			wantOut: []string{"valid: 1 route(s)"},
			wantErr: []string{"cellgate check: warning: route r (line 3): program " + filepath.Join(dir, "bin/away") + " is a symlink to " + filepath.Join(dir, "elsewhere/real") + ", which is not in the cell's view", "a request for it fails with 127, not found\n"}},
		{name: "dir route, a script whose interpreter is out of the view", args: []string{route("dirscripts", "dir: scripts")}, wantCode: 0,
			wantErr: []string{"cellgate check: warning: route r (line 3): program " + filepath.Join(dir, "scripts/s") + ": its interpreter " + filepath.Join(dir, "interp/sh") + " (the #! line) is not in the cell's view"}},
		{name: "dir route, a program a symlink out of the view, filesystem: host", args: []string{route("dirbinhost", "dir: bin, filesystem: host")}, wantCode: 0, wantNoWarn: true},
		{name: "dir route unreachable", args: []string{route("dirbad", "dir: private")}, wantCode: 1,
			wantErr: []string{"routes[r].dir", "cannot search it (mode 0700"}},
		{name: "dir route not a directory", args: []string{route("dirfile", "dir: prog")}, wantCode: 1,
			wantErr: []string{"not a directory"}},
		{name: "invalid", args: []string{invalid}, wantCode: 1, wantErr: []string{
			invalid + `:6: routes[hello].memroy: unknown key (fix: did you mean memory?)`,
			invalid + `:7: routes[hello].cpu: "lots": not a CPU amount`,
			"is not valid: 2 problem(s)",
		}},
		{name: "unreadable", args: []string{filepath.Join(dir, "nope.yaml")}, wantCode: 1, wantErr: []string{"nope.yaml", "no such file"}},
		{name: "no arguments", args: nil, wantCode: 2, wantErr: []string{"want one policy file, got 0", "usage: cellgate check"}},
		{name: "two arguments", args: []string{valid, valid}, wantCode: 2, wantErr: []string{"got 2 arguments"}},
		{name: "a flag after the file", args: []string{valid, "--syntax-only"}, wantCode: 2,
			wantErr: []string{"--syntax-only after the policy file: flags go before it (cellgate check --syntax-only " + valid + ")"}},
		{name: "unknown flag", args: []string{"-x", valid}, wantCode: 2, wantErr: []string{"flag provided but not defined"}},
		{name: "help", args: []string{"-h"}, wantCode: 0, wantOut: []string{"usage: cellgate check [--uid-range FIRST-LAST] [--gid GID] [--tls-key FILE] [--init FILE] [--syntax-only] POLICY"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out, errOut bytes.Buffer
			code := runCheck(tt.args, tt.environ, &out, &errOut)
			if code != tt.wantCode {
				t.Errorf("exit %d, want %d\nstdout:\n%s\nstderr:\n%s", code, tt.wantCode, &out, &errOut)
			}
			for _, s := range tt.wantOut {
				if !strings.Contains(out.String(), s) {
					t.Errorf("stdout lacks %q:\n%s", s, &out)
				}
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(errOut.String(), s) {
					t.Errorf("stderr lacks %q:\n%s", s, &errOut)
				}
			}
			if tt.wantNoWarn && errOut.Len() > 0 {
				t.Errorf("stderr not empty:\n%s", &errOut)
			}
		})
	}
}

// check is reachable through the dispatcher.
func TestDispatchCheck(t *testing.T) {
	dir := t.TempDir()
	out, err := os.Create(filepath.Join(dir, "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	code := dispatch(context.Background(), []string{"check", "--syntax-only", filepath.Join("..", "..", "examples", "policy.yaml")}, stdio{out: out, err: out})
	data, _ := os.ReadFile(out.Name())
	if code != 0 || !strings.Contains(string(data), "valid: ") {
		t.Fatalf("cellgate check examples/policy.yaml: exit %d\n%s", code, data)
	}
}

func TestCanAccess(t *testing.T) {
	cell := sandbox.Credential{UID: 2000000000, GID: 2000000000, Groups: []uint32{50}}
	root := sandbox.Credential{}
	tests := []struct {
		name string
		c    sandbox.Credential
		f    fileOwner
		want uint32
		ok   bool
	}{
		{"other may execute", cell, fileOwner{mode: 0o755, regular: true}, accessExec, true},
		{"other may not", cell, fileOwner{mode: 0o750, regular: true}, accessExec, false},
		{"group by gid", cell, fileOwner{mode: 0o750, gid: 2000000000, regular: true}, accessExec, true},
		{"group by supplementary group", cell, fileOwner{mode: 0o750, gid: 50, regular: true}, accessExec, true},
		{"owner class wins over other", cell, fileOwner{mode: 0o007, uid: 2000000000, regular: true}, accessExec, false},
		{"group class wins over other", cell, fileOwner{mode: 0o707, gid: 50, regular: true}, accessRead, false},
		{"read", cell, fileOwner{mode: 0o711, regular: true}, accessRead, false},
		{"search a 0700 directory", cell, fileOwner{mode: 0o700, dir: true}, accessExec, false},
		{"root reads anything", root, fileOwner{mode: 0o000, uid: 5, regular: true}, accessRead, true},
		{"root searches anything", root, fileOwner{mode: 0o000, dir: true}, accessExec, true},
		{"root executes only with an x bit", root, fileOwner{mode: 0o644, regular: true}, accessExec, false},
		{"root executes with one x bit", root, fileOwner{mode: 0o610, regular: true}, accessExec, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if got := canAccess(tt.c, tt.f, tt.want); got != tt.ok {
				t.Errorf("canAccess(%+v, %v, %d) = %v, want %v", tt.c, tt.f, tt.want, got, tt.ok)
			}
		})
	}
}

// TestRouteCheckTenantGID: check and serve verify a route as its cells
// run, with the tenant's gid when it has one. A directory of the
// tenant's group only (0750 root:4242) was refused by both, though the
// cells reach it, and the same directory with the shared gid passed,
// every request then failing to spawn.
func TestRouteCheckTenantGID(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("chown to another group needs root")
	}
	dir := t.TempDir()
	openToCells(t, dir)
	private := filepath.Join(dir, "tenantonly")
	if err := os.Mkdir(private, 0o750); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(private, 0, 4242); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(private, "prog"), []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		name, gid string
		shared    uint32 // --gid
		wantErr   string // "" when valid
	}{
		{"tenant's gid", "4242", sandbox.DefaultGID, ""},
		{"tenant's gid, other shared", "4242", 4343, ""},
		{"shared gid is not the tenant's", "4343", 4242, "the cells (uid 2000000000 gid 4343) cannot reach it: directory " + private},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "policy.yaml")
			writeFile(t, path, "version: 1\ntenants: [{name: t, gid: "+tc.gid+"}]\nroutes:\n  - {name: r, match: {path: /}, tenant: t, program: "+private+"/prog}\n")
			var out, errOut bytes.Buffer
			code := runCheck([]string{"--gid", strconv.Itoa(int(tc.shared)), path}, nil, &out, &errOut)
			if tc.wantErr == "" && code != 0 || tc.wantErr != "" && (code != 1 || !strings.Contains(errOut.String(), tc.wantErr)) {
				t.Errorf("check: exit %d, want %q (none: exit 0)\n%s", code, tc.wantErr, &errOut)
			}
			pol, err := policy.Load(path)
			if err != nil {
				t.Fatal(err)
			}
			d := &daemon{cfg: &serveConfig{Policy: path, Isolation: isolationCells}, log: slog.New(slog.DiscardHandler)}
			d.cfg.GID, d.cfg.UIDs = tc.shared, uidRange(sandbox.DefaultUIDRange)
			_, err = d.buildSpecs(context.Background(), pol)
			if tc.wantErr == "" && err != nil || tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Errorf("serve's buildSpecs: %v, want %q", err, tc.wantErr)
			}
		})
	}
}
