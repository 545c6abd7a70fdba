package policy

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"
)

// DefaultTenant is the tenant of routes that name none. Unless the file
// declares a tenant with this name, it is implicit: no budget of its own
// (only the global one) and no queue.
const DefaultTenant = "default"

// nameRE is the shape of tenant and route names: a tenant name becomes a
// cgroup directory, a route name a metrics label.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9_-]{0,62}$`)

// MaxFileSize is the largest policy file Load reads: 1 MiB. serve reads
// the file inside the daemon, at every reload and --policy-poll change,
// and YAML's node tree takes many times the file's size: a megabyte of
// the densest YAML (a list of one-letter items) is some 200 MB of nodes
// and half a second of parsing. examples/policy.yaml, comments and all,
// is under 1 KiB a tenant or route: the bound holds a thousand routes
// written so, ten thousand on one line each.
const MaxFileSize = 1 << 20

// maxProblems is how many problems a parse lists, the lowest lines first;
// one more says how many were left out. Past a few dozen, problems are
// one mistake repeated (a bad indent, a pasted route, aliases of one
// route), which the first of them show; listing them all would make a
// policy of aliases (routes: [*r, *r, ...], 12 KiB for 3000 routes) cost
// the daemon millions of problems at reload and log them all.
const maxProblems = 100

// ReadFile reads the policy file at path, at most MaxFileSize bytes of it.
// Errors: reading fails (wrapped), or the file is larger (an
// *InvalidError, ErrInvalid, naming the file, its size and the bound).
func ReadFile(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", path, err)
	}
	defer f.Close()
	// One byte past the bound tells a file at the bound from a larger
	// one without reading the rest of it.
	data, err := io.ReadAll(io.LimitReader(f, MaxFileSize+1))
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", path, err)
	}
	if len(data) > MaxFileSize {
		size := fmt.Sprintf("more than %d bytes", MaxFileSize)
		if st, err := f.Stat(); err == nil && st.Mode().IsRegular() && st.Size() > MaxFileSize {
			size = fmt.Sprintf("%d bytes", st.Size())
		}
		return nil, &InvalidError{File: path, Problems: []Problem{{File: path,
			Msg: fmt.Sprintf("the file is %s, above the %s a policy file may have", size, FormatBytes(MaxFileSize)),
			Fix: "keep it within " + FormatBytes(MaxFileSize) + " (is it the policy file?)"}}}
	}
	return data, nil
}

// Load reads and parses the policy file at path (ReadFile). Relative
// program and dir paths are resolved against the directory of the file.
// Errors: reading the file fails (wrapped), or an *InvalidError
// (ErrInvalid).
func Load(path string) (*Policy, error) {
	data, err := ReadFile(path)
	if err != nil {
		return nil, err
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fmt.Errorf("load policy %s: %w", path, err)
	}
	return parse(path, filepath.Dir(abs), data)
}

// Parse parses and validates a policy from data; name is the file name used
// in errors and Policy.Source. Relative program and dir paths are resolved
// against filepath.Dir(name), which must then be absolute (Load makes it
// so). The error is an *InvalidError (ErrInvalid) listing every problem.
func Parse(name string, data []byte) (*Policy, error) {
	base := filepath.Dir(name)
	if !filepath.IsAbs(base) {
		base = ""
	}
	return parse(name, base, data)
}

func parse(file, baseDir string, data []byte) (*Policy, error) {
	d := &decoder{file: file, baseDir: baseDir}
	root := d.document(data)
	if root != nil {
		switch size := expandedSize(root, map[*yaml.Node]int64{}); {
		case size == endless:
			d.problem(0, "", "", "an alias inside the value it names: written out, the file would never end", "name another value with the alias")
			root = nil
		case size > MaxFileSize:
			d.problem(0, "", "", "with its aliases written out, the file would be larger than the "+FormatBytes(MaxFileSize)+" a policy file may have",
				"use aliases for values routes share (an env, mounts), not to repeat routes or lists of them")
			root = nil
		}
	}
	var p *Policy
	if root != nil {
		p = d.policy(root)
	}
	if len(d.problems) > 0 {
		d.trim()
		probs := d.problems
		if d.omitted > 0 {
			probs = append(probs, Problem{File: file, Msg: fmt.Sprintf("... and %d more problems", d.omitted),
				Fix: "fix those listed and check the file again"})
		}
		return nil, &InvalidError{File: file, Problems: probs, Omitted: d.omitted}
	}
	p.Digest = sha256.Sum256(data)
	return p, nil
}

