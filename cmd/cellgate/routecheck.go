package main

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/cellgate/cellgate/confine"
	"github.com/cellgate/cellgate/policy"
	"github.com/cellgate/cellgate/sandbox"
)

// Routes that can never work are refused before the first request, by
// `cellgate check` and by `serve` at start-up and reload, as `nginx -t`
// does: the route's user must resolve, and its program (or dir) must be
// reachable, readable where the kernel needs to read it, and executable
// under the credentials its cells will run with, not those of cellgate
// (root). A script's interpreter line is checked the same way.
//
// The permission decision (canAccess) is pure: mode bits and owners
// against a credential. It does not see ACLs, LSMs or mount options
// (noexec): a route these refuse still fails on its first request, with
// the kernel's error in the log. What a dir route's requests name is
// checked per request instead (a missing program is a 404, see proxy).

// cellCredential is who a route's cells run as: the route's fixed user,
// else a per-cell uid of the range with the shared gid and no
// supplementary groups (every uid of the range is alike: none owns files).
// A fixed uid inside the range is refused (errUserInRange): the range's
// uids are handed to other routes' cells one by one, so that route's
// program would share a uid with them (signals, the per-user limits, the
// files each leaves).
func cellCredential(fixed *sandbox.Credential, uids sandbox.UIDRange, gid uint32) (sandbox.Credential, error) {
	if fixed != nil {
		if fixed.UID >= uids.First && uint64(fixed.UID) < uint64(uids.First)+uint64(uids.Count) {
			return *fixed, fmt.Errorf("%w: uid %d is in the per-cell uid range %s", errUserInRange, fixed.UID, uids)
		}
		return *fixed, nil
	}
	return sandbox.Credential{UID: uids.First, GID: gid}, nil
}

// errUserInRange: a route's fixed user is one of the per-cell uids.
var errUserInRange = errors.New("the route's user is one of the uids cellgate gives its cells, one per cell")

// cellGID is the group a route's per-cell uids run with: its tenant's gid
// when it has one (sandbox's cgi driver), else the shared one. A fork
// route's preloader and its children run with the shared gid.
func cellGID(pol *policy.Policy, r *policy.Route, shared uint32) uint32 {
	if g := tenantGID(pol, r); g != 0 && r.Fork == nil {
		return g
	}
	return shared
}

// groupFile is the host's group database, which a confined cell's view
// of /etc shows as it is.
const groupFile = "/etc/group"

// verifyGIDs refuses a gid the cells would run with (a tenant's gid:, or
// the shared --gid) that names a group of groupFile (/etc/group): a
// confined cell's view shows the host's /etc, so a cell running as, say,
// shadow's group could read /etc/shadow, and whatever else the group
// owns. A groupFile that cannot be read refuses nothing.
func verifyGIDs(p *policy.Policy, shared uint32, groupFile string) error {
	var probs []policy.Problem
	// One read of the group file for every gid asked about.
	want := map[uint32]bool{shared: shared != 0}
	for _, t := range p.Tenants {
		want[t.GID] = want[t.GID] || t.GID != 0
	}
	var ids []uint32 // the gid of each name namesWithID returns, in order
	names, _ := namesWithID(groupFile, func(id uint32) bool {
		if want[id] {
			ids = append(ids, id)
		}
		return want[id]
	})
	byID := map[uint32][]string{}
	for i, n := range names {
		byID[ids[i]] = append(byID[ids[i]], n)
	}
	group := func(gid uint32) string { return strings.Join(byID[gid], ", ") }
	const fix = "choose a gid no group of %s has (the cells' group must own nothing but what they may use)"
	if g := group(shared); shared != 0 && g != "" {
		probs = append(probs, policy.Problem{File: p.Source, Key: "--gid (CELLGATE_GID)", Value: strconv.FormatUint(uint64(shared), 10),
			Msg: fmt.Sprintf("the per-cell uids' group is the group %s of %s: the cells would get its access", g, groupFile),
			Fix: fmt.Sprintf(fix, groupFile)})
	}
	for _, t := range p.Tenants {
		if g := group(t.GID); t.GID != 0 && g != "" {
			probs = append(probs, policy.Problem{File: p.Source, Line: t.Line, Key: fmt.Sprintf("tenants[%s].gid", t.Name),
				Value: strconv.FormatUint(uint64(t.GID), 10),
				Msg:   fmt.Sprintf("tenant %s's gid is the group %s of %s: its cells would get that group's access", t.Name, g, groupFile),
				Fix:   fmt.Sprintf(fix, groupFile)})
		}
	}
	if len(probs) == 0 {
		return nil
	}
	return &policy.InvalidError{File: p.Source, Problems: probs}
}

