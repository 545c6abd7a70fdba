package confine

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"golang.org/x/sys/unix"
)

// MaxLaunch bounds a launch frame (the plan, or argv and environment): the
// init refuses a longer one, and EncodeExec does not build it.
const MaxLaunch = 4 << 20

// launchMagic starts every plan frame, so that an init started by
// something else than a Runner, or of another version, fails with a clear
// error.
const launchMagic = "CGL6"

// The init reads two frames on ControlFD, each a little-endian uint32
// length and that many bytes: the plan (applied at once, then the init
// reports ReportReady), then the exec part, sent with the program's
// stdin, stdout and stderr as SCM_RIGHTS. A cell can so be prepared
// before its request exists (the Runner's warm inits) and handed the
// request later.
//
// Both frames are flat little-endian binary, read by the C init
// (cmd/cellgate-init) and by the Go one (Init): a u32 is 4 bytes, a u64 8,
// a string a u32 length and its bytes, a list a u32 count and its entries.
// The plan frame's body:
//
//	"CGL6"
//	u32 namespaces (Namespaces: mount 1, pid 2, ipc 4, uts 8, net 16)
//	u32 flags (planSeccomp, planPreloader, planHugePages, planResident, planRoot, planRootMap)
//	u64 nofile
//	u32 root uid, u32 root gid (Plan.RootMap; 0 0 without planRootMap)
//	string rootfs, string hostname
//	list of binds: string source, string target, u32 flags (bindWritable, bindDev, bindMask)
//	list of symlinks: string link, string target
//	list of tmpfs: string target, u64 size, u32 mode
//	list of filter instructions (seccomp's struct sock_filter): u16 code, u8 jt, u8 jf, u32 k
//
// The filter is assembled here, once (Filter, or PreloaderFilter for a
// preloader's plan), so that neither init needs the system call tables;
// it is empty when the plan has no seccomp.

// Plan frame flags.
const (
	planSeccomp   = 1
	planPreloader = 2
	planHugePages = 4
	planResident  = 8
	planRoot      = 16
	planRootMap   = 32
	bindWritable  = 1
	bindDev       = 2
	bindMask      = 4
)

// Prepared is a Plan encoded once, with what the spawn needs of it.
type Prepared struct {
	plan        *Plan
	frame       []byte
	resident    []byte // the frame of a resident cell's init, or nil
	templatable bool   // plan.Templatable(), decided once
	hidden      []string
}

// Prepare encodes p once, when the policy is loaded: its frame, and a
// resident cell's when p may be resident.
func Prepare(p *Plan) (*Prepared, error) {
	var filter []unix.SockFilter
	if p.Seccomp {
		var err error
		if p.Preloader {
			filter, err = PreloaderFilter()
		} else {
			filter, err = FilterFor(p, false)
		}
		if err != nil {
			return nil, err
		}
	}
	frame, err := encodePlan(p, filter, false)
	if err != nil {
		return nil, err
	}
	pp := &Prepared{plan: p, frame: frame, templatable: p.Templatable()}
	for _, m := range p.Binds {
		if m.Mask && !slices.Contains(pp.hidden, m.Hides) {
			pp.hidden = append(pp.hidden, m.Hides)
		}
	}
	if p.Resident {
		// The resident init's filter allows clone3, its programs add
		// the rule that refuses it (ResidentFilter).
		if p.Seccomp {
			if filter, err = FilterFor(p, true); err != nil {
				return nil, err
			}
		}
		if pp.resident, err = encodePlan(p, filter, true); err != nil {
			return nil, err
		}
	}
	return pp, nil
}

