package vm

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"reflect"
	"strings"
	"testing"
)

// Paths as Debian 12's kernel package has them.
const (
	pVirtio    = "kernel/drivers/virtio/virtio.ko"
	pRing      = "kernel/drivers/virtio/virtio_ring.ko"
	pModern    = "kernel/drivers/virtio/virtio_pci_modern_dev.ko"
	pLegacy    = "kernel/drivers/virtio/virtio_pci_legacy_dev.ko"
	pPCI       = "kernel/drivers/virtio/virtio_pci.ko"
	pNetfs     = "kernel/fs/netfs/netfs.ko"
	pFscache   = "kernel/fs/fscache/fscache.ko"
	p9pnet     = "kernel/net/9p/9pnet.ko"
	p9pVirtio  = "kernel/net/9p/9pnet_virtio.ko"
	p9p        = "kernel/fs/9p/9p.ko"
	pNet       = "kernel/drivers/net/virtio_net.ko"
	pFailover  = "kernel/net/core/failover.ko"
	pNetFailov = "kernel/drivers/net/net_failover.ko"
	pOverlay   = "kernel/fs/overlayfs/overlay.ko"
)

// debianDepends is each module's depends= as Debian 12's modules carry it.
var debianDepends = map[string]string{
	pVirtio:    "",
	pRing:      "",
	pModern:    "",
	pLegacy:    "",
	pPCI:       "virtio_ring,virtio_pci_modern_dev,virtio_pci_legacy_dev,virtio",
	pNetfs:     "",
	pFscache:   "netfs",
	p9pnet:     "",
	p9pVirtio:  "virtio,9pnet,virtio_ring",
	p9p:        "9pnet,fscache,netfs",
	pNet:       "virtio_ring,virtio,net_failover",
	pFailover:  "",
	pNetFailov: "failover",
	pOverlay:   "",
}

// checkOrder fails unless order has each module once, after its
// dependencies, and has all of want.
func checkOrder(t *testing.T, order []string, deps map[string][]string, want []string) {
	t.Helper()
	pos := map[string]int{}
	for i, p := range order {
		if _, dup := pos[p]; dup {
			t.Errorf("%s loaded twice in %q", p, order)
		}
		pos[p] = i
	}
	for p, ds := range deps {
		for _, d := range ds {
			if ip, ok := pos[p]; ok && (pos[d] >= ip || !containsPath(order, d)) {
				t.Errorf("%s must come after its dependency %s in %q", p, d, order)
			}
		}
	}
	for _, w := range want {
		if !containsPath(order, w) {
			t.Errorf("%s missing from %q", w, order)
		}
	}
}

func containsPath(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func TestModinfoDepsLoadOrder(t *testing.T) {
	var order []string
	for p := range debianDepends {
		order = append(order, p)
	}
	order = append(order, "kernel/fs/ext4/ext4.ko") // not needed, never read
	read := func(p string) ([]byte, error) {
		d, ok := debianDepends[p]
		if !ok {
			return nil, fmt.Errorf("test read %s: not a module this test expected to be read", p)
		}
		return fakeModule(t, "license=GPL\x00depends="+d+"\x00vermagic=6.1.0"), nil
	}
	deps, err := ModinfoDeps(order, GuestModules, read)
	if err != nil {
		t.Fatal(err)
	}
	got, err := deps.LoadOrder(GuestModules, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) != len(debianDepends) {
		t.Errorf("LoadOrder = %q: want the %d modules of the closure", got, len(debianDepends))
	}
	checkOrder(t, got, deps, []string{pPCI, p9pVirtio, p9p, pOverlay, pNet, pFscache, pFailover})
}

func TestParseModulesDepLoadOrder(t *testing.T) {
	dep := pPCI + ": " + pModern + " " + pRing + " " + pVirtio + " " + pLegacy + "\n" +
		pVirtio + ":\n" + pRing + ":\n" + pModern + ":\n" + pLegacy + ":\n" +
		p9pVirtio + ": " + pRing + " " + p9pnet + " " + pVirtio + "\n" + p9pnet + ":\n" +
		p9p + ": " + p9pnet + " " + pFscache + " " + pNetfs + "\n" +
		pFscache + ": " + pNetfs + "\n" + pNetfs + ":\n" + pOverlay + ":\n"
	deps, err := ParseModulesDep(strings.NewReader(dep))
	if err != nil {
		t.Fatal(err)
	}
	// virtio_net built in: no module needed for it.
	got, err := deps.LoadOrder(GuestModules, map[string]bool{"virtio_net": true})
	if err != nil {
		t.Fatal(err)
	}
	checkOrder(t, got, deps, []string{pPCI, p9pVirtio, p9p, pOverlay})
	if containsPath(got, pNet) {
		t.Errorf("built-in virtio_net in the load order %q", got)
	}
}

func TestLoadOrderErrors(t *testing.T) {
	for _, tc := range []struct {
		name string
		deps ModuleDeps
		want string
	}{
		{"missing module", ModuleDeps{pVirtio: nil}, "not in modules.dep nor modules.builtin"},
		{"missing dependency", ModuleDeps{pPCI: {pVirtio}}, "which modules.dep does not list"},
		{"cycle", ModuleDeps{pPCI: {pVirtio}, pVirtio: {pPCI}}, "cycle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := tc.deps.LoadOrder([]string{"virtio_pci"}, nil)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("LoadOrder: %v, want an error containing %q", err, tc.want)
			}
		})
	}
}

