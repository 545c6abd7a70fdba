package proxy

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"syscall"

	"github.com/cellgate/cellgate/policy"
)

// dirProgram refuses a request to a Dir route whose program is not in
// the directory with policy.ErrNoRoute (404), as a file server answers a
// missing file: otherwise every such request would spawn a cell that
// fails to exec, answered 502 with an error logged each time. A program
// that exists but cannot run is the route's fault (cellgate check) and
// still fails at its spawn.
func dirProgram(m *policy.Match) error {
	if m.Route.Dir == "" {
		return nil
	}
	fi, err := os.Stat(m.Program)
	switch {
	case err == nil && fi.Mode().IsRegular():
		return nil
	case err == nil:
		return fmt.Errorf("route %s: %s is not a program: %w", m.Route.Name, m.Program, policy.ErrNoRoute)
	case errors.Is(err, fs.ErrNotExist), errors.Is(err, syscall.ENOTDIR), errors.Is(err, syscall.ENAMETOOLONG):
		return fmt.Errorf("route %s: no program %s: %w", m.Route.Name, m.Program, policy.ErrNoRoute)
	}
	return nil
}
