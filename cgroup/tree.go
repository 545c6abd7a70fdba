package cgroup

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// Controllers cellgate enables top-down in its subtree when the kernel has
// them. memory, cpu and pids are required (see Options.Unenforced); io is
// used when available.
var (
	requiredControllers = []string{"memory", "cpu", "pids"}
	optionalControllers = []string{"io"}
)

// Names of cellgate's groups directly under the base.
const (
	supervisorDir = "supervisor"
	cellsDir      = "cells"
	probeDir      = "_probe" // not a valid tenant name, so it cannot collide
)

// Options configure Open. The zero value finds everything itself and uses
// the process's own group as the base.
type Options struct {
	// ProcRoot is where proc is mounted ("" = /proc); tests point it at a
	// fake.
	ProcRoot string
	// Mount is the cgroup2 mount point ("" = found in
	// <ProcRoot>/self/mountinfo).
	Mount string
	// Base is the absolute path of cellgate's base group on cgroupfs.
	// "" = the process's own group (or its parent when the process was
	// started in <unit>/supervisor by systemd's DelegateSubgroup=); the
	// daemon then moves itself into <base>/supervisor. Any other directory
	// under Mount is created if missing and the process is not moved
	// (tests and "cellgate run" use a private base like
	// <mount>/cellgate-<id>). Its parent must have the controllers enabled
	// in its cgroup.subtree_control.
	Base string
	// Unenforced names required controllers (of "memory", "cpu", "pids")
	// cellgate may run without: when one is missing, limits for it are not
	// written and cells report it in Cell.Unenforced. A listed controller
	// that is available is still enforced.
	Unenforced []string
	// MaxCells, when > 0, is written to <base>/cells/cgroup.max.descendants:
	// a kernel cap on tenants plus cells (mkdir beyond it fails with
	// EAGAIN, surfacing as ErrTooManyCells).
	MaxCells int
	// ProbeSpawn starts a process inside the group with directory fd
	// cgroupFD and waits for it, to prove clone3 CLONE_INTO_CGROUP works.
	// nil = SpawnTrue. sandbox may pass its own spawner.
	ProbeSpawn func(cgroupFD int) error
	// Logger receives start-up and teardown records (nil = discard).
	Logger *slog.Logger
	// SweepTimeout bounds the start-up sweep and Close (0 = 10s).
	SweepTimeout time.Duration

	// ops replaces cgroupfs mkdir/rmdir in tests (nil = the kernel).
	ops dirOps
}

// Tree is cellgate's delegated subtree:
//
//	<base>/supervisor/          the daemon (when base is its own group)
//	<base>/cells/               controllers enabled for tenants
//	<base>/cells/<tenant>/      tenant budget, controllers enabled for cells
//	<base>/cells/<tenant>/<id>  one request cell
//	<base>/cells/<tenant>/f<n>/ a fork route's group (RouteGroup): its
//	                            preloader's group and its cells
//
// A Tree is safe for concurrent use.
type Tree struct {
	log       *slog.Logger
	ops       dirOps
	base      string
	cells     string
	feat      Features
	enabled   []string
	allowed   []string // Options.Unenforced
	createdB  bool     // Open created base (a private base): Close removes it
	createdC  bool     // Open created cells/ (a failed Open removes it)
	nonce     string
	seq       atomic.Uint64
	sweepTime time.Duration
	// lockFD is the base's directory, flocked for as long as the Tree
	// lives (lock.go); -1 before locate took it.
	lockFD int
	// createErr is the error of the last failed cell creation, nil once
	// one succeeds again (Health).
	createErr atomic.Pointer[error]

	// acctAbsent marks the accounting files (acctFiles) absent in the
	// probe group at start-up: controller not enabled or kernel too old.
	// Cells do not open or read them; Usage lists them as Missing.
	acctAbsent [nAcct]bool

	// budgetMu orders the changes of budgets (Tenant, SetBudget,
	// SetBudgets, AddTenants, RemoveTenant, Close) and guards what they
	// wrote (Tenant.applied); it is taken before mu, which the writes
	// themselves do not hold (applyBudget).
	budgetMu sync.Mutex

	mu      sync.Mutex
	closed  bool
	global  Tenant // cells/ itself, for SetBudget
	tenants map[string]*Tenant
	plans   map[ProfileKey]*plan
}