// endless is expandedSize's result for a value holding an alias of itself.
const endless = math.MaxInt64

// expandedSize is about the size of n written out with each alias
// replaced by what it names: MaxFileSize+1 when that is larger, endless
// for a value holding an alias of itself (yaml.v3 allows it). It counts
// each node as its value and one byte more (a separator, the colon of a
// key, a bracket), an empty scalar as nothing, so that a file without
// aliases counts its own size or less.
//
// The decoder follows aliases wherever it reads a value: bounding what
// they expand to keeps it from doing more than MaxFileSize of plain YAML
// would have it do, where 1 MiB of "*r," aliases made 350000 routes, or
// an alias of a large env repeated in every route.
//
// sizes holds the sizes of the anchored nodes (those aliases name), each
// computed once; -1 while one is being computed.
func expandedSize(n *yaml.Node, sizes map[*yaml.Node]int64) int64 {
	if n.Kind == yaml.AliasNode {
		if n.Alias == nil {
			return 1
		}
		n = n.Alias
	}
	if n.Anchor != "" {
		if size, ok := sizes[n]; ok {
			if size < 0 {
				return endless // an alias inside what it names
			}
			return size
		}
		sizes[n] = -1
	}
	size := int64(len(n.Value)) + 1
	if n.Kind == yaml.ScalarNode && n.Value == "" {
		size = 0 // the null of "{a, b}" takes no byte of its own
	}
	for _, c := range n.Content {
		more := expandedSize(c, sizes)
		if more > MaxFileSize-size {
			size = max(more, MaxFileSize+1)
			break
		}
		size += more
	}
	if n.Anchor != "" {
		sizes[n] = size
	}
	return size
}

// decoder walks the YAML node tree, collecting every problem.
type decoder struct {
	file     string
	baseDir  string    // absolute directory for relative paths, or ""
	problems []Problem // at most 2*maxProblems (see trim)
	omitted  int       // problems found and left out by trim
}

func (d *decoder) problem(line int, key, value, msg, fix string) {
	d.problems = append(d.problems, Problem{File: d.file, Line: line, Key: key, Value: value, Msg: msg, Fix: fix})
	if len(d.problems) >= 2*maxProblems {
		d.trim()
	}
}

// trim sorts the problems by line, keeping the order they were found in
// among equal lines (those kept were sorted so before, and those found
// since come after them), and keeps the first maxProblems. Trimming at
// twice the bound sorts each problem a constant number of times.
func (d *decoder) trim() {
	sort.SliceStable(d.problems, func(i, j int) bool { return d.problems[i].Line < d.problems[j].Line })
	if n := len(d.problems) - maxProblems; n > 0 {
		d.omitted += n
		clear(d.problems[maxProblems:])
		d.problems = d.problems[:maxProblems]
	}
}

var yamlLineRE = regexp.MustCompile(`^yaml: line (\d+): (.*)$`)

// document decodes data into a node tree and returns its root mapping node,
// or nil after recording the problem.
func (d *decoder) document(data []byte) *yaml.Node {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			d.problem(0, "", "", "the file is empty", "start from examples/policy.yaml")
			return nil
		}
		d.syntaxProblem(err)
		return nil
	}
	var extra yaml.Node
	switch err := dec.Decode(&extra); {
	case err == nil:
		d.problem(extra.Line, "", "", "a second YAML document", "keep one document: remove the \"---\" and what follows")
	case !errors.Is(err, io.EOF):
		d.syntaxProblem(err)
	}
	if len(doc.Content) == 0 {
		d.problem(0, "", "", "the file is empty", "start from examples/policy.yaml")
		return nil
	}
	return doc.Content[0]
}