// selfCredential is cellgate's own effective credentials.
func selfCredential() (sandbox.Credential, error) {
	c := sandbox.Credential{UID: uint32(os.Geteuid()), GID: uint32(os.Getegid())}
	groups, err := os.Getgroups()
	if err != nil {
		return c, fmt.Errorf("getgroups: %w", err)
	}
	for _, g := range groups {
		c.Groups = append(c.Groups, uint32(g))
	}
	return c, nil
}

// routeProblem is one route that can never work, as a policy problem
// (file:line: key: "value": what (fix: ...)).
func routeProblem(src string, r *policy.Route, key, value, msg, fix string) policy.Problem {
	return policy.Problem{File: src, Line: r.Line, Key: fmt.Sprintf("routes[%s].%s", r.Name, key), Value: value, Msg: msg, Fix: fix}
}

// verifyRoute checks r's user (resolved or its resolution error) and
// program or dir as cred. It returns every problem found.
func verifyRoute(src string, r *policy.Route, cred sandbox.Credential, userErr error) []policy.Problem {
	if errors.Is(userErr, confine.ErrNoSetpcap) {
		return []policy.Problem{routeProblem(src, r, "user", userString(r), userErr.Error(),
			"add CAP_SETPCAP to cellgate's capabilities (the unit's CapabilityBoundingSet, the container's), drop host_namespaces: [user], or run the route under another user")}
	}
	if errors.Is(userErr, confine.ErrNoUserNS) {
		return []policy.Problem{routeProblem(src, r, "user", userString(r), userErr.Error(),
			"allow setns of a user namespace (deploy/seccomp/cellgate.json does) and user namespaces (sysctl user.max_user_namespaces), set host_namespaces: [user] to run the program as the host's root, or run the route under another user")}
	}
	if errors.Is(userErr, errUserInRange) {
		return []policy.Problem{routeProblem(src, r, "user", userString(r), userErr.Error(),
			"run the route under a uid outside --uid-range (CELLGATE_UID_RANGE), or use user: auto")}
	}
	if userErr != nil {
		return []policy.Problem{routeProblem(src, r, "user", userString(r), userErr.Error(),
			"create the account, or name an existing user or uid, or use user: auto")}
	}
	who := credString(cred)
	if r.Fork != nil {
		// The preloader runs under a uid of the range with the shared gid,
		// as the cells do: it must execute the interpreter and search the
		// app's directory.
		if p := verifyPath(src, r, "python", r.Fork.Python, cred, who, false); p != nil {
			return []policy.Problem{*p}
		}
		if p := verifyPath(src, r, "app_dir", r.Fork.AppDir, cred, who, true); p != nil {
			return []policy.Problem{*p}
		}
		return nil
	}
	if r.Dir != "" {
		if p := verifyPath(src, r, "dir", r.Dir, cred, who, true); p != nil {
			return []policy.Problem{*p}
		}
		return nil
	}
	if p := verifyPath(src, r, "program", r.Program, cred, who, false); p != nil {
		return []policy.Problem{*p}
	}
	if p := verifyInterpreter(src, r, cred, who); p != nil {
		return []policy.Problem{*p}
	}
	return nil
}

// credString names a credential in messages.
func credString(c sandbox.Credential) string {
	s := fmt.Sprintf("uid %d gid %d", c.UID, c.GID)
	if len(c.Groups) > 0 {
		s += fmt.Sprintf(" groups %v", c.Groups)
	}
	return s
}

