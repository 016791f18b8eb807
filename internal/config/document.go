package config

import (
	"cmp"
	"fmt"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// valueKind is the TOML type a key must have.
type valueKind int

const (
	kindString valueKind = iota
	kindInteger
	kindStringList
	kindTable
	kindBool
)

// keyKinds lists every key config.toml may hold, by dotted name.
var keyKinds = map[string]valueKind{
	"log_level":              kindString,
	"default_image":          kindString,
	"bridge_name":            kindString,
	"bridge_cidr":            kindString,
	"tap_pool_size":          kindInteger,
	"dns_listen":             kindString,
	"default_nat":            kindBool,
	"warm":                   kindBool,
	"root_disk":              kindString,
	"forward_ports":          kindString,
	"default_dns":            kindStringList,
	"vmm":                    kindString,
	"qemu_accel":             kindString,
	"firecracker_bin":        kindString,
	"qemu_bin":               kindString,
	"ops_retention":          kindString,
	"vm_defaults":            kindTable,
	"vm_defaults.vcpu":       kindInteger,
	"vm_defaults.memory_mib": kindInteger,
	"vm_defaults.disk_size":  kindString,
}

// keyInfo is where a key appears in the document and what it holds.
type keyInfo struct {
	line  int
	kind  unstable.Kind
	elems []unstable.Kind // element kinds, for arrays
}

// docIndex maps each dotted key of a document to its keyInfo, so that
// errors found after decoding can still name the line.
type docIndex map[string]keyInfo

// indexDocument walks a TOML document with go-toml's own parser and
// records every key's line and value kind. Tables (headers, inline tables
// and the parents of dotted keys) are recorded with kind unstable.Table.
func indexDocument(data []byte) (docIndex, error) {
	idx := docIndex{}
	var p unstable.Parser
	p.Reset(data)
	var table []string
	for p.NextExpression() {
		expr := p.Expression()
		switch expr.Kind {
		case unstable.Table, unstable.ArrayTable:
			parts, line := keyOf(&p, expr)
			table = parts
			idx.addParents(parts, line)
			idx.add(parts, keyInfo{line: line, kind: expr.Kind})
		case unstable.KeyValue:
			idx.addKeyValue(&p, table, expr)
		}
	}
	if err := p.Error(); err != nil {
		return idx, err
	}
	return idx, nil
}

func (idx docIndex) addKeyValue(p *unstable.Parser, table []string, kv *unstable.Node) {
	parts, line := keyOf(p, kv)
	full := append(slices.Clone(table), parts...)
	idx.addParents(full, line)
	value := kv.Value()
	info := keyInfo{line: line, kind: value.Kind}
	switch value.Kind {
	case unstable.Array:
		for it := value.Children(); it.Next(); {
			info.elems = append(info.elems, it.Node().Kind)
		}
	case unstable.InlineTable:
		info.kind = unstable.Table
		for it := value.Children(); it.Next(); {
			if child := it.Node(); child.Kind == unstable.KeyValue {
				idx.addKeyValue(p, full, child)
			}
		}
	}
	idx.add(full, info)
}

// addParents records the tables that a dotted key implies, unless the
// document already named them.
func (idx docIndex) addParents(parts []string, line int) {
	for i := 1; i < len(parts); i++ {
		key := strings.Join(parts[:i], ".")
		if _, ok := idx[key]; !ok {
			idx[key] = keyInfo{line: line, kind: unstable.Table}
		}
	}
}

func (idx docIndex) add(parts []string, info keyInfo) {
	key := strings.Join(parts, ".")
	if _, ok := idx[key]; !ok { // a duplicate is reported by the decoder
		idx[key] = info
	}
}

func keyOf(p *unstable.Parser, n *unstable.Node) (parts []string, line int) {
	for it := n.Key(); it.Next(); {
		k := it.Node()
		if len(parts) == 0 {
			line = p.Shape(k.Raw).Start.Line
		}
		parts = append(parts, string(k.Data))
	}
	return parts, line
}

// checkKinds reports each known key whose value has the wrong TOML type,
// in document order. Unknown keys are left to the strict decoder.
func checkKinds(path string, idx docIndex) []error {
	keys := make([]string, 0, len(idx))
	for k := range idx {
		keys = append(keys, k)
	}
	slices.SortFunc(keys, func(a, b string) int {
		return cmp.Or(cmp.Compare(idx[a].line, idx[b].line), cmp.Compare(a, b))
	})
	var problems []error
	for _, key := range keys {
		want, known := keyKinds[key]
		if !known {
			continue
		}
		info := idx[key]
		if msg := kindMismatch(key, want, info); msg != "" {
			problems = append(problems, &KeyError{Path: path, Line: info.line, Key: key, Msg: msg})
		}
	}
	return problems
}

func kindMismatch(key string, want valueKind, info keyInfo) string {
	switch want {
	case kindString:
		if info.kind != unstable.String {
			example := map[string]string{"ops_retention": "\"30m\"", "vm_defaults.disk_size": "\"8G\""}[key]
			if example == "" {
				return fmt.Sprintf("%s must be a string in quotes, not %s", key, describeKind(info.kind))
			}
			return fmt.Sprintf("%s must be a string in quotes such as %s, not %s", key, example, describeKind(info.kind))
		}
	case kindInteger:
		if info.kind != unstable.Integer {
			return fmt.Sprintf("%s must be a whole number, not %s", key, describeKind(info.kind))
		}
	case kindStringList:
		if info.kind != unstable.Array {
			return fmt.Sprintf("%s must be a list of strings such as [\"1.1.1.1\"], not %s", key, describeKind(info.kind))
		}
		for _, k := range info.elems {
			if k != unstable.String {
				return fmt.Sprintf("%s must be a list of strings such as [\"1.1.1.1\"]; it holds %s", key, describeKind(k))
			}
		}
	case kindBool:
		if info.kind != unstable.Bool {
			return fmt.Sprintf("%s must be true or false, not %s", key, describeKind(info.kind))
		}
	case kindTable:
		if info.kind != unstable.Table {
			return fmt.Sprintf("%s must be a table ([%s]), not %s", key, key, describeKind(info.kind))
		}
	}
	return ""
}

func describeKind(k unstable.Kind) string {
	switch k {
	case unstable.String:
		return "a string"
	case unstable.Integer:
		return "a whole number"
	case unstable.Float:
		return "a fractional number"
	case unstable.Bool:
		return "true/false"
	case unstable.Array:
		return "a list"
	case unstable.Table, unstable.InlineTable:
		return "a table"
	case unstable.ArrayTable:
		return "an array of tables"
	case unstable.LocalDate, unstable.LocalTime, unstable.LocalDateTime, unstable.DateTime:
		return "a date or time"
	default:
		return "a " + k.String()
	}
}
