package policy

import (
	"crypto/sha256"
	"time"

	specs "github.com/opencontainers/runtime-spec/specs-go"
)

// Policy is one validated policy file: the per-request defaults, the global
// budget, the tenants and the routes. Every Route's limits are complete
// (defaults applied) and every Route names a Tenant in Tenants. A Policy is
// never modified after Parse returns it, so it may be shared between
// goroutines; a reload builds a new one.
type Policy struct {
	// Source is the file name the policy was read from, as given to Load or
	// Parse; it prefixes every error and is shown by cellgate check.
	Source string
	// Digest is the SHA-256 of the bytes the policy was parsed from: a
	// watcher of the file compares what it reads with what was loaded.
	Digest [sha256.Size]byte
	// Defaults are the per-request limits a route gets for every key it
	// does not set (the built-in Default* values fill what the file's
	// defaults section leaves out).
	Defaults Limits
	// Global is the budget shared by all tenants.
	Global Global
	// Tenants in file order; the implicit DefaultTenant, when a route
	// needs it and the file does not declare it, comes last.
	Tenants []*Tenant
	// Routes in file order.
	Routes []*Route

	order []*Route // Routes, most specific first (see Match)
}

// Limits are one request's limits in operator units. Resources turns them
// into the OCI runtime-spec vocabulary the cell is created with.
type Limits struct {
	// Memory is the cell's memory.max in bytes, and the memory the request
	// reserves from its tenant's and the global budget while it runs.
	Memory int64
	// Swap is the swap the cell may use beyond Memory, in bytes
	// (memory.swap.max); 0 means none.
	Swap int64
	// MilliCPU is the CPU cap in thousandths of a CPU (cpu.max quota per
	// CPUPeriod); 0 means no cap.
	MilliCPU int64
	// Pids is the cell's pids.max.
	Pids int64
	// Timeout is the wall-clock deadline of the cell.
	Timeout time.Duration
	// MaxBody is the largest request body accepted, in bytes; 0 accepts
	// none. nil: neither the route nor the file's defaults set it, and the
	// proxy's own maximum applies (cellgate serve --max-body).
	MaxBody *int64
}

// Global is the budget shared by all tenants' cells. Zero fields are not
// limited.
type Global struct {
	// Memory is the sum of the memory reservations of all cells in flight
	// may not exceed (and the memory.max of cells/); 0 = no budget.
	Memory int64
	// MaxCells is the number of cells in flight over all tenants;
	// 0 = no cap.
	MaxCells int
	// Line is the line of the global key in Source (0 when absent).
	Line int
}

// Tenant is a group of routes sharing a budget: the tenant's cgroup under
// cells/ and its admission queue. Zero fields are not limited.
type Tenant struct {
	// Name is the tenant's cgroup directory name: [a-z0-9][a-z0-9_-]{0,62}.
	Name string
	// Memory is the tenant's memory budget in bytes: the memory.max of its
	// group and the sum of its admitted requests' reservations may not
	// exceed it; 0 = no budget of its own.
	Memory int64
	// CPUWeight is the tenant group's cpu.weight (1..10000); 0 leaves the
	// kernel default (100).
	CPUWeight uint64
	// MilliCPU is the tenant group's CPU cap in thousandths of a CPU;
	// 0 = no cap.
	MilliCPU int64
	// Pids is the tenant group's pids.max; 0 = not limited.
	Pids int64
	// MaxCells is the number of the tenant's cells in flight; 0 = no cap.
	MaxCells int
	// Queue is how many requests may wait for room; 0 rejects at once.
	Queue int
	// QueueTimeout is how long a request waits in the queue (set when
	// Queue > 0).
	QueueTimeout time.Duration
	// GID is the group the tenant's cells run with when they get a uid of
	// their own, so that file modes can keep tenants apart; 0 is the
	// daemon's shared gid (--gid).
	GID uint32
	// Implicit is true for the DefaultTenant the file did not declare.
	Implicit bool
	// Line is the line of the tenant's entry in the policy file (0 when
	// Implicit).
	Line int
}