// verifyPath checks that path exists, is a directory (dir) or a regular
// file, that every directory above it can be searched by cred, and that
// cred can search the directory or execute the file.
func verifyPath(src string, r *policy.Route, key, path string, cred sandbox.Credential, who string, dir bool) *policy.Problem {
	real, err := filepath.EvalSymlinks(path)
	if err != nil {
		return ptr(routeProblem(src, r, key, path, fmt.Sprintf("%v", unwrapPath(err)), "install it, or correct the path (relative paths are resolved against the policy file's directory)"))
	}
	st, err := statOwner(real)
	if err != nil {
		return ptr(routeProblem(src, r, key, path, err.Error(), ""))
	}
	switch {
	case dir && !st.dir:
		return ptr(routeProblem(src, r, key, path, "not a directory", "name the directory of programs, or use program: for a single program"))
	case !dir && !st.regular:
		return ptr(routeProblem(src, r, key, path, "not a regular file", "name the program file itself"))
	}
	for d := filepath.Dir(real); ; d = filepath.Dir(d) {
		ds, err := statOwner(d)
		if err != nil {
			return ptr(routeProblem(src, r, key, path, err.Error(), ""))
		}
		if !canAccess(cred, ds, accessExec) {
			return ptr(routeProblem(src, r, key, path,
				fmt.Sprintf("the cells (%s) cannot reach it: directory %s (%s) is not searchable by them", who, d, ds),
				fmt.Sprintf("chmod o+x %s, or give the directory to the cells' group (chgrp %d %s; chmod g+x %s)", d, cred.GID, d, d)))
		}
		if d == "/" {
			break
		}
	}
	want, what := accessExec, "execute"
	if dir {
		what = "search"
	}
	if !canAccess(cred, st, want) {
		return ptr(routeProblem(src, r, key, path,
			fmt.Sprintf("the cells (%s) cannot %s it (%s)", who, what, st),
			fmt.Sprintf("chmod o+x %s, or give it to the cells' group (chgrp %d %s; chmod g+x %s)", real, cred.GID, real, real)))
	}
	return nil
}

// verifyInterpreter checks a script's "#!" line: the kernel needs to read
// the script for it, the line must not end in CR (a file saved with
// CRLF line ends names an interpreter "sh\r" that does not exist), and
// the interpreter must exist and be executable by cred. A file that is
// neither a script nor ELF cannot be executed at all.
func verifyInterpreter(src string, r *policy.Route, cred sandbox.Credential, who string) *policy.Problem {
	head, err := sandbox.ReadHead(r.Program, 256)
	if err != nil {
		return ptr(routeProblem(src, r, "program", r.Program, err.Error(), ""))
	}
	switch {
	case bytes.HasPrefix(head, []byte("\x7fELF")):
		return nil
	case !bytes.HasPrefix(head, []byte("#!")):
		return ptr(routeProblem(src, r, "program", r.Program, "neither a script with a #! line nor an ELF executable: the kernel cannot run it",
			"add an interpreter line such as #!/bin/sh, or build the program for this machine"))
	}
	real, _ := filepath.EvalSymlinks(r.Program)
	st, err := statOwner(real)
	if err == nil && !canAccess(cred, st, accessRead) {
		return ptr(routeProblem(src, r, "program", r.Program,
			fmt.Sprintf("a script must be readable by whoever runs it, and the cells (%s) cannot read it (%s)", who, st),
			fmt.Sprintf("chmod o+r %s, or give it to the cells' group (chgrp %d %s; chmod g+r %s)", real, cred.GID, real, real)))
	}
	interp, crlf, err := sandbox.Shebang(head)
	switch {
	case err != nil:
		return ptr(routeProblem(src, r, "program", r.Program, err.Error(), "write the interpreter line as #!/absolute/path [one argument]"))
	case crlf:
		return ptr(routeProblem(src, r, "program", r.Program,
			fmt.Sprintf("its interpreter line ends in a carriage return (CRLF line ends): the kernel looks for %q, which does not exist", interp+"\r"),
			"convert the file to LF line ends (dos2unix, or sed -i 's/\\r$//')"))
	}
	if _, err := os.Stat(interp); errors.Is(err, fs.ErrNotExist) {
		return ptr(routeProblem(src, r, "program", r.Program,
			fmt.Sprintf("its interpreter %s (the #! line) does not exist", interp),
			fmt.Sprintf("install %s, or correct the script's #! line", interp)))
	}
	if p := verifyPath(src, r, "program", interp, cred, who, false); p != nil {
		p.Value = r.Program
		p.Msg = fmt.Sprintf("its interpreter %s: %s", interp, p.Msg)
		return p
	}
	return nil
}

// fileOwner is what canAccess needs of a file.
type fileOwner struct {
	mode     fs.FileMode // permission bits
	uid, gid uint32
	dir      bool
	regular  bool
}

func (f fileOwner) String() string {
	return fmt.Sprintf("mode %04o, owner uid %d gid %d", uint32(f.mode.Perm()), f.uid, f.gid)
}