func (d *decoder) syntaxProblem(err error) {
	msg, line := err.Error(), 0
	if m := yamlLineRE.FindStringSubmatch(msg); m != nil {
		line, _ = strconv.Atoi(m[1])
		msg = m[2]
	}
	fix := ""
	if strings.Contains(msg, "found character that cannot start any token") || strings.Contains(msg, "found a tab character") {
		fix = "indent with spaces: YAML takes no tab there"
	}
	d.problem(line, "", "", "YAML syntax: "+msg, fix)
}

// field is one key of a mapping with its value.
type field struct {
	key, val *yaml.Node
}

func (f field) line() int { return f.key.Line }

// fields reads mapping n at path, reporting a non-mapping, unknown keys and
// duplicate keys. It returns the known keys that are present.
func (d *decoder) fields(n *yaml.Node, path string, known ...string) map[string]field {
	n = resolve(n)
	if n.Kind != yaml.MappingNode {
		d.problem(n.Line, path, scalarValue(n), "want a mapping of "+strings.Join(known, ", "), "")
		return nil
	}
	out := make(map[string]field, len(n.Content)/2)
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := resolve(n.Content[i]), n.Content[i+1]
		name := k.Value
		keyPath := join(path, name)
		switch {
		case k.Kind != yaml.ScalarNode:
			d.problem(k.Line, path, "", "a key that is not a plain name", "")
		case !slices.Contains(known, name):
			fix := "known keys: " + strings.Join(known, ", ")
			if s := Closest(name, known); s != "" {
				fix = "did you mean " + s + "?"
			}
			d.problem(k.Line, keyPath, "", "unknown key", fix)
		case out[name].key != nil:
			d.problem(k.Line, keyPath, "", fmt.Sprintf("duplicate key (first at line %d)", out[name].key.Line), "keep one")
		default:
			out[name] = field{key: k, val: v}
		}
	}
	return out
}

// resolve follows aliases.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func scalarValue(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return n.Value
	}
	return ""
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// Closest returns the known name within edit distance 2 of s, if any
// (for "did you mean" hints; cmd/cellgate uses it for CELLGATE_* names).
func Closest(s string, known []string) string {
	best, bestD := "", 3
	for _, k := range known {
		if dist := editDistance(s, k); dist < bestD {
			best, bestD = k, dist
		}
	}
	return best
}

func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

// kindName names a node's type for "want X, got Y" messages.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.ShortTag() {
		case "!!str":
			return "a string"
		case "!!int":
			return "an integer"
		case "!!float":
			return "a number"
		case "!!bool":
			return "a boolean"
		case "!!null":
			return "no value"
		}
	}
	return "a " + n.ShortTag()
}

// scalar returns f's value when it is a scalar with one of tags, else
// records a type problem; when the key takes text, its fix is to quote a
// scalar of another type.
func (d *decoder) scalar(f field, path, want string, tags ...string) (string, bool) {
	v := resolve(f.val)
	fix := ""
	if v.Kind == yaml.ScalarNode && v.ShortTag() != "!!null" && slices.Contains(tags, "!!str") {
		fix = "quote it if it is meant as text"
	}
	return d.scalarFix(f, path, want, fix, tags...)
}

// scalarFix is scalar with fix for a value of another type.
func (d *decoder) scalarFix(f field, path, want, fix string, tags ...string) (string, bool) {
	v := resolve(f.val)
	if v.Kind == yaml.ScalarNode && slices.Contains(tags, v.ShortTag()) {
		return v.Value, true
	}
	d.problem(f.line(), path, scalarValue(v), "want "+want+", got "+kindName(v), fix)
	return "", false
}

// isNumber reports whether n is a YAML integer or float, such as a size
// or duration written without its unit.
func isNumber(n *yaml.Node) bool {
	n = resolve(n)
	return n.Kind == yaml.ScalarNode && (n.ShortTag() == "!!int" || n.ShortTag() == "!!float")
}

func (d *decoder) str(f field, path string) (string, bool) {
	return d.scalar(f, path, "a string", "!!str")
}

func (d *decoder) boolean(f field, path string) (bool, bool) {
	s, ok := d.scalar(f, path, "true or false", "!!bool")
	if !ok {
		return false, false
	}
	b, err := strconv.ParseBool(s)
	if err != nil {
		d.problem(f.line(), path, s, "want true or false", "")
		return false, false
	}
	return b, true
}