// Driver is how a route's program is run.
type Driver string

// DriverCGI executes the program once per request (RFC 3875). DriverFork
// is in fork.go.
const DriverCGI Driver = "cgi"

// Response is how a route's response body reaches the client.
type Response string

const (
	// ResponseSpool reads the whole response (memory, then a temp file)
	// before sending it, so the cell ends before a slow client drains it.
	ResponseSpool Response = "spool"
	// ResponseStream sends the response as the program writes it; the
	// cell lives as long as the client takes to read.
	ResponseStream Response = "stream"
)

// User says whose credentials a route's cells run under. Exactly one of
// the three forms holds: Auto, a Name, or a UID (Auto false and Name "").
type User struct {
	// Auto gives every cell a uid of its own from the runner's range.
	Auto bool
	// Name is a user name, resolved by the caller: policy reads no user
	// database. A name that resolves to uid 0 needs Route.AllowRoot,
	// which the resolver must check again.
	Name string
	// UID is a numeric uid.
	UID uint32
}

// Root reports whether u is root by the policy's words: the name root or
// uid 0 (a name the caller resolves to uid 0 is its to see).
func (u User) Root() bool { return !u.Auto && (u.Name == "root" || u.Name == "" && u.UID == 0) }

// Route sends matching requests to a program, in a tenant, with limits.
type Route struct {
	// Name is unique in the policy; it appears in logs and metrics.
	Name string
	// Host is "" (any host), an exact host name ("example.com") or a
	// wildcard ("*.example.com": any name below example.com, at any depth,
	// not example.com itself); lower case, without a port.
	Host string
	// PathPrefix is the path prefix the request path must start with, at a
	// segment boundary: "/hello" matches /hello, /hello/ and /hello/x, not
	// /helloworld. It starts with "/" and has no trailing "/" unless it is
	// "/"; it is matched against the decoded path (URL.Path), and holds no
	// '%', '?' or '#'.
	PathPrefix string
	// Methods are the allowed methods, upper case; nil allows any.
	Methods []string
	// Tenant names a Tenant in the Policy.
	Tenant string
	// Driver runs the program.
	Driver Driver
	// Program is the absolute path of the program to run; "" when Dir is
	// set.
	Program string
	// Dir is the absolute path of a directory of programs: the first path
	// segment after PathPrefix names the program; "" when Program is set.
	Dir string
	// Fork is what a fork route preloads; nil for a cgi route (which has
	// Program or Dir).
	Fork *Fork
	// Limits are the route's per-request limits, defaults applied.
	Limits
	// Resources are Limits in the OCI runtime-spec vocabulary; never nil.
	// Shared: callers must not modify it.
	Resources *specs.LinuxResources
	// Env are fixed "KEY=value" entries, sorted by key; each shorter than
	// 128 KiB, 256 KiB in all (with a NUL each), which execve takes beside
	// the CGI variables.
	Env []string
	// PassEnv are names whose values are copied from cellgate's own
	// environment, in file order.
	PassEnv []string
	// User are the credentials the cells run under.
	User User
	// AllowRoot permits a User that is root.
	AllowRoot bool
	// Response is how the response body reaches the client.
	Response Response
	// ServerTiming adds a Server-Timing header with the cell's figures.
	ServerTiming bool
	// Confinement is what the route's cells may see and reach; the zero
	// value confines them fully.
	Confinement Confinement
	// Line is the line of the route's entry in the policy file.
	Line int
}

// Match is the result of routing one request.
type Match struct {
	// Route is the route that matched.
	Route *Route
	// Program is the absolute path to execute: Route.Program, or the
	// program named in the path joined to Route.Dir.
	Program string
	// ScriptName and PathInfo split the request path as RFC 3875 asks:
	// for a Program route, ScriptName is the prefix ("" for "/") and
	// PathInfo the rest; for a Dir route, ScriptName is the prefix plus
	// "/" plus the program name and PathInfo the rest.
	ScriptName string
	PathInfo   string
}
