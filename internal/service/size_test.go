package service

import (
	"path/filepath"
	"testing"
)

func TestParseSize(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want Size
	}{
		{"0", 0},
		{"1073741824", 1 << 30},
		{"10G", 10 << 30},
		{"10g", 10 << 30},
		{"512MiB", 512 << 20},
		{"512 MiB", 512 << 20},
		{"1.5G", 3 << 29},
		{"2K", 2048},
		{"2KB", 2000},
		{"3GB", 3e9},
		{"1T", 1 << 40},
		{"7B", 7},
	} {
		if got, err := ParseSize(tc.in); err != nil || got != tc.want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", tc.in, got, err, tc.want)
		}
	}
	for _, bad := range []string{"", "G", "10Q", "-1", "1e3", "10 G B", "auto", "99999999999T"} {
		if got, err := ParseSize(bad); err == nil {
			t.Errorf("ParseSize(%q) = %d, want an error", bad, got)
		}
	}
}

func TestSizeFlag(t *testing.T) {
	var z Size
	for _, tc := range []struct {
		in, out string
	}{{"auto", "auto"}, {"10G", "10G"}, {"1536M", "1536M"}, {"1000", "1000"}, {"0", "0"}} {
		if err := z.Set(tc.in); err != nil || z.String() != tc.out {
			t.Errorf("Set(%q): %q, %v; want %q", tc.in, z.String(), err, tc.out)
		}
	}
	f := DefaultConfig()
	if err := LoadConfig(writeConfig(t, "store_max_bytes = \"512MiB\"\n"), true, &f, nil); err != nil || f.StoreMaxBytes != 512<<20 {
		t.Errorf("config size with a unit: %d, %v", f.StoreMaxBytes, err)
	}
	if err := LoadConfig(writeConfig(t, "store_max_bytes = 1073741824\n"), true, &f, nil); err != nil || f.StoreMaxBytes != 1<<30 {
		t.Errorf("config size in bytes: %d, %v", f.StoreMaxBytes, err)
	}
	if DefaultNodeConfig().StoreMaxBytes != SizeAuto {
		t.Error("the store is not bounded by default")
	}
}

func TestAutoBound(t *testing.T) {
	dir := t.TempDir()
	b, err := SizeAuto.Bytes(filepath.Join(dir, "not", "yet", "made"))
	if err != nil || b <= 0 {
		t.Fatalf("auto bound of a store to be made: %d, %v", b, err)
	}
	whole, _ := AutoBound(dir)
	if b != whole {
		t.Errorf("auto bound %d of a new directory, %d of its parent's file system", b, whole)
	}
	if n, err := Size(5 << 20).Bytes(dir); err != nil || n != 5<<20 {
		t.Errorf("a set bound: %d, %v", n, err)
	}
}