// integer reads an integer in [lo, hi].
func (d *decoder) integer(f field, path string, lo, hi int64) (int64, bool) {
	return d.integerFix(f, path, lo, hi, "")
}

// integerFix reads an integer in [lo, hi]; fix is the remedy for one out of
// range.
func (d *decoder) integerFix(f field, path string, lo, hi int64, fix string) (int64, bool) {
	if v := resolve(f.val); v.Kind == yaml.ScalarNode && v.ShortTag() == "!!float" && allDigits(v.Value) {
		// An integer too large for YAML's, which takes it for a float.
		d.problem(f.line(), path, v.Value, fmt.Sprintf("out of range %d..%d", lo, hi), fix)
		return 0, false
	}
	s, ok := d.scalar(f, path, "an integer", "!!int")
	if !ok {
		return 0, false
	}
	var n int64 // decoded by yaml itself, so 0o17, 0x1f and 1_000 mean what YAML says
	if err := resolve(f.val).Decode(&n); err != nil || n < lo || n > hi {
		d.problem(f.line(), path, s, fmt.Sprintf("out of range %d..%d", lo, hi), fix)
		return 0, false
	}
	return n, true
}

// pids reads a request's pids limit (a route's or the defaults').
func (d *decoder) pids(f field, path string) (int64, bool) {
	return d.integerFix(f, path, MinPids, MaxPids-InitPids,
		fmt.Sprintf("use %d (the program alone) to %d: %s", MinPids, MaxPids-InitPids, pidsCeiling))
}

// tenantPids reads a tenant's pids budget.
func (d *decoder) tenantPids(f field, path string) (int64, bool) {
	return d.integerFix(f, path, MinTenantPids, MaxPids,
		fmt.Sprintf("use %d (a confined cell's init and its program) to %d (the most pids.max takes, the kernel's PID_MAX_LIMIT)", MinTenantPids, MaxPids))
}

// size reads a byte size of at least lo and at most MaxSize.
func (d *decoder) size(f field, path string, lo int64) (int64, bool) {
	const sizeFix = "a number with an optional unit: 512k, 64Mi, 1G (k, M, G are powers of 1000; Ki, Mi, Gi of 1024)"
	fix := sizeFix // quoting "true" would not make it a size
	if isNumber(f.val) {
		// 1e9 or 1.5: YAML's float, which quoting would not make a size.
		fix = "add a unit: 64Mi, 1G (a number alone is bytes: whole, without an exponent)"
	}
	tags := []string{"!!str", "!!int"}
	if v := resolve(f.val); allDigits(v.Value) {
		tags = append(tags, "!!float") // an integer too large for YAML's: ParseBytes says so
	}
	s, ok := d.scalarFix(f, path, "a size (64Mi, 1G, 512k)", fix, tags...)
	if !ok {
		return 0, false
	}
	n, err := ParseBytes(s)
	tooLarge := "above the largest size " + FormatBytes(MaxSize) + " (1 PiB, more than any machine has)"
	switch {
	case errors.Is(err, errNotWholeBytes):
		d.problem(f.line(), path, s, "not a whole number of bytes", "round it to whole bytes: "+wholeBytes(s))
		return 0, false
	case errors.Is(err, errSizeTooLarge):
		d.problem(f.line(), path, s, "too large: "+tooLarge, "lower it to at most "+FormatBytes(MaxSize))
		return 0, false
	case err != nil:
		d.problem(f.line(), path, s, "not a size", sizeFix)
		return 0, false
	case n < lo:
		d.problem(f.line(), path, s, "below the floor "+FormatBytes(lo), "raise it to at least "+FormatBytes(lo))
		return 0, false
	case n > MaxSize:
		d.problem(f.line(), path, s, tooLarge, "lower it to at most "+FormatBytes(MaxSize))
		return 0, false
	}
	return n, true
}

