package cli

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	"golang.org/x/sys/unix"
)

// A config file is TOML whose keys are the command's flags with "_" for "-"
// (store_max_bytes = 10737418240 for --store-max-bytes 10737418240). The flags are the
// schema: a flag added to the command is a key of its config file, typed and documented
// as the flag is, so the file, the flags and the help cannot drift apart. A flag given on
// the command line wins over the file.

// configure reads the snapshotter's config file into f and checks what the daemon cannot
// start without, so that a mistake is refused before anything is opened or mounted.
func (f *snapshotterFlags) configure() error {
	set := setFlags(f.fs)
	// The file at the default path is optional; one named with --config is not.
	if err := loadConfig(f.fs, f.config, set["config"], set, "config"); err != nil {
		return err
	}
	return checkSocketPath(f.Address)
}

// The reference of the snapshotter's config file follows its help; it is made from the
// flags, so it lives here with the loader rather than in the help text.
func init() {
	snapshotterCommand.help += "\n\n" + configDoc(snapshotterCommand, defaultConfigFile, "config")
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	return set
}

// loadConfig sets the flags of fs from the TOML file at path, except those in keep (given
// on the command line) and those named in exclude (which are not config keys). A missing
// file is an error only when required. Every problem is reported with the file, the line
// and the key, and nothing is applied unless the whole file is right.
func loadConfig(fs *flag.FlagSet, path string, required bool, keep map[string]bool, exclude ...string) error {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !required {
			return nil
		}
		return fmt.Errorf("config: %w", err)
	}
	return parseConfig(fs, path, data, keep, exclude...)
}

func parseConfig(fs *flag.FlagSet, path string, data []byte, keep map[string]bool, exclude ...string) error {
	var top map[string]toml.Primitive
	md, err := toml.Decode(string(data), &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return &configError{file: path, line: pe.Position.Line, key: pe.LastKey, msg: pe.Message}
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	type setting struct {
		fl  *flag.Flag
		val string
	}
	var (
		errs  configErrors
		apply []setting
		seen  = map[string]bool{}
	)
	// In the order of the file, so that the first problem reported is the first in it.
	for _, k := range md.Keys() {
		key := k[0]
		if seen[key] {
			continue
		}
		seen[key] = true
		fl := configFlag(fs, key, exclude)
		if fl == nil {
			errs = append(errs, &configError{file: path, line: keyLine(&md, top[key], toml.Key{key}), key: key,
				msg: "unknown key" + suggestKey(fs, key, exclude)})
			continue
		}
		v := &optionValue{fl: fl}
		if err := md.PrimitiveDecode(top[key], v); err != nil {
			var pe toml.ParseError
			if !errors.As(err, &pe) {
				return fmt.Errorf("config %s: key %q: %w", path, key, err)
			}
			errs = append(errs, &configError{file: path, line: pe.Position.Line, key: key, msg: pe.Message})
			continue
		}
		if !keep[fl.Name] {
			apply = append(apply, setting{fl, v.val})
		}
	}
	if len(errs) > 0 {
		return errs
	}
	for _, s := range apply {
		if err := s.fl.Value.Set(s.val); err != nil { // checked by optionValue already
			return fmt.Errorf("config %s: key %q: %w", path, configKey(s.fl.Name), err)
		}
	}
	return nil
}

// configError is one problem of a config file, where it is.
type configError struct {
	file string
	line int // 0: unknown
	key  string
	msg  string
}

func (e *configError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "config %s", e.file)
	if e.line > 0 {
		fmt.Fprintf(&b, ":%d", e.line)
	}
	if e.key != "" {
		fmt.Fprintf(&b, ": key %q", e.key)
	}
	return b.String() + ": " + e.msg
}

// configErrors are all the problems of a file, on one line: lazypull reports an error on one.
type configErrors []*configError

func (es configErrors) Error() string {
	msgs := make([]string, len(es))
	for i, e := range es {
		msgs[i] = e.Error()
	}
	return strings.Join(msgs, "; ")
}

func configKey(flagName string) string { return strings.ReplaceAll(flagName, "-", "_") }

