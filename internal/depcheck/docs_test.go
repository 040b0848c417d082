package depcheck

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestLayoutListsEveryPackage checks that README.md's "Layout" lists every package of the
// module, each on a line of its own that starts with the package's directory.
func TestLayoutListsEveryPackage(t *testing.T) {
	g, _ := load(t)
	layout := section(t, readDoc(t, "README.md"), "## Layout")
	listed := map[string]bool{}
	for _, line := range strings.Split(layout, "\n") {
		if f := strings.Fields(line); len(f) > 0 {
			listed[strings.TrimSuffix(f[0], "/")] = true
		}
	}
	for _, p := range sorted(g) {
		if !listed[rel(p)] {
			t.Errorf("README.md's Layout does not list %s: add a line saying what it owns", rel(p))
		}
	}
}

// TestEveryPackageSaysWhatItOwns checks that every package with Go files has a package
// comment (a doc.go, by custom), so that go doc and the Layout agree on what it owns.
func TestEveryPackageSaysWhatItOwns(t *testing.T) {
	_, undocumented := load(t)
	for _, p := range undocumented {
		t.Errorf("%s has no package comment: add a doc.go saying what it owns", p)
	}
}

// TestDesignStandsAlone checks that docs/design.md points to nothing outside the
// repository and cites no tracker numbers: what it needs, it says in place.
func TestDesignStandsAlone(t *testing.T) {
	doc := readDoc(t, "docs/design.md")
	for _, re := range []*regexp.Regexp{
		regexp.MustCompile(`\.\./`),                    // a path climbing out of docs/: the repository's files are named from its root
		regexp.MustCompile(`(?i)\b(issue|pr)s? #?\d+`), // a tracker number
		regexp.MustCompile(`(?m)(^|\s)#\d+\b`),
	} {
		for _, m := range re.FindAllString(doc, -1) {
			t.Errorf("docs/design.md: %q refers to something outside the repository", m)
		}
	}
}

// readDoc reads a file of the module by its path from the module's root.
func readDoc(t *testing.T, path string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", filepath.FromSlash(path)))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// section returns the text of the markdown section that starts with the heading line.
func section(t *testing.T, doc, heading string) string {
	t.Helper()
	_, rest, ok := strings.Cut(doc, "\n"+heading+"\n")
	if !ok {
		t.Fatalf("no section %q", heading)
	}
	if i := strings.Index(rest, "\n## "); i >= 0 {
		rest = rest[:i]
	}
	return rest
}
