package vm

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
)

// CacheDir returns the directory where the kernel is kept: flag when it is
// set, else env (CELLGATE_VM_CACHE as read by the caller), else .cache/vm in
// the repository that contains wd (found by walking up to go.mod).
func CacheDir(flag, env, wd string) (string, error) {
	switch {
	case flag != "":
		return filepath.Abs(flag)
	case env != "":
		return filepath.Abs(env)
	}
	root, err := repoRoot(wd)
	if err != nil {
		return "", err
	}
	return filepath.Join(root, ".cache", "vm"), nil
}

// repoRoot walks up from dir to the first directory holding go.mod.
func repoRoot(dir string) (string, error) {
	d, err := filepath.Abs(dir)
	if err != nil {
		return "", fmt.Errorf("find repository root from %s: %w", dir, err)
	}
	for {
		_, err := os.Stat(filepath.Join(d, "go.mod"))
		if err == nil {
			return d, nil
		}
		if !errors.Is(err, os.ErrNotExist) {
			return "", fmt.Errorf("find repository root: stat %s: %w", filepath.Join(d, "go.mod"), err)
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("find repository root: no go.mod above %s (pass -cache DIR or set CELLGATE_VM_CACHE)", dir)
		}
		d = parent
	}
}