// configFlag returns the flag a config key sets, nil if none does.
func configFlag(fs *flag.FlagSet, key string, exclude []string) *flag.Flag {
	if strings.Contains(key, "-") {
		return nil // keys are spelled with "_", one spelling only
	}
	fl := fs.Lookup(strings.ReplaceAll(key, "_", "-"))
	if fl == nil {
		return nil
	}
	for _, x := range exclude {
		if fl.Name == x {
			return nil
		}
	}
	return fl
}

// suggestKey names the key closest to a mistyped one, if one is close.
func suggestKey(fs *flag.FlagSet, key string, exclude []string) string {
	best, bestDist := "", 3 // at most two edits away
	fs.VisitAll(func(fl *flag.Flag) {
		k := configKey(fl.Name)
		if configFlag(fs, k, exclude) == nil {
			return
		}
		if d := editDistance(strings.ReplaceAll(key, "-", "_"), k); d < bestDist {
			best, bestDist = k, d
		}
	})
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance of a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// keyLine finds the line of a key. The toml package keeps the position of every key but
// shows it only in the errors of a decode: decoding the key's value into linePeek, which
// refuses everything, yields an error that carries it. An implicit table (the "a" of
// "a.b = 1") has no position of its own; the first key under it has.
func keyLine(md *toml.MetaData, p toml.Primitive, path toml.Key) int {
	var pe toml.ParseError
	if err := md.PrimitiveDecode(p, linePeek{}); errors.As(err, &pe) && pe.Position.Line > 0 {
		return pe.Position.Line
	}
	var sub map[string]toml.Primitive
	if md.PrimitiveDecode(p, &sub) != nil {
		return 0
	}
	for _, k := range md.Keys() {
		if len(k) > len(path) && slicesEqual(k[:len(path)], path) {
			return keyLine(md, sub[k[len(path)]], k[:len(path)+1])
		}
	}
	return 0
}

type linePeek struct{}

func (linePeek) UnmarshalTOML(any) error { return errors.New("where") }

func slicesEqual(a, b toml.Key) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// optionValue checks a TOML value against the type of the flag it sets and keeps it as the
// flag's command-line text. Its errors come back from the toml package with the key's line.
type optionValue struct {
	fl  *flag.Flag
	val string
}

func (o *optionValue) UnmarshalTOML(v any) error {
	switch kind := flagKind(o.fl); kind {
	case "boolean":
		b, ok := v.(bool)
		if !ok {
			return wrongType(kind, v)
		}
		o.val = strconv.FormatBool(b)
	case "integer":
		n, ok := v.(int64)
		if !ok {
			return wrongType(kind, v)
		}
		o.val = strconv.FormatInt(n, 10)
	case "number":
		switch n := v.(type) {
		case int64:
			o.val = strconv.FormatInt(n, 10)
		case float64:
			o.val = strconv.FormatFloat(n, 'g', -1, 64)
		default:
			return wrongType(kind, v)
		}
	default: // strings, durations ("90s") and any other flag spelled as text
		s, ok := v.(string)
		if !ok {
			return wrongType(kind, v)
		}
		o.val = s
	}
	// Let the flag judge the value as it would on the command line (a negative count for
	// an unsigned flag, a malformed duration), on a scratch copy: nothing is set before
	// the whole file is known to be right.
	if err := checkFlagValue(o.fl, o.val); err != nil {
		return err
	}
	return nil
}

// flagKind names the TOML type a flag takes.
func flagKind(fl *flag.Flag) string {
	g, ok := fl.Value.(flag.Getter)
	if !ok {
		return "string"
	}
	switch g.Get().(type) {
	case bool:
		return "boolean"
	case int, int64, uint, uint64:
		return "integer"
	case float64:
		return "number"
	case time.Duration:
		return "duration string (like \"90s\")"
	}
	return "string"
}

func wrongType(want string, v any) error {
	return fmt.Errorf("wrong type: want %s, got %s", article(want), describeTOML(v))
}

func article(kind string) string {
	if strings.HasPrefix(kind, "integer") {
		return "an " + kind
	}
	return "a " + kind
}

// describeTOML names a decoded TOML value's type, with the value when it is short.
func describeTOML(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 40 {
			return "a string"
		}
		return fmt.Sprintf("the string %q", x)
	case int64:
		return fmt.Sprintf("the integer %d", x)
	case float64:
		return fmt.Sprintf("the float %v", x)
	case bool:
		return fmt.Sprintf("the boolean %t", x)
	case []map[string]any:
		return "an array of tables"
	case []any:
		return "an array"
	case map[string]any:
		return "a table"
	}
	return "a date or time"
}

