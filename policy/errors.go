package policy

import (
	"errors"
	"fmt"
	"strings"
)

// ErrInvalid is matched (errors.Is) by every error Parse and Load return
// for a policy file that was read but is not valid; it is then an
// *InvalidError listing every problem.
var ErrInvalid = errors.New("invalid policy")

// Problem is one thing wrong with a policy file.
type Problem struct {
	File string
	Line int // 1-based; 0 when the problem has no single place
	// Key is the path of the offending key: "routes[hello].memory",
	// "tenants[acme]", "version".
	Key string
	// Value is the offending value as written, or "".
	Value string
	// Msg says what is wrong; Fix says what to do, or is "".
	Msg, Fix string
}

// String formats p as file:line: key: "value": msg (fix: ...).
func (p Problem) String() string {
	var b strings.Builder
	b.WriteString(p.File)
	if p.Line > 0 {
		fmt.Fprintf(&b, ":%d", p.Line)
	}
	if p.Key != "" {
		b.WriteString(": " + p.Key)
	}
	if p.Value != "" {
		fmt.Fprintf(&b, ": %q", p.Value)
	}
	b.WriteString(": " + p.Msg)
	if p.Fix != "" {
		b.WriteString(" (fix: " + p.Fix + ")")
	}
	return b.String()
}

// InvalidError lists the problems found in one policy file, in line order:
// every one, or the first of them and one more saying how many were left
// out (Omitted).
type InvalidError struct {
	File     string
	Problems []Problem
	// Omitted is the number of problems found but not listed; when it is
	// not 0 the last of Problems says so.
	Omitted int
}

// Count is the number of problems found, listed or not.
func (e *InvalidError) Count() int {
	if e.Omitted > 0 {
		return len(e.Problems) - 1 + e.Omitted
	}
	return len(e.Problems)
}

func (e *InvalidError) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return fmt.Sprintf("invalid policy %s: %d problem(s):\n%s", e.File, e.Count(), strings.Join(lines, "\n"))
}

// Unwrap makes errors.Is(err, ErrInvalid) true.
func (e *InvalidError) Unwrap() error { return ErrInvalid }