// Open finds the cgroup2 mount and the base group, moves the daemon into
// <base>/supervisor when the base is its own group, enables the controllers
// top-down, creates <base>/cells, sweeps leftover cells of a crashed run,
// and probes the kernel features. It fails with an error wrapping
// ErrNotDelegated, ErrControllerMissing or ErrUnsupported, with the
// remedy, when cellgate cannot own the subtree.
func Open(ctx context.Context, o Options) (*Tree, error) {
	t := &Tree{
		log:       o.Logger,
		ops:       o.ops,
		allowed:   slices.Clone(o.Unenforced),
		tenants:   map[string]*Tenant{},
		plans:     map[ProfileKey]*plan{},
		sweepTime: o.SweepTimeout,
		lockFD:    -1,
	}
	if t.log == nil {
		t.log = slog.New(slog.DiscardHandler)
	}
	if t.ops == nil {
		t.ops = kernelOps{}
	}
	t.ops = newBoundedOps(t.ops)
	if t.sweepTime == 0 {
		t.sweepTime = 10 * time.Second
	}
	for _, c := range o.Unenforced {
		if !slices.Contains(requiredControllers, c) {
			return nil, fmt.Errorf("unenforced controller %q: want one of %s", c, strings.Join(requiredControllers, ", "))
		}
	}
	var nb [4]byte
	if _, err := rand.Read(nb[:]); err != nil {
		return nil, fmt.Errorf("cell name nonce: %w", err)
	}
	t.nonce = hex.EncodeToString(nb[:])
	t.feat.Kernel = kernelRelease()

	ok := false
	defer func() {
		if !ok {
			t.undo()
		}
	}()
	if err := t.locate(o); err != nil {
		return nil, err
	}
	if err := t.setup(o); err != nil {
		return nil, err
	}
	sctx, cancel := context.WithTimeout(ctx, t.sweepTime)
	n, left, err := t.sweep(sctx)
	cancel()
	if err != nil {
		return nil, fmt.Errorf("sweep leftover cells: %w", err)
	}
	if n > 0 {
		t.log.Warn("removed leftover cgroups of a previous run", "count", n, "cells", t.cells)
	}
	for _, err := range left {
		// Not a reason to refuse to start: one stuck request of a
		// previous run would keep the host from serving any. New cells
		// get names of their own beside it; Close tries it again.
		t.log.Error("a leftover cgroup of a previous run still holds a process after its kill (one in uninterruptible sleep?): left in place", "err", err)
	}
	if o.MaxCells > 0 {
		if err := writeFile(filepath.Join(t.cells, "cgroup.max.descendants"), strconv.Itoa(o.MaxCells)); err != nil {
			return nil, fmt.Errorf("write cgroup.max.descendants=%d in %s: %w", o.MaxCells, t.cells, err)
		}
	}
	spawn := o.ProbeSpawn
	if spawn == nil {
		spawn = SpawnTrue
	}
	if err := t.probe(ctx, spawn); err != nil {
		return nil, err
	}
	t.log.Info("cgroup tree ready", "features", t.feat)
	ok = true
	return t, nil
}

// undo removes what a failed Open created: cells/ (when empty) and a
// private base, then releases the base's lock. A daemon moved into
// supervisor/ stays there.
func (t *Tree) undo() {
	if t.createdC {
		t.ops.rmdir(t.cells)
	}
	if t.createdB {
		t.ops.rmdir(t.base)
	}
	if t.lockFD >= 0 {
		unix.Close(t.lockFD)
		t.lockFD = -1
	}
}

// lock takes the base's lock (lock.go) before anything in it is moved,
// swept or created. A base this Open just created but another process
// locked first is that process's now: undo must not remove it.
func (t *Tree) lock(proc string) error {
	fd, err := lockBase(t.base, proc)
	if err != nil {
		t.createdB = false
		return err
	}
	t.lockFD = fd
	return nil
}

