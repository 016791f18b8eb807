package kernel

import (
	"bufio"
	"fmt"
	"io"
	"path"
	"strings"
)

// ModuleDeps is a parsed modules.dep: each module's path (relative to
// /lib/modules/<version>) mapped to the paths of the modules it needs.
// depmod lists the full transitive set, but LoadOrder does not rely on it.
type ModuleDeps struct {
	deps   map[string][]string
	byName map[string]string // module name -> path
}

// ParseModulesDep reads modules.dep ("path: dep dep ...", one module per
// line).
func ParseModulesDep(r io.Reader) (ModuleDeps, error) {
	md := ModuleDeps{deps: map[string][]string{}, byName: map[string]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1024*1024)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		mod, rest, ok := strings.Cut(line, ":")
		if !ok || strings.TrimSpace(mod) == "" {
			return ModuleDeps{}, fmt.Errorf("modules.dep line %d: want \"path: deps\", got %q", n, line)
		}
		mod = strings.TrimSpace(mod)
		md.deps[mod] = strings.Fields(rest)
		md.byName[ModuleName(mod)] = mod
	}
	if err := sc.Err(); err != nil {
		return ModuleDeps{}, fmt.Errorf("read modules.dep: %w", err)
	}
	return md, nil
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

// ModuleName turns a module path ("kernel/drivers/char/hw_random/virtio-rng.ko.xz")
// into the name the kernel uses ("virtio_rng"): base name without the .ko
// and compression suffixes, dashes folded to underscores.
func ModuleName(p string) string {
	base := path.Base(p)
	if i := strings.Index(base, ".ko"); i >= 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// Path returns the path of the module called name.
func (md ModuleDeps) Path(name string) (string, bool) {
	p, ok := md.byName[ModuleName(name)]
	return p, ok
}

// LoadOrder returns the paths of the named modules and everything they
// depend on, each once, every module after all of its dependencies (the
// order insmod needs). Names listed in builtin are compiled into the kernel
// and skipped. A name that is neither a module nor builtin, a dependency
// that modules.dep does not describe, or a dependency cycle is an error.
func (md ModuleDeps) LoadOrder(names []string, builtin map[string]bool) ([]string, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []string
	var visit func(p string, chain []string) error
	visit = func(p string, chain []string) error {
		switch state[p] {
		case done:
			return nil
		case visiting:
			return fmt.Errorf("modules.dep has a dependency cycle: %s -> %s", strings.Join(chain, " -> "), p)
		}
		deps, ok := md.deps[p]
		if !ok {
			return fmt.Errorf("module %s (needed by %s) is not in modules.dep", p, strings.Join(chain, " -> "))
		}
		state[p] = visiting
		for _, d := range deps {
			if err := visit(d, append(chain, p)); err != nil {
				return err
			}
		}
		state[p] = done
		order = append(order, p)
		return nil
	}
	for _, name := range names {
		name = ModuleName(name)
		p, ok := md.byName[name]
		if !ok {
			if builtin[name] {
				continue
			}
			return nil, fmt.Errorf("kernel module %s is neither in modules.dep nor built in", name)
		}
		if err := visit(p, nil); err != nil {
			return nil, err
		}
	}
	return order, nil
}
