package daemon

import (
	"bytes"
	"cmp"
	"context"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"lazypull/internal/testutil"
)

// TestCommandOf: what an image's config says a container runs, as a shell would find it:
// the programs (a shell -c script's commands, past assignments, reserved words and
// wrappers) and the words that may be files.
func TestCommandOf(t *testing.T) {
	for _, tc := range []struct {
		name           string
		cfg            v1.Config
		programs, args []string
		path           []string
		workdir        string
	}{
		{name: "exec form", cfg: v1.Config{Entrypoint: []string{"python3"}, Cmd: []string{"/app/main.py", "--port", "80"}, WorkingDir: "/app/"},
			programs: []string{"python3"}, args: []string{"/app/main.py", "80"}, workdir: "/app"},
		{name: "shell form", cfg: v1.Config{Cmd: []string{"sh", "-c", "gcc -O1 -o /tmp/hello /hello.c && /tmp/hello"}},
			programs: []string{"sh", "gcc", "/tmp/hello"}, args: []string{"/tmp/hello", "/hello.c"}},
		{name: "wrappers and assignments", cfg: v1.Config{Entrypoint: []string{"/bin/bash", "-ec"}, Cmd: []string{"FOO=1 exec env -i BAR=2 nohup ./run 'a b' \"c\\\"d\" # ./not-run\nif true; then x; fi"}},
			programs: []string{"/bin/bash", "exec", "env", "nohup", "./run", "true", "x"}, args: []string{"a b", `c"d`}},
		{name: "expansions left out", cfg: v1.Config{Cmd: []string{"sh", "-c", "$HOME/bin/x /data/*.bin `id` ok"}},
			programs: []string{"sh"}, args: []string{"ok"}},
		{name: "redirection", cfg: v1.Config{Cmd: []string{"sh", "-c", "cat </etc/x >/dev/null | wc"}},
			programs: []string{"sh", "cat", "wc"}, args: []string{"/etc/x", "/dev/null"}},
		{name: "PATH", cfg: v1.Config{Cmd: []string{"node"}, Env: []string{"A=1", "PATH=/opt/node/bin:relative:/usr/bin/"}},
			programs: []string{"node"}, path: []string{"/opt/node/bin", "/usr/bin"}},
		{name: "nothing", cfg: v1.Config{}},
		{name: "no -c", cfg: v1.Config{Cmd: []string{"bash", "script.sh", "x"}}, programs: []string{"bash"}, args: []string{"script.sh", "x"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := commandOf(tc.cfg)
			if !slices.Equal(c.programs, tc.programs) || !slices.Equal(c.args, tc.args) {
				t.Errorf("programs %q args %q, want %q %q", c.programs, c.args, tc.programs, tc.args)
			}
			want := tc.path
			if want == nil {
				want = strings.Split(defaultPATH, ":")
			}
			if !slices.Equal(c.path, want) {
				t.Errorf("path %q, want %q", c.path, want)
			}
			if w := cmp.Or(tc.workdir, "/"); c.workdir != w {
				t.Errorf("workdir %q, want %q", c.workdir, w)
			}
		})
	}
}

func TestShebang(t *testing.T) {
	for _, tc := range []struct {
		head, interp, arg string
		ok                bool
	}{
		{"#!/bin/sh\necho", "/bin/sh", "", true},
		{"#! /usr/bin/env -S python3 -u\n", "/usr/bin/env", "-S python3 -u", true},
		{"#!/bin/bash", "/bin/bash", "", true}, // a script of one line
		{"#!bash\n", "", "", false},
		{"\x7fELF", "", "", false},
		{"#!\n", "", "", false},
		{"#!/" + strings.Repeat("a", shebangMax), "", "", false}, // no end within the kernel's buffer
	} {
		head := tc.head
		if len(head) > shebangMax {
			head = head[:shebangMax]
		}
		interp, arg, ok := shebang([]byte(head))
		if interp != tc.interp || arg != tc.arg || ok != tc.ok {
			t.Errorf("shebang(%.20q) = %q, %q, %v; want %q, %q, %v", tc.head, interp, arg, ok, tc.interp, tc.arg, tc.ok)
		}
	}
}

// FuzzCommandOf: a config from an image, hostile: what its command names stays within
// the bounds (words, PATH directories, word length) and holds no expansion, whatever the
// bytes.
func FuzzCommandOf(f *testing.F) {
	f.Add([]byte(`{"config":{"Entrypoint":["sh","-c"],"Cmd":["a && b 'c' \"d\" e=f g # h"],"Env":["PATH=/x:/y"],"WorkingDir":"/w"}}`))
	f.Add([]byte(`{"config":{"Cmd":["python3","/app/main.py"]}}`))
	f.Fuzz(func(t *testing.T, raw []byte) {
		cfg, err := v1.ParseConfigFile(bytes.NewReader(raw))
		if err != nil {
			return
		}
		c := commandOf(cfg.Config)
		if n := len(c.programs) + len(c.args); n > cmdMaxWords {
			t.Fatalf("%d words, over %d", n, cmdMaxWords)
		}
		if len(c.path) > cmdMaxPath || !strings.HasPrefix(c.workdir, "/") {
			t.Fatalf("path %q workdir %q", c.path, c.workdir)
		}
		for _, d := range c.path {
			if !strings.HasPrefix(d, "/") {
				t.Fatalf("relative PATH directory %q", d)
			}
		}
		for _, w := range append(c.programs, c.args...) {
			if w == "" || len(w) > cmdWordMax || strings.ContainsAny(w, "$`*?[\x00") {
				t.Fatalf("word %q kept", w)
			}
		}
	})
}

