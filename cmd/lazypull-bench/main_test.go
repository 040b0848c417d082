package main

import (
	"strings"
	"testing"
)

// TestUsage: the harness's benchmarks are its subcommands; a wrong command line is refused
// with exit status 2 before anything starts.
func TestUsage(t *testing.T) {
	for _, tc := range []struct {
		args     []string
		code     int
		out, err string
	}{
		{args: nil, code: 2, err: "usage: lazypull-bench BENCHMARK"},
		{args: []string{"help"}, code: 0, out: "snapshotter"},
		{args: []string{"frobnicate"}, code: 2, err: `unknown benchmark "frobnicate"`},
		{args: []string{"e2e", "-h"}, code: 0, out: "-scenario-links"},
		{args: []string{"convert", "-h"}, code: 0, out: "-extra-level"},
		{args: []string{"mount", "-h"}, code: 0, out: "-size"},
		{args: []string{"snapshotter", "-h"}, code: 0, out: "-parts"},
		{args: []string{"mount", "--n", "0"}, code: 2, err: "-n 0: want a positive integer"},
		{args: []string{"mount", "--size", "big"}, code: 2, err: `-size: "big"`},
		{args: []string{"mount", "extra"}, code: 2, err: "no arguments expected"},
		{args: []string{"convert", "--extra-level", "10"}, code: 2, err: "-extra-level 10"},
		{args: []string{"snapshotter", "--parts", "disk"}, code: 2, err: `unknown part "disk"`},
		{args: []string{"snapshotter", "--parts", ""}, code: 2, err: "-parts: none given"},
	} {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			code, out, errOut := run(t, tc.args...)
			if code != tc.code || !strings.Contains(out, tc.out) || !strings.Contains(errOut, tc.err) {
				t.Errorf("exit %d, stdout %q, stderr %q; want %d, %q, %q", code, out, errOut, tc.code, tc.out, tc.err)
			}
		})
	}
}

func TestParseSize(t *testing.T) {
	for in, want := range map[string]int64{"1G": 1 << 30, "256M": 256 << 20, "64k": 64 << 10, "4096": 4096} {
		if got, err := parseSize(in); err != nil || got != want {
			t.Errorf("parseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1M", "xG"} {
		if _, err := parseSize(in); err == nil {
			t.Errorf("parseSize(%q): no error", in)
		}
	}
}
