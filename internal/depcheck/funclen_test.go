package depcheck

import (
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// maxFuncLines is the longest a function of the module may be, from its func keyword to its
// closing brace, outside tests. A longer one does several jobs; split it where the jobs part.
const maxFuncLines = 100

// TestNoLongFunctions holds every function (and function literal) of the module's non-test
// Go files to maxFuncLines.
func TestNoLongFunctions(t *testing.T) {
	root := filepath.Join("..", "..")
	var files []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if p != root && skipDir(p) {
				return filepath.SkipDir
			}
			return nil
		}
		if strings.HasSuffix(p, ".go") && !strings.HasSuffix(p, "_test.go") {
			files = append(files, p)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 50 {
		t.Fatalf("found %d Go files under %s, want the module's", len(files), root)
	}
	for _, p := range files {
		src, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		rel, _ := filepath.Rel(root, p)
		for _, long := range longFuncs(t, rel, src) {
			t.Error(long)
		}
	}
}

// skipDir: what is not the module's code (another module's, build output, fixtures).
func skipDir(p string) bool {
	switch filepath.Base(p) {
	case ".git", "bin", "testdata", "node_modules", "bench-results":
		return true
	}
	_, err := os.Stat(filepath.Join(p, "go.mod"))
	return err == nil // a module of its own (tools/stargz-grpc)
}

// longFuncs returns one line for each function of src longer than maxFuncLines.
func longFuncs(t *testing.T, name string, src []byte) []string {
	t.Helper()
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, name, src, parser.SkipObjectResolution)
	if err != nil {
		t.Fatalf("parse %s: %v", name, err)
	}
	var out []string
	ast.Inspect(f, func(n ast.Node) bool {
		var body *ast.BlockStmt
		what := "a function literal"
		switch fn := n.(type) {
		case *ast.FuncDecl:
			body, what = fn.Body, fn.Name.Name
		case *ast.FuncLit:
			body = fn.Body
		}
		if body == nil {
			return true
		}
		start := fset.Position(n.Pos())
		if lines := fset.Position(body.Rbrace).Line - start.Line + 1; lines > maxFuncLines {
			out = append(out, fmt.Sprintf("%s:%d: %s is %d lines, more than %d: split it", name, start.Line, what, lines, maxFuncLines))
		}
		return true
	})
	return out
}

func TestLongFuncsCatches(t *testing.T) {
	body := strings.Repeat("\tx++\n", maxFuncLines-2)
	ok := "package p\n\nfunc ok() {\n" + body + "}\n"
	if got := longFuncs(t, "ok.go", []byte(ok)); len(got) != 0 {
		t.Errorf("a function of %d lines: %v, want nothing", maxFuncLines, got)
	}
	long := "package p\n\nfunc long() {\n" + body + "\tx++\n}\n\nvar f = func() {\n" + body + "\tx++\n}\n"
	got := longFuncs(t, "long.go", []byte(long))
	if len(got) != 2 || !strings.Contains(got[0], "long.go:3: long is 101 lines") || !strings.Contains(got[1], "function literal") {
		t.Errorf("functions of %d lines: %q, want both named", maxFuncLines+1, got)
	}
}
