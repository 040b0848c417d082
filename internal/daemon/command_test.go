package daemon

import (
	"bytes"
	"cmp"
	"context"
	"fmt"
	"path"
	"slices"
	"strings"
	"testing"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"

	"lazypull/internal/elfdeps"
	"lazypull/internal/testutil"
	"lazypull/internal/testutil/elftest"
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
		testutil.File("etc/ld.so.cache", testutil.RandBytes(3, 9000)),
		testutil.File("usr/lib/locale/C.utf8/LC_CTYPE", testutil.RandBytes(4, 20000)),
		testutil.File("usr/lib/locale/de_DE.utf8/LC_CTYPE", testutil.RandBytes(5, 20000)),
		testutil.File("usr/share/zoneinfo/Etc/UTC", []byte("TZif2")),
		testutil.Symlink("etc/localtime", "/usr/share/zoneinfo/Etc/UTC"))
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
		// The script, the data file, the loader's cache, the C.UTF-8 locale's LC_CTYPE,
		// the local time zone.
		if n != 5 {
			t.Errorf("%d files taken from the command, want 5", n)
		}
		for _, p := range append([]string{"app/run", "app/data.txt", "etc/ld.so.cache", "usr/lib/locale/C.utf8/LC_CTYPE", "usr/share/zoneinfo/Etc/UTC", prog}, needed...) {
			testutil.WaitFor(t, time.Minute, p+" fetched", func() bool { return local(p) })
		}
		testutil.WaitFor(t, time.Minute, "the walk to end", func() bool { return im.elf.pending.Load() == 0 })
		// The symbolic links followed to them are ready to serve: their header runs are
		// checked, not left to a round trip of the start's (the last entry of its tar,
		// /etc/localtime is in a run of its own).
		for _, p := range []string{"etc/localtime", "lib64"} {
			l, e := im.lookup(p)
			if e == nil || !e.IsSymlink() {
				t.Fatalf("%s: no symbolic link in the image", p)
			}
			runs, err := l.(*Layer).runsFor(e)
			if err != nil {
				t.Fatal(err)
			}
			if ok, err := l.(*Layer).checked(runs); !ok || err != nil {
				t.Errorf("symbolic link %s followed but not checked: %v", p, err)
			}
		}
		for _, p := range []string{"app/other.txt", "usr/lib/x86_64-linux-gnu/libunrelated.so.1", "usr/lib/locale/de_DE.utf8/LC_CTYPE"} {
			if local(p) {
				t.Errorf("%s, which nothing names, was fetched", p)
			}
		}
	}
}