// locate sets the mount and the base, and moves the daemon into
// <base>/supervisor when the base is its own group.
func (t *Tree) locate(o Options) error {
	proc := o.ProcRoot
	if proc == "" {
		proc = "/proc"
	}
	mi := mountInfo{Point: o.Mount, Root: "/"}
	if mi.Point == "" {
		b, err := readFile(filepath.Join(proc, "self", "mountinfo"))
		if err != nil {
			return fmt.Errorf("find cgroup2 mount: %w", err)
		}
		if mi, err = parseMountinfo(b); err != nil {
			return err
		}
	}
	t.feat.Mount = filepath.Clean(mi.Point)

	own, ownErr := ownDir(proc, mi)
	if o.Base != "" && (ownErr != nil || filepath.Clean(o.Base) != own) {
		base := filepath.Clean(o.Base)
		if !filepath.IsAbs(base) || !strings.HasPrefix(base, t.feat.Mount+"/") {
			return fmt.Errorf("base %s: must be a directory under the cgroup2 mount %s", o.Base, t.feat.Mount)
		}
		t.base = base
		switch err := t.ops.mkdir(base); {
		case err == nil:
			t.createdB = true
		case errors.Is(err, unix.EEXIST):
		default:
			return fmt.Errorf("mkdir base %s: %w: %w (%s)", base, ErrNotDelegated, err, remedy)
		}
		t.feat.Base = base
		return t.lock(proc)
	}
	if ownErr != nil {
		return ownErr
	}
	if filepath.Base(own) == supervisorDir && own != t.feat.Mount {
		// Started in <unit>/supervisor (systemd DelegateSubgroup=supervisor).
		t.base = filepath.Dir(own)
		t.feat.Base, t.feat.Supervisor = t.base, own
		return t.lock(proc)
	}
	t.base = own
	t.feat.Base = own
	if err := t.lock(proc); err != nil {
		return err
	}
	if _, err := os.Stat(filepath.Join(own, "cgroup.type")); errors.Is(err, os.ErrNotExist) {
		// Only the real root group has no cgroup.type. It may hold
		// processes and still delegate controllers; there is nothing to
		// move (kernel threads could not be moved). The root of a
		// container's cgroup namespace is not the real root: it has
		// cgroup.type, and the daemon must move.
		return nil
	}
	return t.moveSelf()
}

// ownDir is the directory of the process's own group on the mount.
func ownDir(proc string, mi mountInfo) (string, error) {
	b, err := readFile(filepath.Join(proc, "self", "cgroup"))
	if err != nil {
		return "", fmt.Errorf("find own cgroup: %w", err)
	}
	own, err := parseProcCgroup(b)
	if err != nil {
		return "", err
	}
	return groupDir(mi, own)
}

// moveSelf moves the daemon from the base into <base>/supervisor, so the
// base can enable controllers (no internal processes). It refuses when
// the base holds other processes: the group is not cellgate's to take.
func (t *Tree) moveSelf() error {
	b, err := readFile(filepath.Join(t.base, "cgroup.procs"))
	if err != nil {
		return fmt.Errorf("read %s: %w", filepath.Join(t.base, "cgroup.procs"), err)
	}
	self := os.Getpid()
	var others []string
	for _, f := range strings.Fields(string(b)) {
		if f != strconv.Itoa(self) {
			others = append(others, f)
		}
	}
	if len(others) > 0 {
		return fmt.Errorf("own group %s is shared with pids %s: %w (%s)", t.base, strings.Join(others, " "), ErrNotDelegated, remedy)
	}
	sup := filepath.Join(t.base, supervisorDir)
	if err := t.ops.mkdir(sup); err != nil && !errors.Is(err, unix.EEXIST) {
		return fmt.Errorf("mkdir %s: %w: %w (%s)", sup, ErrNotDelegated, err, remedy)
	}
	if err := writeFile(filepath.Join(sup, "cgroup.procs"), strconv.Itoa(self)); err != nil {
		return fmt.Errorf("write cgroup.procs=%d in %s: %w: %w (%s)", self, sup, ErrNotDelegated, err, remedy)
	}
	t.feat.Supervisor = sup
	t.log.Info("moved cellgate into its supervisor group", "pid", self, "group", sup)
	return nil
}

