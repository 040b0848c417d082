package daemon

import (
	"bytes"
	"context"
	"fmt"
	"log/slog"
	"path"
	"strings"

	v1 "github.com/google/go-containerregistry/pkg/v1"

	"lazypull/format"
	"lazypull/internal/jsonlimit"
	"lazypull/internal/store"
)

// The image's command. Without a profile, a container's start begins with what its
// image's config says it runs (Entrypoint and Cmd, which ctr, nerdctl and Kubernetes run
// unless told otherwise): a program found on the config's PATH, which the kernel and the
// loader then read with its libraries, a miss and a round trip each, and the files its
// arguments name (a script, a source). The runtime execs it only after the pull's last
// snapshot, the container's creation and its start: a few hundred milliseconds in which
// the link is idle. So when the image has no profile, its prefetch reads the config and
// hands what the command names to the walk of programs' needs (elfspec.go) at once:
// programs are walked (a script's interpreter too, by its #! line), other files come
// whole when small, and what glibc reads as a program starts with them (the loader's
// cache, the locale's files, the time zone: libcStart). What a container run with
// another command does not read costs bytes within the walk's bounds, and the config's
// request; a shell's -c script is read for the commands it runs and the paths it names.
const (
	// cmdConfigMax bounds the config read for its command: real ones are a few KiB (a
	// long history: tens).
	cmdConfigMax = 1 << 20
	// cmdMaxWords bounds the words of the command looked up in the image.
	cmdMaxWords = 32
	// cmdMaxPath bounds the directories of the config's PATH searched.
	cmdMaxPath = 16
	// cmdWordMax: a longer word is no path.
	cmdWordMax = 4096
	// cmdFetchMax bounds each file glibc reads at start that is fetched whole (a locale's
	// LC_CTYPE is 350 KiB, LC_COLLATE up to 2 MiB).
	cmdFetchMax = 4 << 20
)

// defaultPATH is the PATH of a container whose image's config sets none (containerd's
// oci.WithDefaultPathEnv, runc's default).
const defaultPATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

// ldCache is where glibc's loader looks for libraries first, read by every dynamic
// program's start before its libraries.
const ldCache = "/etc/ld.so.cache"

// runtimeReads are the files of the image that containerd reads as it creates a
// container, before the command runs: the user's groups (oci.WithAdditionalGIDs, in ctr's
// and CRI's specs alike).
var runtimeReads = [...]string{"/etc/passwd", "/etc/group"}

// localeCategories are the files of a locale directory that glibc's setlocale reads.
var localeCategories = [...]string{"LC_CTYPE", "LC_NUMERIC", "LC_TIME", "LC_COLLATE", "LC_MONETARY",
	"LC_MESSAGES/SYS_LC_MESSAGES", "LC_PAPER", "LC_NAME", "LC_ADDRESS", "LC_TELEPHONE", "LC_MEASUREMENT", "LC_IDENTIFICATION"}

// libcStart are the files glibc reads as a program starts, besides the loader's cache,
// when the program asks for the environment's locale (setlocale) and the local time
// (tzset), as interpreters do: the locale's category files (the locale the config's
// environment names, else C.UTF-8, to which Python and others turn in the C locale), the
// converters' cache, and the local time zone. Small files (python's came to 80 KB
// compressed), each a round trip of its own otherwise, one after the other.
func libcStart(env []string) []string {
	locale := "C.UTF-8"
	vars := map[string]string{}
	for _, kv := range env {
		if k, v, ok := strings.Cut(kv, "="); ok {
			vars[k] = v
		}
	}
	for _, k := range []string{"LC_ALL", "LC_CTYPE", "LANG"} {
		if v := vars[k]; v != "" {
			locale = v
			break
		}
	}
	out := []string{"/etc/localtime"}
	if dir, ok := localeDir(locale); ok {
		for _, c := range localeCategories {
			out = append(out, "/usr/lib/locale/"+dir+"/"+c)
		}
	}
	for _, ma := range []string{"x86_64-linux-gnu", "aarch64-linux-gnu"} {
		out = append(out, "/usr/lib/"+ma+"/gconv/gconv-modules.cache")
	}
	return out
}