// TestCommandHelpers: a program the command runs names its helpers by base name and the
// directory it finds them in, among the strings of its read-only data (a compiler driver
// and its compiler proper): those executables are walked, before anything runs them. A
// name alone is no evidence: an executable of that name in a directory the program does
// not name, on the PATH or in a system library directory is not fetched, nor a file that
// is not executable, nor a helper the program does not name.
func TestCommandHelpers(t *testing.T) {
	exe := func(name string, body []byte) testutil.Entry {
		e := testutil.File(name, body)
		e.Hdr.Mode = 0o755
		return e
	}
	driver := elftest.Build(elftest.Spec{Is64: true, Strings: []string{"cc1", "collect2", "data", "dd", "file", "notes here",
		"/usr/lib/cc/", "/usr/lib/x86_64-linux-gnu/", "/usr/bin/", "/"}})
	img, _ := lazyTarOn(t, empty.Image, testutil.Tar(t,
		exe("usr/bin/cc", driver),
		exe("usr/lib/cc/x86_64/12/cc1", testutil.RandBytes(1, 100_000)),
		exe("usr/lib/cc/x86_64/12/collect2", testutil.RandBytes(2, 50_000)),
		exe("usr/lib/cc/x86_64/12/lto1", testutil.RandBytes(3, 50_000)),
		testutil.File("usr/lib/cc/x86_64/12/data", testutil.RandBytes(4, 5000)),
		exe("usr/bin/dd", testutil.RandBytes(5, 5000)),
		exe("usr/lib/x86_64-linux-gnu/file", testutil.RandBytes(6, 5000)),
		exe("opt/elsewhere/cc1", testutil.RandBytes(7, 5000)),
	), nil)
	img, err := mutate.Config(img, v1.Config{Cmd: []string{"cc", "-O1", "/hello.c"}})
	if err != nil {
		t.Fatal(err)
	}
	ref := testutil.NewRegistry(t).Push(t, "helpers:v1", img)
	im, st := openFreshWith(t, ref, OpenOptions{})
	local := func(p string) bool {
		l, e := im.lookup(p)
		if e == nil {
			t.Fatalf("%s not in the image", p)
		}
		f, err := l.(*Layer).file(e)
		if err != nil {
			t.Fatal(err)
		}
		return len(st.Missing(f)) == 0
	}
	if _, err := im.walkCommand(context.Background(), st); err != nil {
		t.Fatal(err)
	}
	for _, p := range []string{"usr/bin/cc", "usr/lib/cc/x86_64/12/cc1", "usr/lib/cc/x86_64/12/collect2"} {
		testutil.WaitFor(t, time.Minute, p+" fetched", func() bool { return local(p) })
	}
	testutil.WaitFor(t, time.Minute, "the walk to end", func() bool { return im.elf.pending.Load() == 0 })
	for _, p := range []string{"usr/lib/cc/x86_64/12/lto1", "usr/lib/cc/x86_64/12/data", "usr/bin/dd", "usr/lib/x86_64-linux-gnu/file", "opt/elsewhere/cc1"} {
		if local(p) {
			t.Errorf("%s was fetched", p)
		}
	}
}

// FuzzProgramStrings: a program's read-only data, hostile: what is kept of it are names
// of 2-255 printable bytes without a slash and directories that are absolute, clean and
// not the system's, within helperStrings, whatever the bytes; a segment that claims more
// than the file holds ends the scan.
func FuzzProgramStrings(f *testing.F) {
	f.Add([]byte("cc1\x00/usr/lib/gcc/\x00/usr/bin\x00x\x00collect2\x00"), int64(0))
	f.Add([]byte("\x00\x00ab\x01cd\x00"), int64(1<<40))
	f.Fuzz(func(t *testing.T, b []byte, extra int64) {
		if extra < 0 {
			extra = -extra
		}
		ef := &elfdeps.File{Loads: []elfdeps.Load{{Off: 0, Size: int64(len(b)) + extra%(1<<40)}, {Off: 1, Size: 3, Exec: true}}}
		names, dirs := programStrings(bytes.NewReader(b), ef)
		if len(names)+len(dirs) > helperStrings {
			t.Fatalf("%d strings kept", len(names)+len(dirs))
		}
		for n := range names {
			if len(n) < 2 || len(n) > 255 || strings.ContainsAny(n, "/ \x00") {
				t.Fatalf("name %q kept", n)
			}
			if !bytes.Contains(b, []byte(n+"\x00")) {
				t.Fatalf("name %q is not a string of the data", n)
			}
		}
		for d := range dirs {
			if !strings.HasPrefix(d, "/") || path.Clean(d) != d || systemDir(d) {
				t.Fatalf("directory %q kept", d)
			}
		}
	})
}

