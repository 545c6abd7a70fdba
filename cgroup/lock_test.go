package cgroup

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

// A second Open on a base that a live Tree owns is refused, names the
// owner's pid, and touches nothing: the owner's cells and groups survive,
// and the owner's Close still removes its tree.
func TestOpenBaseInUse(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	first := mustOpenFake(t, fs, root, nil)
	c, err := first.NewCell(testProfile(t, "acme"))
	if err != nil {
		t.Fatal(err)
	}
	write(t, filepath.Join(c.path, "cgroup.events"), "populated 1\nfrozen 0\n")

	_, err = openFake(t, fs, root, nil)
	var inUse *BaseInUseError
	if !errors.As(err, &inUse) || !errors.Is(err, ErrBaseInUse) {
		t.Fatalf("second Open: err = %v, want a BaseInUseError", err)
	}
	if want := fmt.Sprintf("pid %d", os.Getpid()); !strings.Contains(err.Error(), want) {
		t.Errorf("error %q does not name the owner (%s)", err, want)
	}
	if !strings.Contains(err.Error(), "--cgroup-base") {
		t.Errorf("error %q has no remedy", err)
	}
	if !exists(c.path) {
		t.Fatalf("the second Open swept the owner's live cell %s", c.path)
	}
	if err := first.Health(); err != nil {
		t.Errorf("owner's Health after a refused second Open: %v", err)
	}

	write(t, filepath.Join(c.path, "cgroup.events"), "populated 0\nfrozen 0\n")
	c.closeFDs()
	if err := first.Close(); err != nil {
		t.Fatal(err)
	}
	// The lock died with the owner's Tree: a new one may take the base.
	again := mustOpenFake(t, fs, root, nil)
	if err := again.Close(); err != nil {
		t.Fatal(err)
	}
}

// The own-group layout locks the base before moving the daemon into
// supervisor/.
func TestOpenOwnGroupBaseInUse(t *testing.T) {
	root := fakeRoot(t, "memory", "cpu", "pids")
	fs := &fakeFS{}
	own := fakeOwnGroup(t, fs, root, "svc", os.Getpid())
	fd, err := lockBase(own, "")
	if err != nil {
		t.Fatal(err)
	}
	defer unix.Close(fd)
	_, err = Open(t.Context(), Options{ProcRoot: fakeProc(t, root, "/svc"), ProbeSpawn: func(int) error { return nil }, ops: fs})
	if !errors.Is(err, ErrBaseInUse) {
		t.Fatalf("err = %v, want ErrBaseInUse", err)
	}
	if exists(filepath.Join(own, "supervisor")) || exists(filepath.Join(own, "cells")) {
		t.Error("a refused Open created groups in a base it does not own")
	}
}

func TestHealth(t *testing.T) {
	t.Run("tree gone", func(t *testing.T) {
		root := fakeRoot(t, "memory", "cpu", "pids")
		fs := &fakeFS{}
		tr := mustOpenFake(t, fs, root, nil)
		if err := tr.Health(); err != nil {
			t.Fatalf("Health of a new tree: %v", err)
		}
		if err := fs.rmdir(tr.CellsPath()); err != nil {
			t.Fatal(err)
		}
		err := tr.Health()
		if err == nil || !strings.Contains(err.Error(), "gone") {
			t.Fatalf("Health with cells/ removed = %v, want it gone", err)
		}
	})
	t.Run("base made again by someone else", func(t *testing.T) {
		root := fakeRoot(t, "memory", "cpu", "pids")
		fs := &fakeFS{}
		tr := mustOpenFake(t, fs, root, nil)
		base := tr.Base()
		if err := fs.rmdir(tr.CellsPath()); err != nil {
			t.Fatal(err)
		}
		if err := fs.rmdir(base); err != nil {
			t.Fatal(err)
		}
		if err := fs.mkdir(base); err != nil {
			t.Fatal(err)
		}
		if err := fs.mkdir(filepath.Join(base, "cells")); err != nil {
			t.Fatal(err)
		}
		if err := tr.Health(); err == nil {
			t.Fatal("Health is nil for a tree whose base was replaced")
		}
	})
	t.Run("cells cannot be created", func(t *testing.T) {
		root := fakeRoot(t, "memory", "cpu", "pids")
		fail := true
		fs := &fakeFS{}
		tr := mustOpenFake(t, fs, root, nil)
		prof := testProfile(t, "acme")
		fs.mkdirErr = func(path string) error {
			if fail && strings.HasPrefix(filepath.Base(path), "c") {
				return unix.EAGAIN
			}
			return nil
		}
		if _, err := tr.NewCell(prof); err == nil {
			t.Fatal("NewCell succeeded")
		}
		err := tr.Health()
		if !errors.Is(err, ErrTooManyCells) {
			t.Fatalf("Health after a failed creation = %v, want ErrTooManyCells", err)
		}
		fail = false
		c, err := tr.NewCell(prof)
		if err != nil {
			t.Fatal(err)
		}
		defer c.closeFDs()
		if err := tr.Health(); err != nil {
			t.Errorf("Health after a creation succeeded again: %v", err)
		}
	})
}