// cpu reads a CPU cap in thousandths; "max" is 0 (no cap).
func (d *decoder) cpu(f field, path string) (int64, bool) {
	s, ok := d.scalar(f, path, "a number of CPUs (0.5, 2, 250m) or max", "!!str", "!!int", "!!float")
	if !ok {
		return 0, false
	}
	n, err := ParseCPU(s)
	switch {
	case errors.Is(err, errCPUTooLarge):
		d.problem(f.line(), path, s, "too large: at most "+FormatCPU(MaxMilliCPU)+" CPUs", "lower it, or write max for no cap")
		return 0, false
	case errors.Is(err, errCPUTooFine):
		d.problem(f.line(), path, s, "finer than a thousandth of a CPU", "round it to three decimals, or write millicpus (250m)")
		return 0, false
	case err != nil:
		d.problem(f.line(), path, s, "not a CPU amount", "a number of CPUs (0.5, 2), millicpus (250m), or max")
		return 0, false
	}
	if s != "max" && n < MinMilliCPU {
		d.problem(f.line(), path, s, "below the floor "+FormatCPU(MinMilliCPU)+" CPU (a cpu.max quota of 1000us)", "raise it, or write max for no cap")
		return 0, false
	}
	return n, true
}

// duration reads a positive duration with a unit.
func (d *decoder) duration(f field, path string) (time.Duration, bool) {
	const durationFix = "a number with a unit: 500ms, 30s, 2m"
	fix := durationFix // quoting "true" would not make it a duration
	var secs float64   // timeout: 30 is YAML's integer; quoted, it is still no duration
	if isNumber(f.val) && resolve(f.val).Decode(&secs) == nil && secs > 0 && !math.IsInf(secs, 0) {
		fix = "add a unit: " + strconv.FormatFloat(secs, 'f', -1, 64) + "s"
	}
	s, ok := d.scalarFix(f, path, "a duration (30s, 1m30s)", fix, "!!str")
	if !ok {
		return 0, false
	}
	t, err := time.ParseDuration(s)
	if err != nil {
		d.problem(f.line(), path, s, "not a duration", durationFix)
		return 0, false
	}
	if t <= 0 {
		d.problem(f.line(), path, s, "not positive", "use a duration above zero")
		return 0, false
	}
	return t, true
}

// strList reads a non-empty list of strings.
func (d *decoder) strList(f field, path string) ([]string, bool) {
	v := resolve(f.val)
	if v.Kind != yaml.SequenceNode {
		d.problem(f.line(), path, scalarValue(v), "want a list, got "+kindName(v), "write [A, B]")
		return nil, false
	}
	if len(v.Content) == 0 {
		d.problem(f.line(), path, "", "an empty list", "remove the key instead")
		return nil, false
	}
	out, ok := make([]string, 0, len(v.Content)), true
	for i, item := range v.Content {
		s, good := d.str(field{key: item, val: item}, fmt.Sprintf("%s[%d]", path, i))
		ok = ok && good
		out = append(out, s)
	}
	return out, ok
}

// items reads a list of mappings; each item's path is list[name] when it
// has a name, else list[index].
func (d *decoder) items(f field, path string) (nodes []*yaml.Node, paths []string) {
	v := resolve(f.val)
	if v.Kind != yaml.SequenceNode {
		d.problem(f.line(), path, scalarValue(v), "want a list, got "+kindName(v), "write each entry as \"- name: ...\"")
		return nil, nil
	}
	for i, item := range v.Content {
		p := fmt.Sprintf("%s[%d]", path, i)
		if it := resolve(item); it.Kind == yaml.MappingNode {
			for j := 0; j+1 < len(it.Content); j += 2 {
				if it.Content[j].Value == "name" && resolve(it.Content[j+1]).Kind == yaml.ScalarNode {
					p = fmt.Sprintf("%s[%s]", path, resolve(it.Content[j+1]).Value)
				}
			}
		}
		nodes, paths = append(nodes, item), append(paths, p)
	}
	return nodes, paths
}

// name reads a required tenant or route name.
func (d *decoder) name(fs map[string]field, item *yaml.Node, path string) string {
	f, ok := fs["name"]
	if !ok {
		d.problem(item.Line, path, "", "no name", "add name: with [a-z0-9][a-z0-9_-]{0,62}")
		return ""
	}
	s, ok := d.str(f, join(path, "name"))
	if !ok {
		return ""
	}
	if !nameRE.MatchString(s) {
		d.problem(f.line(), join(path, "name"), s, "not a valid name", "use lower-case letters, digits, '_' and '-', starting with a letter or digit, at most 63 characters")
		return ""
	}
	return s
}