// encodePlan is the plan frame of p with filter, a resident cell's or not.
func encodePlan(p *Plan, filter []unix.SockFilter, resident bool) ([]byte, error) {
	b := make([]byte, 4, 256)
	b = append(b, launchMagic...)
	b = binary.LittleEndian.AppendUint32(b, uint32(p.Namespaces))
	var flags uint32
	if p.Seccomp {
		flags |= planSeccomp
	}
	if p.Preloader {
		flags |= planPreloader
	}
	if p.HugePages {
		flags |= planHugePages
	}
	if resident {
		flags |= planResident
	}
	if p.Root {
		flags |= planRoot
	}
	var root RootMap
	if p.RootMap != nil {
		flags |= planRootMap
		root = *p.RootMap
	}
	b = binary.LittleEndian.AppendUint32(b, flags)
	b = binary.LittleEndian.AppendUint64(b, p.NoFile)
	b = binary.LittleEndian.AppendUint32(b, root.UID)
	b = binary.LittleEndian.AppendUint32(b, root.GID)
	b = appendBytes(b, []byte(p.RootFS))
	b = appendBytes(b, []byte(p.Hostname))
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Binds)))
	for _, m := range p.Binds {
		b = appendBytes(b, []byte(m.Source))
		b = appendBytes(b, []byte(m.Target))
		var f uint32
		if m.Writable {
			f |= bindWritable
		}
		if m.Dev {
			f |= bindDev
		}
		if m.Mask {
			f |= bindMask
		}
		b = binary.LittleEndian.AppendUint32(b, f)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Symlinks)))
	for _, l := range p.Symlinks {
		b = appendBytes(b, []byte(l.Link))
		b = appendBytes(b, []byte(l.Target))
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(p.Tmpfs)))
	for _, t := range p.Tmpfs {
		b = appendBytes(b, []byte(t.Target))
		b = binary.LittleEndian.AppendUint64(b, uint64(t.Size))
		b = binary.LittleEndian.AppendUint32(b, t.Mode)
	}
	b = binary.LittleEndian.AppendUint32(b, uint32(len(filter)))
	for _, f := range filter {
		b = binary.LittleEndian.AppendUint16(b, f.Code)
		b = append(b, f.Jt, f.Jf)
		b = binary.LittleEndian.AppendUint32(b, f.K)
	}
	if len(b)-4 > MaxLaunch {
		return nil, fmt.Errorf("confinement plan of %d bytes is over %d", len(b)-4, MaxLaunch)
	}
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	return b, nil
}

// Plan is the prepared Plan (not to be modified).
func (p *Prepared) Plan() *Plan { return p.plan }

// Templatable is the plan's Templatable, decided when it was prepared.
func (p *Prepared) Templatable() bool { return p.templatable }

// Hidden lists the host paths of the daemon's files the plan's view
// covers (Bind.Hides), each once. A view made before one of them was
// replaced (renamed over, removed and made again) no longer covers it:
// the kernel detaches a mount whose mount point is unlinked in another
// mount namespace, and the path then shows the new file.
func (p *Prepared) Hidden() []string { return p.hidden }

// Frame is the plan frame, to send as it is (not to be modified).
func (p *Prepared) Frame() []byte { return p.frame }

// ResidentFrame is the plan frame of a resident cell's init (Plan.Resident;
// cellgate-init only), or nil when the plan cannot be resident.
func (p *Prepared) ResidentFrame() []byte { return p.resident }

// CloneFlags are the namespaces to create with the init's clone.
func (p *Prepared) CloneFlags() uintptr { return p.plan.ownNamespaces().CloneFlags() }

// Exec is what the init runs once the cell is confined: the per-request
// part of a launch.
type Exec struct {
	Path string
	Args []string
	Env  []string
	Dir  string
	Credential
}

// EncodeExec encodes e as the exec frame, in a length-prefixed binary form
// (no reflection per request).
func EncodeExec(e *Exec) ([]byte, error) {
	n := 4*4 + 4*len(e.Groups) + 4*4 + len(e.Path) + len(e.Dir)
	for _, s := range e.Args {
		n += 4 + len(s)
	}
	for _, s := range e.Env {
		n += 4 + len(s)
	}
	if n > MaxLaunch {
		return nil, fmt.Errorf("exec frame of %d bytes is over %d (arguments and environment too large)", n, MaxLaunch)
	}
	b := make([]byte, 4, 4+n)
	b = binary.LittleEndian.AppendUint32(b, e.UID)
	b = binary.LittleEndian.AppendUint32(b, e.GID)
	b = binary.LittleEndian.AppendUint32(b, uint32(len(e.Groups)))
	for _, g := range e.Groups {
		b = binary.LittleEndian.AppendUint32(b, g)
	}
	b = appendBytes(b, []byte(e.Path))
	b = appendBytes(b, []byte(e.Dir))
	b = appendList(b, e.Args)
	b = appendList(b, e.Env)
	binary.LittleEndian.PutUint32(b, uint32(len(b)-4))
	return b, nil
}