// TestLibcStart: the locale whose files glibc reads is the one the environment names
// (LC_ALL, then LC_CTYPE, then LANG), its codeset normalized as glibc does; none for the
// built-in ones; a name that would leave the locale directory is none.
func TestLibcStart(t *testing.T) {
	for _, tc := range []struct {
		env  []string
		want string // the LC_CTYPE path, "" for none
	}{
		{nil, "/usr/lib/locale/C.utf8/LC_CTYPE"},
		{[]string{"LANG=de_DE.UTF-8"}, "/usr/lib/locale/de_DE.utf8/LC_CTYPE"},
		{[]string{"LANG=de_DE.UTF-8", "LC_ALL=fr_FR.ISO-8859-1@euro"}, "/usr/lib/locale/fr_FR.iso88591@euro/LC_CTYPE"},
		{[]string{"LC_CTYPE=en_US", "LANG=C"}, "/usr/lib/locale/en_US/LC_CTYPE"},
		{[]string{"LANG=C"}, ""},
		{[]string{"LANG=POSIX"}, ""},
		{[]string{"LANG=../../etc"}, ""},
		{[]string{"LANG=a/b.UTF-8"}, ""},
	} {
		got := libcStart(tc.env)
		if !slices.Contains(got, "/etc/localtime") {
			t.Errorf("%q: no /etc/localtime in %q", tc.env, got)
		}
		var ctype string
		for _, p := range got {
			if strings.HasSuffix(p, "/LC_CTYPE") {
				ctype = p
			}
		}
		if ctype != tc.want {
			t.Errorf("%q: LC_CTYPE %q, want %q", tc.env, ctype, tc.want)
		}
	}
}

// TestCommandWalkHostile: a config and files made to mislead the walk end it quickly and
// within its bounds: thousands of words and PATH directories (at most cmdMaxWords words and
// cmdMaxPath directories looked up), a working directory climbing out of the root, scripts
// whose #! lines name each other, one naming a path that climbs out, a symbolic link loop.
func TestCommandWalkHostile(t *testing.T) {
	many := make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf("/app/missing-%d", i)
	}
	var dirs []string
	for i := range 1000 {
		dirs = append(dirs, fmt.Sprintf("/d%d", i))
	}
	img, _ := lazyTarOn(t, empty.Image, testutil.Tar(t,
		testutil.File("app/a", []byte("#!/app/b\n")),
		testutil.File("app/b", []byte("#!/app/a\n")),
		testutil.File("app/up", []byte("#!/../../../../app/a -x\n")),
		testutil.File("app/envloop", []byte("#!/usr/bin/env -S loop\n")),
		testutil.File("usr/bin/env", []byte("not an elf")),
		testutil.Symlink("usr/bin/loop", "loop2"),
		testutil.Symlink("usr/bin/loop2", "loop"),
		testutil.File("app/other", testutil.RandBytes(9, 5000)),
	), nil)
	img, err := mutate.Config(img, v1.Config{
		Entrypoint: []string{"/bin/sh", "-c", "a; /app/up; ../../../app/envloop; loop; " + strings.Repeat("x ", 5000)},
		Cmd:        many,
		WorkingDir: "/../../app",
		Env:        []string{"PATH=" + strings.Join(dirs, ":") + ":/app"},
	})
	if err != nil {
		t.Fatal(err)
	}
	ref := testutil.NewRegistry(t).Push(t, "hostile:v1", img)
	im, st := openFreshWith(t, ref, OpenOptions{})
	before := im.Registry.Stats().Requests
	n, err := im.walkCommand(context.Background(), st)
	if err != nil {
		t.Fatal(err)
	}
	testutil.WaitFor(t, time.Minute, "the walk to end", func() bool { return im.elf.pending.Load() == 0 })
	// /app/up and /app/envloop from the command ("a" is on the PATH's /app, past the
	// cmdMaxPath directories searched), then a and b through the #! lines, once each.
	if n > cmdMaxWords {
		t.Errorf("%d files taken from the command, over %d", n, cmdMaxWords)
	}
	im.elf.mu.Lock()
	files := im.elf.files
	im.elf.mu.Unlock()
	if files != 4 {
		t.Errorf("the walk took %d files; want the 4 scripts", files)
	}
	if reqs := im.Registry.Stats().Requests - before; reqs > 12 {
		t.Errorf("the walk made %d requests", reqs)
	}
	local := func(p string) bool {
		l, e := im.lookup(p)
		f, err := l.(*Layer).file(e)
		if err != nil {
			t.Fatal(err)
		}
		return len(st.Missing(f)) == 0
	}
	for _, p := range []string{"app/up", "app/a", "app/b", "app/envloop"} {
		if !local(p) {
			t.Errorf("%s, which the command or a #! line names, not fetched", p)
		}
	}
	if local("app/other") {
		t.Error("a file nothing names was fetched")
	}
}
