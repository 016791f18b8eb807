package config

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"
)

// Every config key is documented in the README, and read by code outside
// this package: a key that parses but that nothing reads would be a
// setting that does nothing (tap_pool_size and dns_listen once were).
func TestEveryKeyIsDocumentedAndRead(t *testing.T) {
	root, err := filepath.Abs("../..")
	if err != nil {
		t.Fatal(err)
	}
	readme, err := os.ReadFile(filepath.Join(root, "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	// Field names selected anywhere in production code outside this package.
	selected := map[string]bool{}
	err = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			switch d.Name() {
			case ".git", "testdata", "config", "e2e", "bin", "dist":
				if p != root {
					return filepath.SkipDir
				}
			}
			return nil
		}
		if !strings.HasSuffix(p, ".go") || strings.HasSuffix(p, "_test.go") {
			return nil
		}
		f, err := parser.ParseFile(token.NewFileSet(), p, nil, 0)
		if err != nil {
			return err
		}
		ast.Inspect(f, func(n ast.Node) bool {
			if s, ok := n.(*ast.SelectorExpr); ok {
				selected[s.Sel.Name] = true
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	check := func(typ reflect.Type, prefix string) {
		for i := range typ.NumField() {
			f := typ.Field(i)
			key := f.Tag.Get("toml")
			if key == "" || key == "-" {
				continue
			}
			if f.Type.Kind() == reflect.Struct && f.Type.Name() == "VMDefaults" {
				continue // its keys are checked on their own
			}
			if !regexp.MustCompile("`" + regexp.QuoteMeta(key) + "`").Match(readme) {
				t.Errorf("config key %s%s is not documented in README.md", prefix, key)
			}
			if !selected[f.Name] {
				t.Errorf("config key %s%s (Config.%s) is read by no code outside package config", prefix, key, f.Name)
			}
		}
	}
	check(reflect.TypeOf(Config{}), "")
	check(reflect.TypeOf(VMDefaults{}), "vm_defaults.")
}