// localeDir is the directory glibc finds the locale name in (its codeset normalized:
// "C.UTF-8" is C.utf8), false for the built-in ones (C, POSIX) and names that are no
// directory's.
func localeDir(name string) (string, bool) {
	if name == "C" || name == "POSIX" || name == "" || len(name) > 64 || strings.ContainsAny(name, "/\\") || strings.HasPrefix(name, ".") {
		return "", false
	}
	lang, rest, ok := strings.Cut(name, ".")
	if !ok {
		return name, true
	}
	codeset, mod, _ := strings.Cut(rest, "@")
	var b strings.Builder
	for _, r := range strings.ToLower(codeset) {
		if r >= 'a' && r <= 'z' || r >= '0' && r <= '9' {
			b.WriteRune(r)
		}
	}
	out := lang + "." + b.String()
	if mod != "" {
		out += "@" + mod
	}
	return out, true
}

// imageCommand is what an image's config says a container runs.
type imageCommand struct {
	// programs are the words run as programs, in order: the command's first, and the
	// commands of a shell's -c script.
	programs []string
	// args are the other words that may name files: not options, no expansions.
	args []string
	// path is the config's PATH, split; workdir its working directory ("/" when unset).
	path    []string
	workdir string
	env     []string // the config's environment
}

// commandOf reads what cfg runs: Entrypoint then Cmd, a shell's -c script parsed for its
// commands (shellWords), at most cmdMaxWords words.
func commandOf(cfg v1.Config) imageCommand {
	c := imageCommand{workdir: "/", env: cfg.Env[:min(len(cfg.Env), 256)]}
	if strings.HasPrefix(cfg.WorkingDir, "/") {
		c.workdir = path.Clean(cfg.WorkingDir)
	}
	pathEnv := defaultPATH
	for _, kv := range cfg.Env {
		if v, ok := strings.CutPrefix(kv, "PATH="); ok {
			pathEnv = v
		}
	}
	for _, d := range strings.Split(pathEnv, ":") {
		if strings.HasPrefix(d, "/") && len(c.path) < cmdMaxPath {
			c.path = append(c.path, path.Clean(d))
		}
	}
	argv := append(append([]string(nil), cfg.Entrypoint...), cfg.Cmd...)
	if len(argv) == 0 {
		return c
	}
	n := 0
	add := func(to *[]string, w string) {
		if n < cmdMaxWords && w != "" && len(w) <= cmdWordMax && !strings.ContainsAny(w, "$`*?[\x00") {
			*to = append(*to, w)
			n++
		}
	}
	add(&c.programs, argv[0])
	script := -1
	if isShell(argv[0]) {
		for i := 1; i < len(argv)-1; i++ {
			if a := argv[i]; strings.HasPrefix(a, "-") && !strings.HasPrefix(a, "--") && strings.Contains(a, "c") {
				script = i + 1
				break
			}
		}
	}
	for i, a := range argv[1:] {
		switch {
		case i+1 == script:
			progs, args := shellWords(a)
			for _, w := range progs {
				add(&c.programs, w)
			}
			for _, w := range args {
				add(&c.args, w)
			}
		case !strings.HasPrefix(a, "-"):
			add(&c.args, a)
		}
	}
	return c
}

// isShell says whether the program p is a POSIX shell, whose -c argument is a script.
func isShell(p string) bool {
	switch path.Base(p) {
	case "sh", "bash", "dash", "ash", "ksh", "mksh", "zsh", "busybox":
		return true
	}
	return false
}

