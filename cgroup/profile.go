package cgroup

import (
	"fmt"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Profile is a tenant plus the control-file writes of its request cells,
// converted and validated once (off the hot path) and reused for every
// cell. A Profile is immutable.
type Profile struct {
	tenant   string
	settings []Setting
	key      ProfileKey
	// group, when set, is a RouteGroup of the tenant the cells are
	// created in, their cgroup.procs owned by owner (RouteGroup.Profile).
	group string
	owner uint32
}

// ProfileKey identifies a profile by value: two profiles with the same
// tenant and the same writes share pooled cells.
type ProfileKey struct {
	Tenant   string
	Settings string // the writes, "file=value" joined by newlines, in write order
	Group    string // the RouteGroup the cells are created in, or ""
	Owner    uint32 // the owner of the cells' cgroup.procs when Group is set
	Reused   bool   // the cells may be handed on from request to request (Profile.Reused)
}

// NewProfile converts r with CellSettings for cells of tenant ("" is
// DefaultTenant). Errors wrap ErrInvalidName or ErrInvalidLimit.
func NewProfile(tenant string, r *specs.LinuxResources) (*Profile, error) {
	name, err := tenantName(tenant)
	if err != nil {
		return nil, err
	}
	s, err := CellSettings(r)
	if err != nil {
		return nil, err
	}
	var b strings.Builder
	for i, x := range s {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(x.String())
	}
	return &Profile{tenant: name, settings: s, key: ProfileKey{Tenant: name, Settings: b.String()}}, nil
}

// Tenant is the tenant group the profile's cells are created in.
func (p *Profile) Tenant() string { return p.tenant }

// Reused returns the profile whose cells may serve request after request
// (Pool.Recycle; a route's groups: reused): the same tenant and writes,
// but a pool of its own, so that a request whose route did not ask for
// it never gets a group an earlier request used.
func (p *Profile) Reused() *Profile {
	q := *p
	q.key.Reused = true
	return &q
}

// Key is the comparable identity of the profile.
func (p *Profile) Key() ProfileKey { return p.key }

// Settings returns a copy of the writes made in each cell, in order.
func (p *Profile) Settings() []Setting { return slices.Clone(p.settings) }

// Controllers lists the controllers the profile's writes need, sorted.
func (p *Profile) Controllers() []string { return controllersOf(p.settings) }

func controllersOf(s []Setting) []string {
	var out []string
	for _, x := range s {
		if c := x.Controller(); c != "cgroup" && !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	slices.Sort(out)
	return out
}

// plan is a profile as this Tree applies it: the writes for the enabled
// controllers, and the controllers left unenforced.
type plan struct {
	settings   []Setting
	unenforced []string
	// charged is the most a used cell may hold charged to be handed on
	// (Cell.ready): an eighth of the memory.max written, ReuseCharged
	// without one.
	charged uint64
}

// planFor filters settings for this tree: writes for unenforced
// controllers are dropped and reported; a needed controller that is
// neither enabled nor allowed to be missing is an error.
func (t *Tree) planFor(s []Setting, what string) (*plan, error) {
	p := &plan{charged: ReuseCharged}
	for _, x := range s {
		c := x.Controller()
		switch {
		case c == "cgroup", slices.Contains(t.enabled, c):
			p.settings = append(p.settings, x)
			if x.File == "memory.max" {
				if limit, err := parseValue([]byte(x.Value)); err == nil && limit != ^uint64(0) {
					p.charged = limit / 8
				}
			}
		case slices.Contains(t.allowed, c):
			if !slices.Contains(p.unenforced, c) {
				p.unenforced = append(p.unenforced, c)
			}
		default:
			return nil, fmt.Errorf("%s: %w", what, &ControllerMissingError{Controller: c, Path: t.cells, Need: x.File})
		}
	}
	slices.Sort(p.unenforced)
	return p, nil
}

// profilePlan returns the cached plan for a profile.
func (t *Tree) profilePlan(prof *Profile) (*plan, error) {
	t.mu.Lock()
	p := t.plans[prof.key]
	t.mu.Unlock()
	if p != nil {
		return p, nil
	}
	p, err := t.planFor(prof.settings, "profile for tenant "+prof.tenant)
	if err != nil {
		return nil, err
	}
	t.mu.Lock()
	t.plans[prof.key] = p
	t.mu.Unlock()
	return p, nil
}

// Check reports whether cells of prof can be created on this tree (every
// controller its limits need is enabled or allowed to be unenforced),
// without creating one. cmd uses it to validate a policy at start-up.
func (t *Tree) Check(prof *Profile) error {
	_, err := t.profilePlan(prof)
	return err
}
