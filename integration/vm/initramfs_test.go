package vm

import (
	"bytes"
	"reflect"
	"testing"
)

func TestInitramfsRoundTrip(t *testing.T) {
	files := []File{
		{Name: "dev", Mode: ModeDir | 0o755},
		{Name: "dev/console", Mode: ModeCharDev | 0o600, Major: 5, Minor: 1},
		{Name: "init", Mode: ModeRegular | 0o755, Data: []byte("\x7fELF and some bytes")},
		{Name: "a", Mode: ModeRegular | 0o644, Data: []byte("x")}, // odd sizes exercise the padding
		{Name: "empty", Mode: ModeRegular | 0o644},                // no data
		{Name: "modules/9p.ko", Mode: ModeRegular | 0o644, Data: []byte("abcd")},
	}
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, files); err != nil {
		t.Fatal(err)
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
	got, err := ReadInitramfs(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, files) {
		t.Errorf("read back:\n%+v\nwant:\n%+v", got, files)
	}
}

func TestInitramfsHeader(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, []File{{Name: "init", Mode: ModeRegular | 0o755, Data: []byte("hi")}}); err != nil {
		t.Fatal(err)
	}
	// magic, ino 1, mode 0100755, uid, gid, nlink 1, mtime, size 2,
	// devmajor, devminor, rdevmajor, rdevminor, namesize 5 ("init\0"), check
	want := "070701" + "00000001" + "000081ED" + "00000000" + "00000000" + "00000001" + "00000000" +
		"00000002" + "00000000" + "00000000" + "00000000" + "00000000" + "00000005" + "00000000" +
		"init\x00" + "\x00" + "hi" + "\x00\x00" // 110+5 bytes pad to 116; 2 to 4
	if got := buf.String()[:len(want)]; got != want {
		t.Errorf("first entry:\n%q\nwant\n%q", got, want)
	}
}

func TestInitramfsRejects(t *testing.T) {
	for _, tc := range []struct {
		name string
		file File
	}{
		{"absolute name", File{Name: "/init", Mode: ModeRegular | 0o755}},
		{"empty name", File{Mode: ModeRegular | 0o755}},
		{"directory with data", File{Name: "d", Mode: ModeDir | 0o755, Data: []byte("x")}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if err := WriteInitramfs(&bytes.Buffer{}, []File{tc.file}); err == nil {
				t.Errorf("WriteInitramfs(%+v) succeeded, want an error", tc.file)
			}
		})
	}
}

func TestReadInitramfsTruncated(t *testing.T) {
	var buf bytes.Buffer
	if err := WriteInitramfs(&buf, []File{{Name: "init", Mode: ModeRegular | 0o755, Data: []byte("hello")}}); err != nil {
		t.Fatal(err)
	}
	if _, err := ReadInitramfs(bytes.NewReader(buf.Bytes()[:buf.Len()-20])); err == nil {
		t.Error("reading a truncated archive succeeded, want an error")
	}
}