// shellWords splits a shell script s into the words in command position (the commands
// it runs) and the other words not options, as far as a reading without expansions can:
// quotes are removed, a word with an expansion is left out by commandOf, assignments
// before a command, reserved words and the wrappers exec, command, env, nohup and time
// are skipped over to the command they run.
func shellWords(s string) (programs, args []string) {
	var (
		word    strings.Builder
		inWord  bool
		command = true
		wrapped bool // the last command runs the next: its options come first
	)
	end := func() {
		if !inWord {
			return
		}
		w := word.String()
		word.Reset()
		inWord = false
		switch {
		case command && strings.Contains(w, "=") && !strings.HasPrefix(w, "="):
			// an assignment: the command follows
		case command && shellKeyword(w):
		case command && wrapped && strings.HasPrefix(w, "-"):
		case command:
			programs = append(programs, w)
			command = shellWrapper(w)
			wrapped = command
		case strings.HasPrefix(w, "-"):
		default:
			args = append(args, w)
		}
	}
	for i := 0; i < len(s); i++ {
		switch c := s[i]; c {
		case ' ', '\t':
			end()
		case '\n', ';', '&', '|', '(', ')', '{', '}', '!':
			end()
			command, wrapped = true, false
		case '<', '>':
			end()
			command, wrapped = false, false // a redirection's file follows; the command after it is lost
		case '\'':
			inWord = true
			j := strings.IndexByte(s[i+1:], '\'')
			if j < 0 {
				j = len(s) - i - 1
			}
			word.WriteString(s[i+1 : i+1+j])
			i += j + 1
		case '"':
			inWord = true
			for i++; i < len(s) && s[i] != '"'; i++ {
				if s[i] == '\\' && i+1 < len(s) {
					i++
				}
				word.WriteByte(s[i])
			}
		case '\\':
			inWord = true
			if i+1 < len(s) {
				i++
				word.WriteByte(s[i])
			}
		case '#':
			if !inWord {
				for i < len(s) && s[i] != '\n' {
					i++
				}
				i--
				continue
			}
			word.WriteByte(c)
		default:
			inWord = true
			word.WriteByte(c)
		}
	}
	end()
	return programs, args
}

// shellKeyword: a reserved word after which a command comes.
func shellKeyword(w string) bool {
	switch w {
	case "if", "then", "else", "elif", "fi", "do", "done", "while", "until", "time":
		return true
	}
	return false
}

// shellWrapper: a command that runs the command after it.
func shellWrapper(w string) bool {
	switch path.Base(w) {
	case "exec", "command", "env", "nohup", "time", "nice", "setsid", "runuser", "su-exec", "gosu", "tini", "dumb-init":
		return true
	}
	return false
}

// commandTargets finds in the image the files c names: each program on the PATH (or
// where it says, from the working directory), each argument from the working directory,
// the programs first, to be walked; and, when there is a program, what glibc reads as it
// starts (the loader's cache, libcStart's), to be fetched.
func (im *Image) commandTargets(c imageCommand) (walk, fetch []elfTarget) {
	seen := map[*format.Entry]bool{}
	take := func(to *[]elfTarget, t elfTarget, ok bool) {
		if ok && !seen[t.e] {
			seen[t.e] = true
			*to = append(*to, t)
		}
	}
	for _, p := range c.programs {
		t, ok := im.findProgram(p, c.path, c.workdir)
		t.helpers = true
		take(&walk, t, ok)
	}
	for _, p := range runtimeReads {
		t, ok := im.findFile(p)
		take(&fetch, t, ok && t.e.Size <= cmdFetchMax)
	}
	if len(walk) > 0 {
		for _, p := range append([]string{ldCache}, libcStart(c.env)...) {
			t, ok := im.findFile(p)
			take(&fetch, t, ok && t.e.Size <= cmdFetchMax)
		}
	}
	for _, a := range c.args {
		if !strings.HasPrefix(a, "/") {
			a = path.Join(c.workdir, a)
		}
		t, ok := im.findFile(a)
		take(&walk, t, ok)
	}
	return walk, fetch
}

// findProgram finds the program p as a shell would run it: on the directories dirs when
// it has no slash, else from workdir.
func (im *Image) findProgram(p string, dirs []string, workdir string) (elfTarget, bool) {
	if strings.Contains(p, "/") {
		if !strings.HasPrefix(p, "/") {
			p = path.Join(workdir, p)
		}
		return im.findFile(p)
	}
	for _, d := range dirs {
		if t, ok := im.findFile(path.Join(d, p)); ok {
			return t, true
		}
	}
	return elfTarget{}, false
}

