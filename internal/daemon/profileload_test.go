package daemon

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"lazypull/internal/profile"
)

// TestLoadProfile: convert's --profile reads a profile document from a file, refuses a corrupt one
// naming the file, and refuses a digest when SRC is an OCI layout (a digest names a
// profile in SRC's repository).
func TestLoadProfile(t *testing.T) {
	dir := t.TempDir()
	good := &profile.Profile{Subject: "sha256:" + strings.Repeat("a", 64), Layers: []string{"sha256:" + strings.Repeat("b", 64)},
		Files: []profile.File{{Layer: 0, Path: "usr/bin/python3", Ranges: []profile.Range{{Off: 0, Len: 10}}}}}
	b, err := good.Marshal()
	if err != nil {
		t.Fatal(err)
	}
	goodFile := filepath.Join(dir, "good.json")
	badFile := filepath.Join(dir, "bad.json")
	os.WriteFile(goodFile, b, 0o644)
	os.WriteFile(badFile, []byte(`{"files": 3}`), 0o644)
	ctx := context.Background()

	p, err := LoadProfile(ctx, goodFile, "oci:/nowhere:x", nil, nil)
	if err != nil || len(p.Files) != 1 || p.Files[0].Path != "usr/bin/python3" {
		t.Fatalf("LoadProfile(file) = %+v, %v", p, err)
	}
	if _, err := LoadProfile(ctx, badFile, "oci:/nowhere:x", nil, nil); err == nil || !strings.Contains(err.Error(), badFile) || !strings.Contains(err.Error(), "not a profile document") {
		t.Errorf("corrupt profile file: %v; want an error naming the file and the fault", err)
	}
	_, err = LoadProfile(ctx, "sha256:"+strings.Repeat("c", 64), "oci:/nowhere:x", nil, nil)
	if !errors.Is(err, ErrProfileNoRepository) || !strings.Contains(err.Error(), "OCI layout") {
		t.Errorf("digest with a layout source: %v; want ErrProfileNoRepository", err)
	}
	if _, err := LoadProfile(ctx, "no such file::", "oci:/nowhere:x", nil, nil); err == nil || !strings.Contains(err.Error(), "neither a file nor a reference") {
		t.Errorf("neither a file nor a reference: %v", err)
	}
}
