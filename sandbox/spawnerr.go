package sandbox

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"syscall"
)

// explainSpawn turns execve's ENOENT, which the kernel returns alike for
// a missing program, a missing working directory and a script whose
// interpreter is missing, into the one that happened: an operator told
// "no such file or directory" for a file that exists looks in the wrong
// place. Other errors are returned as they are.
func explainSpawn(path, dir string, err error) error {
	if !errors.Is(err, syscall.ENOENT) {
		return err
	}
	if dir != "" {
		if _, derr := os.Stat(dir); derr != nil {
			return fmt.Errorf("working directory %s: %w (%w)", dir, derr, err)
		}
	}
	if _, perr := os.Stat(path); perr != nil {
		return err
	}
	head, herr := readHead(path, 256)
	if herr != nil || !bytes.HasPrefix(head, []byte("#!")) {
		return err
	}
	interp, crlf, serr := Shebang(head)
	switch {
	case serr != nil:
		return fmt.Errorf("%s: %w: %w", path, serr, err)
	case crlf:
		return fmt.Errorf("%s: its #! line ends in a carriage return (CRLF line ends), so the kernel looks for the interpreter %q, which does not exist; convert the file to LF line ends: %w", path, interp+"\r", err)
	}
	if _, ierr := os.Stat(interp); errors.Is(ierr, fs.ErrNotExist) {
		return fmt.Errorf("%s: its interpreter %s (the #! line) does not exist: %w", path, interp, err)
	}
	return err
}

// Shebang parses the interpreter path of a script's "#!" line (head is
// the file's start) as the kernel does (binfmt_script): spaces and tabs
// after "#!" skipped, the path ends at the first space, tab or newline.
// crlf reports a path ending in "\r" (returned without it).
func Shebang(head []byte) (interp string, crlf bool, err error) {
	if !bytes.HasPrefix(head, []byte("#!")) {
		return "", false, errors.New("no #! line")
	}
	line, _, found := bytes.Cut(head[2:], []byte("\n"))
	if !found && len(head) >= 256 {
		return "", false, errors.New("its #! line is longer than the kernel reads")
	}
	line = bytes.TrimLeft(line, " \t")
	if i := bytes.IndexAny(line, " \t"); i >= 0 {
		line = line[:i]
	}
	if len(line) == 0 {
		return "", false, errors.New("its #! line names no interpreter")
	}
	s := string(line)
	if strings.HasSuffix(s, "\r") {
		return strings.TrimSuffix(s, "\r"), true, nil
	}
	if !filepath.IsAbs(s) {
		return "", false, fmt.Errorf("its interpreter %q is not an absolute path (the kernel does not search PATH)", s)
	}
	return s, false, nil
}

// readHead reads up to n bytes from the start of path.
func readHead(path string, n int) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b := make([]byte, n)
	m, err := io.ReadFull(f, b)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, io.EOF) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	return b[:m], nil
}

// ReadHead reads up to n bytes from the start of path (for callers that
// check a program before it runs, as cellgate check does).
func ReadHead(path string, n int) ([]byte, error) { return readHead(path, n) }
