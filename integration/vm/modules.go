package vm

import (
	"bufio"
	"bytes"
	"debug/elf"
	"fmt"
	"io"
	"path"
	"strings"
)

// GuestModules are the modules the guest loads: virtio over PCI, the 9p
// filesystem over virtio, overlayfs (a writable /tmp over the shared one)
// and the virtio network card for -forward. Their dependencies are added
// from modules.dep or the modules' .modinfo.
var GuestModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_net"}

// ModuleDeps maps a module's path (relative to lib/modules/<release>) to the
// paths of the modules it depends on, as modules.dep lists them.
type ModuleDeps map[string][]string

// ParseModulesDep reads a modules.dep file: "kernel/a.ko: kernel/b.ko ...".
func ParseModulesDep(r io.Reader) (ModuleDeps, error) {
	deps := ModuleDeps{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for sc.Scan() {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok {
			return nil, fmt.Errorf("parse modules.dep line %q: no colon", line)
		}
		deps[mod] = strings.Fields(rest)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.dep: %w", err)
	}
	return deps, nil
}

// ModuleName returns the kernel's name for a module path:
// kernel/fs/9p/9p.ko.xz -> 9p. Dashes become underscores.
func ModuleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// LoadOrder returns the module paths to load for names, dependencies first,
// each once. A name that modules.dep does not list is an error unless
// builtin (the names from modules.builtin) has it.
func (d ModuleDeps) LoadOrder(names []string, builtin map[string]bool) ([]string, error) {
	byName := make(map[string]string, len(d))
	for p := range d {
		byName[ModuleName(p)] = p
	}
	var order []string
	done := map[string]bool{}
	var visit func(p string, stack []string) error
	visit = func(p string, stack []string) error {
		if done[p] {
			return nil
		}
		for _, s := range stack {
			if s == p {
				return fmt.Errorf("module dependency cycle: %s", strings.Join(append(stack, p), " -> "))
			}
		}
		for _, dep := range d[p] {
			if _, ok := d[dep]; !ok {
				return fmt.Errorf("module %s depends on %s, which modules.dep does not list", p, dep)
			}
			if err := visit(dep, append(stack, p)); err != nil {
				return err
			}
		}
		done[p] = true
		order = append(order, p)
		return nil
	}
	for _, n := range names {
		p, ok := byName[strings.ReplaceAll(n, "-", "_")]
		if !ok {
			if builtin[strings.ReplaceAll(n, "-", "_")] {
				continue
			}
			return nil, fmt.Errorf("module %s: not in modules.dep nor modules.builtin", n)
		}
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}

// ParseModulesBuiltin reads modules.builtin (one path per line) into a set
// of module names.
func ParseModulesBuiltin(r io.Reader) (map[string]bool, error) {
	set := map[string]bool{}
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		if line := strings.TrimSpace(sc.Text()); line != "" {
			set[ModuleName(line)] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("read modules.builtin: %w", err)
	}
	return set, nil
}

// ModinfoDeps builds the dependency map for names and everything they need
// from the modules' own .modinfo "depends=" strings. Debian's image packages
// ship modules.order but no modules.dep (depmod makes that on install).
// Module paths come from order (the lines of modules.order); read returns a
// module file's contents.
func ModinfoDeps(order []string, names []string, read func(p string) ([]byte, error)) (ModuleDeps, error) {
	byName := make(map[string]string, len(order))
	for _, p := range order {
		byName[ModuleName(p)] = p
	}
	deps := ModuleDeps{}
	queue := append([]string(nil), names...)
	for len(queue) > 0 {
		n := strings.ReplaceAll(queue[0], "-", "_")
		queue = queue[1:]
		p, ok := byName[n]
		if !ok {
			continue // built in, or missing: LoadOrder tells which
		}
		if _, seen := deps[p]; seen {
			continue
		}
		if !strings.HasSuffix(p, ".ko") {
			return nil, fmt.Errorf("module %s is compressed (%s) and the package has no modules.dep: unpack it or use a kernel with uncompressed modules", n, p)
		}
		data, err := read(p)
		if err != nil {
			return nil, fmt.Errorf("read module %s: %w", p, err)
		}
		ds, err := modinfoDepends(data)
		if err != nil {
			return nil, fmt.Errorf("read .modinfo of %s: %w", p, err)
		}
		deps[p] = []string{}
		for _, d := range ds {
			dp, ok := byName[d]
			if !ok {
				return nil, fmt.Errorf("module %s depends on %s, which modules.order does not list", p, d)
			}
			deps[p] = append(deps[p], dp)
			queue = append(queue, d)
		}
	}
	return deps, nil
}

// modinfoDepends returns the module names in the "depends=" entry of an ELF
// module's .modinfo section.
func modinfoDepends(module []byte) ([]string, error) {
	f, err := elf.NewFile(bytes.NewReader(module))
	if err != nil {
		return nil, err
	}
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("no .modinfo section")
	}
	info, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(info, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var out []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					out = append(out, strings.ReplaceAll(d, "-", "_"))
				}
			}
			return out, nil
		}
	}
	return nil, nil
}
