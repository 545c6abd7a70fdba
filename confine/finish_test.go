package confine

import (
	"os"
	"path/filepath"
	"testing"
)

// TestFinishEmptiesTmpfs: with a mount namespace of its own, finish
// removes what the cell's tmpfs mounts hold (files, directories,
// symlinks, not what they point to) and keeps the mount points; without
// one it touches nothing.
func TestFinishEmptiesTmpfs(t *testing.T) {
	outside := filepath.Join(t.TempDir(), "outside")
	if err := os.WriteFile(outside, []byte("x"), 0o644); err != nil {
		t.Fatal(err)
	}
	fill := func(t *testing.T) (string, string) {
		a, b := t.TempDir(), t.TempDir()
		for _, err := range []error{
			os.WriteFile(filepath.Join(a, "f"), []byte("data"), 0o600),
			os.MkdirAll(filepath.Join(a, "d", "e"), 0o700),
			os.WriteFile(filepath.Join(a, "d", "e", "g"), []byte("data"), 0o600),
			os.Symlink(outside, filepath.Join(b, "link")),
		} {
			if err != nil {
				t.Fatal(err)
			}
		}
		return a, b
	}
	count := func(t *testing.T, dirs ...string) int {
		n := 0
		for _, d := range dirs {
			ents, err := os.ReadDir(d)
			if err != nil {
				t.Fatalf("mount point %s: %v", d, err)
			}
			n += len(ents)
		}
		return n
	}
	for _, tc := range []struct {
		name string
		ns   Namespaces
		want int
	}{
		{"own mount namespace", NSMount, 0},
		{"host mount namespace", AllNamespaces &^ NSMount &^ NSPID, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a, b := fill(t)
			finish(&Plan{Namespaces: tc.ns, Tmpfs: []Tmpfs{{Target: a}, {Target: b}}})
			if n := count(t, a, b); n != tc.want {
				t.Errorf("%d entries left in the tmpfs mount points, want %d", n, tc.want)
			}
			if _, err := os.Stat(outside); err != nil {
				t.Errorf("a symlink's target outside the mounts: %v", err)
			}
		})
	}
}
