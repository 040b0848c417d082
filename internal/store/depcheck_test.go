package store

import (
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
)

// The store sits between fetch and fs: it imports the format and nothing else of ours, so
// data flows one way (fetch -> store -> fs) and the Source interface is the only contract.
func TestImports(t *testing.T) {
	allowed := map[string]bool{
		"lazypull/format": true,
		"github.com/prometheus/client_golang/prometheus": true,
		"golang.org/x/sys/unix":                          true,
	}
	files, err := filepath.Glob("*.go")
	if err != nil {
		t.Fatal(err)
	}
	fset := token.NewFileSet()
	for _, name := range files {
		if strings.HasSuffix(name, "_test.go") {
			continue
		}
		src, err := os.ReadFile(name)
		if err != nil {
			t.Fatal(err)
		}
		f, err := parser.ParseFile(fset, name, src, parser.ImportsOnly)
		if err != nil {
			t.Fatal(err)
		}
		for _, imp := range f.Imports {
			p, _ := strconv.Unquote(imp.Path.Value)
			std := !strings.Contains(strings.Split(p, "/")[0], ".") && !strings.HasPrefix(p, "lazypull/")
			if !std && !allowed[p] {
				t.Errorf("%s imports %s: the store may import the standard library, lazypull/format, prometheus and x/sys only", name, p)
			}
		}
	}
}