func statOwner(path string) (fileOwner, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return fileOwner{}, err
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	if !ok {
		return fileOwner{}, fmt.Errorf("stat %s: no owner", path)
	}
	return fileOwner{mode: fi.Mode().Perm(), uid: st.Uid, gid: st.Gid, dir: fi.IsDir(), regular: fi.Mode().IsRegular()}, nil
}

// The access kinds of canAccess, as in a mode's rwx bits.
const (
	accessRead uint32 = 4
	accessExec uint32 = 1
)

// canAccess decides, as the kernel's generic_permission does from the
// mode bits, whether c may access f for want (accessRead, accessExec):
// the owner class when c's uid owns f, else the group class when f's
// group is c's gid or one of its groups, else other. Root may read and
// search anything, and execute a file with any execute bit set.
func canAccess(c sandbox.Credential, f fileOwner, want uint32) bool {
	m := uint32(f.mode.Perm())
	if c.UID == 0 {
		return want != accessExec || f.dir || m&0o111 != 0
	}
	var bits uint32
	switch {
	case f.uid == c.UID:
		bits = m >> 6
	case f.gid == c.GID || slices.Contains(c.Groups, f.gid):
		bits = m >> 3
	default:
		bits = m
	}
	return bits&want == want
}

// unwrapPath drops the *PathError's operation ("lstat"), keeping the
// path and the cause.
func unwrapPath(err error) error {
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return fmt.Errorf("%s: %w", pe.Path, pe.Err)
	}
	return err
}

// withProblems adds the problems of more (a *policy.InvalidError) to err's
// (nil or a *policy.InvalidError), so that one run reports them all.
func withProblems(err, more error) error {
	var a, b *policy.InvalidError
	switch {
	case more == nil:
		return err
	case err == nil:
		return more
	case errors.As(err, &a) && errors.As(more, &b):
		return &policy.InvalidError{File: a.File, Problems: slices.Concat(a.Problems, b.Problems)}
	}
	return err
}

func ptr[T any](v T) *T { return &v }

// verifyRoutes checks every route of p as its cells' credentials
// (credOf), and returns the problems as one error listing them, or nil.
func verifyRoutes(p *policy.Policy, credOf func(*policy.Route) (sandbox.Credential, error)) error {
	var probs []policy.Problem
	for _, r := range p.Routes {
		cred, err := credOf(r)
		probs = append(probs, verifyRoute(p.Source, r, cred, err)...)
	}
	if len(probs) == 0 {
		return nil
	}
	return &policy.InvalidError{File: p.Source, Problems: probs}
}

// verifyRootInit refuses what serve would: a cell init it cannot open
// (--init naming no file), and, where the init would be cellgate itself
// (no cellgate-init beside cellgate, no --init), each of rootRoutes, run
// as root of a user namespace of its own, which only cellgate-init can
// start (serve fails each of its requests). openInit opens the init
// as serve does (openLauncher) and says whether it is cellgate itself.
func verifyRootInit(p *policy.Policy, rootRoutes []*policy.Route, initFlag string, openInit func(string) (bool, error)) error {
	goInit, err := openInit(initFlag)
	if err != nil {
		return &policy.InvalidError{File: p.Source, Problems: []policy.Problem{{File: p.Source, Key: "--init (CELLGATE_INIT)",
			Value: initFlag, Msg: err.Error(), Fix: "name cellgate-init's executable (make build puts it beside cellgate), or leave --init unset"}}}
	}
	if !goInit {
		return nil
	}
	var probs []policy.Problem
	for _, r := range rootRoutes {
		probs = append(probs, routeProblem(p.Source, r, "user", userString(r),
			"a program run as root runs as root of a user namespace of its own, which only "+confine.InitArg0+" can start, and the cells' init would be cellgate itself (no "+confine.InitArg0+" beside it, no --init)",
			"install "+confine.InitArg0+" beside cellgate (make build) or pass --init, or set host_namespaces: [user]"))
	}
	if len(probs) == 0 {
		return nil
	}
	return &policy.InvalidError{File: p.Source, Problems: probs}
}

// initIsCellgate opens the cell init as serve does and says whether it is
// cellgate itself.
func initIsCellgate(initFlag string) (bool, error) {
	l, self, err := openLauncher(initFlag)
	if err != nil {
		return false, err
	}
	l.Close()
	return self, nil
}