func appendBytes(b, s []byte) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(s)))
	return append(b, s...)
}

func appendList(b []byte, l []string) []byte {
	b = binary.LittleEndian.AppendUint32(b, uint32(len(l)))
	for _, s := range l {
		b = appendBytes(b, []byte(s))
	}
	return b
}

// decoder reads a launch message, remembering the first error.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) u32() uint32 {
	if d.err != nil {
		return 0
	}
	if len(d.b) < 4 {
		d.err = errors.New("truncated")
		return 0
	}
	v := binary.LittleEndian.Uint32(d.b)
	d.b = d.b[4:]
	return v
}

func (d *decoder) bytes() []byte {
	n := d.u32()
	if d.err != nil {
		return nil
	}
	if uint64(n) > uint64(len(d.b)) {
		d.err = fmt.Errorf("field of %d bytes with %d left", n, len(d.b))
		return nil
	}
	v := d.b[:n]
	d.b = d.b[n:]
	return v
}

// str reads a string field; one holding a NUL is an error, as in the C
// init (the kernel's paths, arguments and environment end at the first).
func (d *decoder) str() string {
	b := d.bytes()
	if d.err == nil && bytes.IndexByte(b, 0) >= 0 {
		d.err = errors.New("string with a NUL byte")
		return ""
	}
	return string(b)
}

func (d *decoder) u64() uint64 {
	lo := d.u32()
	return uint64(lo) | uint64(d.u32())<<32
}

// count reads a list's length, each entry at least min bytes.
func (d *decoder) count(min int) uint32 {
	n := d.u32()
	if d.err == nil && uint64(n)*uint64(min) > uint64(len(d.b)) {
		d.err = fmt.Errorf("list of %d entries with %d bytes left", n, len(d.b))
		return 0
	}
	return n
}

func (d *decoder) list() []string {
	n := d.count(4)
	if d.err != nil {
		return nil
	}
	l := make([]string, 0, n)
	for i := uint32(0); i < n && d.err == nil; i++ {
		l = append(l, d.str())
	}
	return l
}

// DecodePlan reads a plan frame's body (without its length): the plan and
// the seccomp program it carries (empty without seccomp), which the init
// loads as it is, as the C init does.
func DecodePlan(b []byte) (*Plan, []unix.SockFilter, error) {
	if !strings.HasPrefix(string(b), launchMagic) {
		return nil, nil, errors.New("plan frame: bad magic (the init must be started by cellgate's sandbox, of the same version)")
	}
	d := &decoder{b: b[len(launchMagic):]}
	p := &Plan{Namespaces: Namespaces(d.u32())}
	flags := d.u32()
	p.Seccomp, p.Preloader, p.HugePages = flags&planSeccomp != 0, flags&planPreloader != 0, flags&planHugePages != 0
	p.Resident, p.Root = flags&planResident != 0, flags&planRoot != 0
	p.NoFile = d.u64()
	if root := (RootMap{UID: d.u32(), GID: d.u32()}); flags&planRootMap != 0 {
		p.RootMap = &root
	}
	p.RootFS = d.str()
	p.Hostname = d.str()
	for n := d.count(12); n > 0 && d.err == nil; n-- {
		m := Bind{Source: d.str(), Target: d.str()}
		f := d.u32()
		m.Writable, m.Dev, m.Mask = f&bindWritable != 0, f&bindDev != 0, f&bindMask != 0
		p.Binds = append(p.Binds, m)
	}
	for n := d.count(8); n > 0 && d.err == nil; n-- {
		p.Symlinks = append(p.Symlinks, Symlink{Link: d.str(), Target: d.str()})
	}
	for n := d.count(16); n > 0 && d.err == nil; n-- {
		t := Tmpfs{Target: d.str()}
		t.Size = int64(d.u64())
		t.Mode = d.u32()
		p.Tmpfs = append(p.Tmpfs, t)
	}
	n := d.count(8)
	filter := make([]unix.SockFilter, 0, n)
	for ; n > 0 && d.err == nil; n-- {
		code := d.u32()
		filter = append(filter, unix.SockFilter{Code: uint16(code), Jt: uint8(code >> 16), Jf: uint8(code >> 24), K: d.u32()})
	}
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes after the end", len(d.b))
	}
	if d.err == nil && p.Seccomp && len(filter) == 0 {
		d.err = errors.New("seccomp asked for without a filter")
	}
	if d.err == nil && p.Resident && (p.Namespaces&NSPID == 0 || p.Preloader) {
		d.err = errors.New("a resident cell needs a PID namespace of its own and is no preloader's")
	}
	if d.err != nil {
		return nil, nil, fmt.Errorf("plan frame: %w", d.err)
	}
	return p, filter, nil
}