// WalkCommand starts, in the background, the walk of what the image's command names
// (command.go), for an image opened without a prefetch (whose prefetch does it once it
// finds no profile).
func (im *Image) WalkCommand() {
	go im.logWalkCommand(im.bg, im.log)
}

// logWalkCommand is walkCommand, logged: it returns the number of files taken.
func (im *Image) logWalkCommand(ctx context.Context, log *slog.Logger) int {
	n, err := im.walkCommand(ctx, im.nodeStore())
	switch {
	case err != nil && ctx.Err() == nil:
		log.Info("no prefetch of what the image's command names", "image", im.Ref, "err", err)
	case n > 0:
		log.Info("prefetching what the image's command names", "image", im.Ref, "files", n)
	}
	return n
}

// walkCommand starts the walk at what the image's command names (commandTargets), its
// config read from the store or the registry; it returns the number of files taken. It
// does nothing while the image does not speculate (OpenOptions.NoSpeculation,
// SpeculateMinRTT, a profile).
func (im *Image) walkCommand(ctx context.Context, st *store.Store) (int, error) {
	if !im.speculating() {
		return 0, nil
	}
	cfg, err := im.config(ctx, st)
	if err != nil {
		return 0, err
	}
	c := commandOf(cfg.Config)
	im.elf.setPath(c.path)
	walk, fetch := im.commandTargets(c)
	if !im.speculating() {
		return 0, nil
	}
	im.elf.add(im, walk)
	im.elf.checkLinks(im, fetch)
	// One request per layer for glibc's files, beside the walk's.
	files := make([]layerEntry, len(fetch))
	for i, t := range fetch {
		files[i] = layerEntry{l: t.l, e: t.e}
	}
	im.elf.perLayer(files, func(l elfLayer, es []*format.Entry) { l.elfFetch(ctx, es) })
	return len(walk) + len(fetch), nil
}

// nodeStore is the store the image's layers read through; nil without layers.
func (im *Image) nodeStore() *store.Store {
	switch {
	case len(im.Layers) > 0 && im.Layers[0] != nil:
		return im.Layers[0].store
	case len(im.indexed) > 0 && im.indexed[0] != nil:
		return im.indexed[0].store
	}
	return nil
}

// config reads the image's config (rawConfig: an image opened from its index artifact
// keeps it in the store), at most cmdConfigMax bytes, and parses it.
func (im *Image) config(ctx context.Context, st *store.Store) (*v1.ConfigFile, error) {
	cd := im.Image.Manifest.Config
	raw, _, err := im.rawConfig(ctx, st, cmdConfigMax)
	if err == nil {
		err = jsonlimit.Check(raw, "image config")
	}
	var cfg *v1.ConfigFile
	if err == nil {
		cfg, err = v1.ParseConfigFile(bytes.NewReader(raw))
	}
	if err != nil {
		return nil, fmt.Errorf("image %s: config %s: %w", im.Ref, cd.Digest, err)
	}
	return cfg, nil
}

// shebang returns the interpreter that the script whose first bytes are head names on its
// #! line, and its argument ("" for none), as the kernel reads them.
func shebang(head []byte) (interp, arg string, ok bool) {
	rest, ok := bytes.CutPrefix(head, []byte("#!"))
	if !ok {
		return "", "", false
	}
	line, _, found := bytes.Cut(rest, []byte("\n"))
	if !found && len(head) >= shebangMax {
		return "", "", false // cut short: the kernel's limit
	}
	fields := strings.Fields(string(line))
	if len(fields) == 0 || !strings.HasPrefix(fields[0], "/") {
		return "", "", false
	}
	if len(fields) > 1 {
		arg = strings.Join(fields[1:], " ")
	}
	return fields[0], arg, true
}

// shebangMax is the bytes of a script read for its #! line (the kernel's BINPRM_BUF_SIZE).
const shebangMax = 256
