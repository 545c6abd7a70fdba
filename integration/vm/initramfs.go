package vm

import (
	"fmt"
	"io"
	"strconv"
	"strings"
)

// An initramfs is an uncompressed "newc" cpio archive (see the kernel's
// Documentation/driver-api/early-userspace/buffer-format.rst). The kernel
// unpacks it into the rootfs before running /init.

// File is one entry of an initramfs.
type File struct {
	Name  string // path inside the archive, without a leading slash
	Mode  uint32 // type and permission bits, e.g. ModeDir|0o755
	Data  []byte // contents of a regular file
	Major uint32 // device numbers of a character device
	Minor uint32
}

// cpio file type bits (the same as stat's S_IF*).
const (
	ModeDir     = 0o040000
	ModeRegular = 0o100000
	ModeCharDev = 0o020000
)

const cpioTrailer = "TRAILER!!!"

// WriteInitramfs writes files as a newc archive, followed by the trailer.
// Directories must come before the files inside them.
func WriteInitramfs(w io.Writer, files []File) error {
	cw := &countingWriter{w: w}
	for i, f := range files {
		if f.Name == "" || strings.HasPrefix(f.Name, "/") {
			return fmt.Errorf("write initramfs entry %q: name must be relative and non-empty", f.Name)
		}
		if f.Mode&0o170000 != ModeRegular && len(f.Data) > 0 {
			return fmt.Errorf("write initramfs entry %q: only regular files have data", f.Name)
		}
		if err := writeEntry(cw, uint32(i+1), f); err != nil {
			return err
		}
	}
	if err := writeEntry(cw, 0, File{Name: cpioTrailer}); err != nil {
		return err
	}
	return nil
}

func writeEntry(cw *countingWriter, ino uint32, f File) error {
	nlink := uint32(1)
	if f.Mode&0o170000 == ModeDir {
		nlink = 2
	}
	name := f.Name + "\x00"
	// magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
	// devminor, rdevmajor, rdevminor, namesize, check
	hdr := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		ino, f.Mode, 0, 0, nlink, 0, len(f.Data), 0, 0, f.Major, f.Minor, len(name), 0)
	steps := []func() error{
		func() error { return cw.write([]byte(hdr + name)) },
		cw.align,
		func() error { return cw.write(f.Data) },
		cw.align,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return fmt.Errorf("write initramfs entry %q: %w", f.Name, err)
		}
	}
	return nil
}

// countingWriter tracks the offset so that headers and data can be padded
// to 4 bytes.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) write(p []byte) error {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return err
}

func (c *countingWriter) align() error {
	return c.write(make([]byte, (4-c.n%4)%4))
}

// ReadInitramfs reads a newc archive written by WriteInitramfs back, up to
// the trailer.
func ReadInitramfs(r io.Reader) ([]File, error) {
	cr := &countingReader{r: r}
	var files []File
	for {
		var hdr [110]byte
		if err := cr.read(hdr[:]); err != nil {
			return nil, fmt.Errorf("read initramfs header after %d entries: %w", len(files), err)
		}
		if string(hdr[:6]) != "070701" {
			return nil, fmt.Errorf("read initramfs entry %d: bad magic %q", len(files), hdr[:6])
		}
		var field [13]uint32
		for i := range field {
			v, err := strconv.ParseUint(string(hdr[6+8*i:14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("read initramfs entry %d: field %d: %w", len(files), i, err)
			}
			field[i] = uint32(v)
		}
		name := make([]byte, field[11])
		if err := cr.read(name); err != nil {
			return nil, fmt.Errorf("read initramfs entry %d name: %w", len(files), err)
		}
		if err := cr.align(); err != nil {
			return nil, err
		}
		f := File{Name: strings.TrimSuffix(string(name), "\x00"), Mode: field[1], Major: field[9], Minor: field[10]}
		if f.Name == cpioTrailer {
			return files, nil
		}
		if field[6] > 0 {
			f.Data = make([]byte, field[6])
			if err := cr.read(f.Data); err != nil {
				return nil, fmt.Errorf("read initramfs entry %q data: %w", f.Name, err)
			}
		}
		if err := cr.align(); err != nil {
			return nil, err
		}
		files = append(files, f)
	}
}

type countingReader struct {
	r io.Reader
	n int64
}

func (c *countingReader) read(p []byte) error {
	n, err := io.ReadFull(c.r, p)
	c.n += int64(n)
	return err
}

func (c *countingReader) align() error {
	if err := c.read(make([]byte, (4-c.n%4)%4)); err != nil {
		return fmt.Errorf("read initramfs padding at %d: %w", c.n, err)
	}
	return nil
}