// setup enables the controllers in the base, creates cells/ and enables
// them there too, and checks the required ones.
func (t *Tree) setup(o Options) error {
	avail, err := readControllers(filepath.Join(t.base, "cgroup.controllers"))
	if err != nil {
		return err
	}
	t.feat.Available = avail
	var want []string
	for _, c := range slices.Concat(requiredControllers, optionalControllers) {
		if slices.Contains(avail, c) {
			want = append(want, c)
		}
	}
	if err := enableControllers(t.base, want); err != nil {
		return err
	}
	t.cells = filepath.Join(t.base, cellsDir)
	closeHuge := slices.Contains(avail, "hugetlb")
	if closeHuge {
		// For cells/ alone, before it is made: see closeHugeTLB.
		if err := enableControllers(t.base, []string{"hugetlb"}); err != nil {
			closeHuge = false
			t.log.Warn("huge pages not closed to cells by the hugetlb controller", "err", err)
		}
	}
	switch err := t.ops.mkdir(t.cells); {
	case err == nil:
		t.createdC = true
	case !errors.Is(err, unix.EEXIST):
		return fmt.Errorf("mkdir %s: %w: %w (%s)", t.cells, ErrNotDelegated, err, remedy)
	}
	if err := enableControllers(t.cells, want); err != nil {
		return err
	}
	if closeHuge {
		if err := closeHugeTLB(t.cells); err != nil {
			t.log.Warn("huge pages not closed to cells by the hugetlb controller", "err", err)
		} else {
			t.feat.HugeTLBClosed = true
		}
	}
	t.enabled = want
	t.feat.Enabled = slices.Clone(want)
	t.global = Tenant{path: t.cells}
	var refused []string
	for _, c := range requiredControllers {
		if slices.Contains(want, c) {
			continue
		}
		if !slices.Contains(t.allowed, c) {
			refused = append(refused, c)
			continue
		}
		t.feat.Unenforced = append(t.feat.Unenforced, c)
	}
	if len(refused) > 0 {
		// All of them at once: an operator fixing one per attempt is told
		// about the next only after the next start.
		return &ControllerMissingError{Controller: refused[0], Others: refused[1:], Path: t.base}
	}
	if len(t.feat.Unenforced) > 0 {
		t.log.Warn("running without controllers: their limits are not enforced", "unenforced", strings.Join(t.feat.Unenforced, " "), "base", t.base)
	}
	return nil
}

// closeHugeTLB writes 0 to every hugetlb limit of cells/ (each page
// size's hugetlb.<size>.max, and .rsvd.max from Linux 5.7), where the
// hugetlb controller is enabled for cells/ but not below it: every
// tenant's and cell's processes are then charged to cells/'s hugetlb
// state, so none can take a page of the host's huge page pool (a
// reservation at mmap fails ENOMEM; without .rsvd.max, a fault beyond
// the limit is a SIGBUS). Those pages are not charged to memory.max
// (before Linux 6.7's memory_hugetlb_accounting), and no limit per cell
// is wanted: enabling the controller below cells/ would cost every
// cell's mkdir for nothing. systemd does not delegate hugetlb, so under
// a unit this is not done, and the seccomp filter is what closes the
// pool to confined cells.
func closeHugeTLB(cells string) error {
	ents, err := os.ReadDir(cells)
	if err != nil {
		return err
	}
	n := 0
	for _, e := range ents {
		name := e.Name()
		if !strings.HasPrefix(name, "hugetlb.") || !strings.HasSuffix(name, ".max") {
			continue
		}
		if err := writeFile(filepath.Join(cells, name), "0"); err != nil {
			return fmt.Errorf("write %s=0 in %s: %w", name, cells, err)
		}
		n++
	}
	if n == 0 {
		return fmt.Errorf("no hugetlb.*.max in %s", cells)
	}
	return nil
}

func readControllers(path string) ([]string, error) {
	b, err := readFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return strings.Fields(string(b)), nil
}

// enableControllers writes "+c ..." for the controllers of want that
// dir's cgroup.subtree_control does not list yet.
func enableControllers(dir string, want []string) error {
	sc := filepath.Join(dir, "cgroup.subtree_control")
	have, err := readControllers(sc)
	if err != nil {
		return err
	}
	var add []string
	for _, c := range want {
		if !slices.Contains(have, c) {
			add = append(add, "+"+c)
		}
	}
	if len(add) == 0 {
		return nil
	}
	v := strings.Join(add, " ")
	if err := writeFile(sc, v); err != nil {
		why := remedy
		if errors.Is(err, unix.EBUSY) {
			why = "the group holds processes (no internal processes with controllers enabled); " + remedy
		}
		return fmt.Errorf("write cgroup.subtree_control=%q in %s: %w: %w (%s)", v, dir, ErrNotDelegated, err, why)
	}
	return nil
}

// Features returns what Open probed.
func (t *Tree) Features() Features {
	f := t.feat
	f.Available = slices.Clone(f.Available)
	f.Enabled = slices.Clone(f.Enabled)
	f.Unenforced = slices.Clone(f.Unenforced)
	return f
}

// Base is the base group's path.
func (t *Tree) Base() string { return t.base }

// CellsPath is <base>/cells.
func (t *Tree) CellsPath() string { return t.cells }