// FuzzShellWords: a script's words are pieces of it: never more bytes than it has, nor
// more words than its bytes; a script of plain words separated by spaces is read back as
// them, the first a program.
func FuzzShellWords(f *testing.F) {
	f.Add("gcc -O1 -o /tmp/hello /hello.c && /tmp/hello")
	f.Add("a 'b c' \"d\\\"e\" f\\ g # h\ni")
	f.Fuzz(func(t *testing.T, s string) {
		programs, args := shellWords(s)
		n := 0
		for _, w := range append(programs, args...) {
			n += len(w)
		}
		if n > len(s) || len(programs)+len(args) > len(s) {
			t.Fatalf("%d words of %d bytes from %d bytes", len(programs)+len(args), n, len(s))
		}
		plain := strings.Fields(s)
		if len(plain) == 0 || strings.ContainsFunc(s, func(r rune) bool {
			return !(r >= 'a' && r <= 'z' || r >= '0' && r <= '9' || r == ' ' || r == '/' || r == '.')
		}) {
			return
		}
		if !slices.Equal(append(programs, args...), plain) || len(programs) != 1 {
			t.Fatalf("%q: programs %q args %q", s, programs, args)
		}
	})
}

// TestCommandWalk: without a profile, what the image's command names is fetched before
// anything reads it: a script found from the working directory, the interpreter its #!
// line finds on the config's PATH through env, that program's segments and the
// libraries it needs, the loader's cache, and the data file the command names. Files
// nothing names are not. With OpenOptions.NoSpeculation nothing is.
func TestCommandWalk(t *testing.T) {
	const prog = "/usr/bin/python3.11"
	base, app, needed := hostProgramTars(t, prog)
	extra := testutil.Tar(t,
		testutil.File("app/run", []byte("#!/usr/bin/env -S python3.11 -u\nprint(1)\n")),
		testutil.File("app/data.txt", []byte("data")),
		testutil.File("app/other.txt", []byte("other")),
		testutil.File("etc/ld.so.cache", testutil.RandBytes(3, 9000)))
	img, _ := lazyTarOn(t, empty.Image, base, nil)
	img, _ = lazyTarOn(t, img, app, nil)
	img, _ = lazyTarOn(t, img, extra, nil)
	img, err := mutate.Config(img, v1.Config{Entrypoint: []string{"/bin/sh", "-c"}, Cmd: []string{"cd /app && exec ./run data.txt"},
		WorkingDir: "/app", Env: []string{"PATH=/usr/local/bin:/usr/bin"}})
	if err != nil {
		t.Fatal(err)
	}
	ref := testutil.NewRegistry(t).Push(t, "cmd:v1", img)
	for _, off := range []bool{false, true} {
		im, st := openFreshWith(t, ref, OpenOptions{NoSpeculation: off})
		local := func(p string) bool {
			l, e := im.lookup(p)
			if e == nil {
				t.Fatalf("%s not in the image", p)
			}
			ll := l.(*Layer)
			f, err := ll.file(e)
			if err != nil {
				t.Fatal(err)
			}
			return len(st.Missing(f)) == 0
		}
		n, err := im.walkCommand(context.Background(), st)
		if err != nil {
			t.Fatal(err)
		}
		if off {
			if n != 0 || im.elf.pending.Load() != 0 {
				t.Errorf("NoSpeculation: %d files walked", n)
			}
			for _, p := range []string{"app/run", prog, "app/data.txt"} {
				if local(p) {
					t.Errorf("NoSpeculation: %s fetched", p)
				}
			}
			continue
		}
		// The script, the data file, the loader's cache.
		if n != 3 {
			t.Errorf("%d files taken from the command, want 3", n)
		}
		for _, p := range append([]string{"app/run", "app/data.txt", "etc/ld.so.cache", prog}, needed...) {
			testutil.WaitFor(t, time.Minute, p+" fetched", func() bool { return local(p) })
		}
		testutil.WaitFor(t, time.Minute, "the walk to end", func() bool { return im.elf.pending.Load() == 0 })
		for _, p := range []string{"app/other.txt", "usr/lib/x86_64-linux-gnu/libunrelated.so.1"} {
			if local(p) {
				t.Errorf("%s, which nothing names, was fetched", p)
			}
		}
	}
}