// checkFlagValue parses s as fl would, without changing fl.
func checkFlagValue(fl *flag.Flag, s string) error {
	scratch := flag.NewFlagSet("", flag.ContinueOnError)
	g, ok := fl.Value.(flag.Getter)
	if !ok {
		return nil // a flag of its own kind: judged when it is set
	}
	switch d := g.Get().(type) {
	case bool:
		scratch.Bool("x", d, "")
	case int:
		scratch.Int("x", d, "")
	case int64:
		scratch.Int64("x", d, "")
	case uint:
		scratch.Uint("x", d, "")
	case uint64:
		scratch.Uint64("x", d, "")
	case float64:
		scratch.Float64("x", d, "")
	case time.Duration:
		scratch.Duration("x", d, "")
	default:
		return nil
	}
	if err := scratch.Set("x", s); err != nil {
		// The flag package's message names the scratch flag; keep only the reason.
		msg := err.Error()
		if _, reason, ok := strings.Cut(msg, ": "); ok {
			msg = reason
		}
		return fmt.Errorf("invalid value %q: %s", s, msg)
	}
	return nil
}

// configDoc describes the config file of cmd: every key with its default, as TOML.
func configDoc(cmd *command, file string, exclude ...string) string {
	fs := newFlagSet(cmd)
	cmd.flags(fs)
	var b strings.Builder
	fmt.Fprintf(&b, "The config file (--config, default %s, optional there) is TOML; its keys\n", file)
	fmt.Fprintf(&b, "are the flags with _ for -, and a flag given on the command line wins over the file.\n")
	fmt.Fprintf(&b, "Unknown keys and values of the wrong type are refused. Every key, at its default:\n\n")
	fs.VisitAll(func(fl *flag.Flag) {
		if configFlag(fs, configKey(fl.Name), exclude) == nil {
			return
		}
		_, usage := flag.UnquoteUsage(fl)
		fmt.Fprintf(&b, "  %s\n      %s\n", tomlSetting(fl), usage)
	})
	return strings.TrimRight(b.String(), "\n")
}

// tomlSetting is "key = default" for a flag, the default spelled in TOML.
func tomlSetting(fl *flag.Flag) string {
	v := strconv.Quote(fl.DefValue)
	switch flagKind(fl) {
	case "boolean", "integer", "number":
		v = fl.DefValue
	}
	return configKey(fl.Name) + " = " + v
}

// unixPathMax is the room for a socket's path in sockaddr_un on Linux, with its NUL.
const unixPathMax = 108

// checkSocketPath refuses a socket path the daemon could not serve on, saying why, before
// anything else is opened: too long for a unix socket, a directory that cannot be made or
// written, something that is not a socket in the way, or another process serving there.
// A socket nobody answers on (left by a crash) is fine: it is replaced.
func checkSocketPath(path string) error {
	if path == "" {
		return errors.New("socket address: empty path")
	}
	if len(path) >= unixPathMax {
		return fmt.Errorf("socket %s: the path is %d bytes long; a unix socket's path must be under %d", path, len(path), unixPathMax)
	}
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o711); err != nil {
		return fmt.Errorf("socket %s: cannot create its directory: %w", path, err)
	}
	if err := unix.Access(dir, unix.W_OK|unix.X_OK); err != nil {
		return fmt.Errorf("socket %s: its directory %s is not writable: %w", path, dir, err)
	}
	fi, err := os.Lstat(path)
	switch {
	case errors.Is(err, os.ErrNotExist):
		return nil
	case err != nil:
		return fmt.Errorf("socket %s: %w", path, err)
	case fi.Mode().Type() != os.ModeSocket:
		return fmt.Errorf("socket %s: a %s is there; not replacing it", path, fileType(fi.Mode()))
	}
	conn, err := net.DialTimeout("unix", path, 2*time.Second)
	if err == nil {
		conn.Close()
		return fmt.Errorf("socket %s: another process is serving on it", path)
	}
	return nil
}

func fileType(m os.FileMode) string {
	switch {
	case m.IsDir():
		return "directory"
	case m.IsRegular():
		return "regular file"
	case m&os.ModeSymlink != 0:
		return "symbolic link"
	}
	return "file of mode " + m.Type().String()
}