func TestModinfoDepsCompressed(t *testing.T) {
	_, err := ModinfoDeps([]string{"kernel/fs/9p/9p.ko.xz"}, []string{"9p"}, func(string) ([]byte, error) {
		t.Fatal("a compressed module was read")
		return nil, nil
	})
	if err == nil || !strings.Contains(err.Error(), "compressed") {
		t.Errorf("ModinfoDeps with a .ko.xz and no modules.dep: %v, want an error about compression", err)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/fs/9p/9p.ko":                          "9p",
		"kernel/drivers/virtio/virtio_pci.ko.xz":      "virtio_pci",
		"kernel/drivers/virtio/virtio-pci.ko.zst":     "virtio_pci",
		"kernel/drivers/virtio/virtio_pci_modern_dev": "virtio_pci_modern_dev",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestParseModulesBuiltin(t *testing.T) {
	got, err := ParseModulesBuiltin(strings.NewReader("kernel/fs/ext4/ext4.ko\n\nkernel/drivers/virtio/virtio-mmio.ko\n"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]bool{"ext4": true, "virtio_mmio": true}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("ParseModulesBuiltin = %v, want %v", got, want)
	}
}

// fakeModule returns a minimal ELF64 relocatable file whose only section
// besides the string table is .modinfo with the given contents.
func fakeModule(t testing.TB, modinfo string) []byte {
	t.Helper()
	shstr := "\x00.modinfo\x00.shstrtab\x00"
	dataOff := uint64(64)
	strOff := dataOff + uint64(len(modinfo))
	shOff := (strOff + uint64(len(shstr)) + 7) &^ 7
	var b bytes.Buffer
	hdr := elf.Header64{
		Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64), Version: uint32(elf.EV_CURRENT),
		Shoff: shOff, Ehsize: 64, Shentsize: 64, Shnum: 3, Shstrndx: 2,
	}
	copy(hdr.Ident[:], "\x7fELF")
	hdr.Ident[elf.EI_CLASS] = byte(elf.ELFCLASS64)
	hdr.Ident[elf.EI_DATA] = byte(elf.ELFDATA2LSB)
	hdr.Ident[elf.EI_VERSION] = byte(elf.EV_CURRENT)
	binary.Write(&b, binary.LittleEndian, hdr)
	b.WriteString(modinfo)
	b.WriteString(shstr)
	b.Write(make([]byte, shOff-uint64(b.Len())))
	for _, sh := range []elf.Section64{
		{},
		{Name: 1, Type: uint32(elf.SHT_PROGBITS), Off: dataOff, Size: uint64(len(modinfo)), Addralign: 1},
		{Name: 10, Type: uint32(elf.SHT_STRTAB), Off: strOff, Size: uint64(len(shstr)), Addralign: 1},
	} {
		binary.Write(&b, binary.LittleEndian, sh)
	}
	return b.Bytes()
}

func TestModinfoDepends(t *testing.T) {
	got, err := modinfoDepends(fakeModule(t, "alias=fs-9p\x00depends=9pnet,netfs,fscache\x00intree=Y\x00"))
	if err != nil {
		t.Fatal(err)
	}
	if want := []string{"9pnet", "netfs", "fscache"}; !reflect.DeepEqual(got, want) {
		t.Errorf("modinfoDepends = %q, want %q", got, want)
	}
	if _, err := modinfoDepends([]byte("not an ELF file")); err == nil {
		t.Error("modinfoDepends of garbage succeeded, want an error")
	}
}