// DecodeExec reads an exec frame's body (without its length).
func DecodeExec(b []byte) (*Exec, error) {
	d := &decoder{b: b}
	e := &Exec{}
	e.UID, e.GID = d.u32(), d.u32()
	ng := d.count(4)
	for i := uint32(0); i < ng && d.err == nil; i++ {
		e.Groups = append(e.Groups, d.u32())
	}
	e.Path = d.str()
	e.Dir = d.str()
	e.Args = d.list()
	e.Env = d.list()
	if d.err == nil && len(d.b) != 0 {
		d.err = fmt.Errorf("%d bytes after the end", len(d.b))
	}
	if d.err != nil {
		return nil, fmt.Errorf("exec frame: %w", d.err)
	}
	return e, nil
}

// ReportKind says what a report is about.
type ReportKind uint8

const (
	// ReportExited: the program ran and ended (Code or Signal).
	ReportExited ReportKind = iota + 1
	// ReportSetup: the confinement could not be applied; nothing ran.
	ReportSetup
	// ReportSpawn: the program could not be started (Errno); nothing ran.
	ReportSpawn
	// ReportReady: the plan is applied; the init waits for the exec frame.
	ReportReady
	// ReportStarted: a resident init has started the program in the
	// request's group (Plan.Resident); ReportExited follows.
	ReportStarted
)

// Report is what the init writes on fd 3: ReportReady once confined, then
// one of the others before it exits.
type Report struct {
	Kind   ReportKind
	Code   int32 // exit status (ReportExited), -1 when Signal is set
	Signal int32 // the signal that ended the program, or 0
	Errno  int32 // ReportSpawn and ReportSetup: the errno, when there is one
	Msg    string
	// Unclean (ReportExited of a resident init): what the program left
	// could not all be ended (a tmpfs tree deeper than the wipe goes, an
	// IPC object it could not remove);
	// the init has exited rather than serve another request.
	Unclean bool
}

// Report flags, its second byte.
const reportUnclean = 1

// MaxReport bounds an encoded Report.
const MaxReport = 16 + maxReportMsg

const maxReportMsg = 1024

// Encode lays the report out as 16 bytes and the message (cut at 1 KiB).
func (r Report) Encode() []byte {
	msg := r.Msg
	if len(msg) > maxReportMsg {
		msg = msg[:maxReportMsg]
	}
	b := make([]byte, 0, 16+len(msg))
	var flags byte
	if r.Unclean {
		flags |= reportUnclean
	}
	b = append(b, byte(r.Kind), flags)
	b = binary.LittleEndian.AppendUint16(b, uint16(len(msg)))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Code))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Signal))
	b = binary.LittleEndian.AppendUint32(b, uint32(r.Errno))
	return append(b, msg...)
}

// DecodeReport reads a report; ok is false when b holds none (the init
// was killed before it wrote one).
func DecodeReport(b []byte) (Report, bool) {
	if len(b) < 16 {
		return Report{}, false
	}
	n := int(binary.LittleEndian.Uint16(b[2:]))
	if len(b) < 16+n || ReportKind(b[0]) < ReportExited || ReportKind(b[0]) > ReportStarted {
		return Report{}, false
	}
	return Report{
		Kind:    ReportKind(b[0]),
		Code:    int32(binary.LittleEndian.Uint32(b[4:])),
		Signal:  int32(binary.LittleEndian.Uint32(b[8:])),
		Errno:   int32(binary.LittleEndian.Uint32(b[12:])),
		Msg:     string(b[16 : 16+n]),
		Unclean: b[1]&reportUnclean != 0,
	}, true
}
