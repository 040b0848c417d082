package service

import (
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"time"

	"github.com/BurntSushi/toml"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sys/unix"

	"lazypull/internal/daemon"
	"lazypull/internal/fetch"
	"lazypull/internal/store"
)

// DefaultStoreDir is the node's content store unless the config or a flag names another.
const DefaultStoreDir = store.DefaultDir

// Defaults of the snapshotter.
const (
	DefaultAddress          = "/run/lazypull/snapshotter.sock"
	DefaultRoot             = "/var/lib/lazypull/snapshotter"
	DefaultConfigFile       = "/etc/lazypull/config.toml"
	DefaultContainerdConfig = "/etc/containerd/config.toml"
	DefaultCRIProxyUpstream = "/run/containerd/containerd.sock"
	DefaultKeeperIdle       = 10 * time.Second
)

// Config is the snapshotter's settings: the keys of its config file (TOML, the tags below)
// and, spelled with "-" for "_", its flags. The cli binds each flag to its field, so the
// file, the flags and the help share this one schema.
type Config struct {
	Address string `toml:"address"` // the unix socket the snapshots API is served on
	Root    string `toml:"root"`    // snapshots and their metadata
	// KeeperIdle is how long the keeper process waits, holding nothing and with nobody
	// connected, before it exits.
	KeeperIdle time.Duration `toml:"keeper_idle"`
	NodeConfig
	DebugAddr string `toml:"debug_addr"` // Go's profiles at /debug/pprof/ ("": none)
	// ContainerdConfig is containerd's config file, checked against containerd's version
	// once it answers ("": no check).
	ContainerdConfig string `toml:"containerd_config"`
	CRIProxy
}

// CRIProxy is where the snapshotter serves CRI's image service to learn the credentials
// of kubelet's pulls (internal/criproxy), and the containerd CRI socket it forwards to.
type CRIProxy struct {
	CRIProxyAddress  string `toml:"cri_proxy_address"` // "": no proxy
	CRIProxyUpstream string `toml:"cri_proxy_upstream"`
}

// NodeConfig is what the snapshotter and `lazypull mount` share: the node's store, the
// registries, the metrics and the prefetch.
type NodeConfig struct {
	Store         string   `toml:"store"`
	StoreMaxBytes Size     `toml:"store_max_bytes"` // 0: no bound; SizeAuto: AutoBound
	PlainHTTP     bool     `toml:"plain_http"`
	HostsDir      string   `toml:"hosts_dir"`    // containerd-style HOST/hosts.toml files
	MetricsAddr   string   `toml:"metrics_addr"` // Prometheus at /metrics ("": none)
	Platform      string   `toml:"platform"`     // os/arch[/variant]; "": this machine's
	LogLevel      LogLevel `toml:"log_level"`    // the least severe level logged
	PrefetchConfig
}

// PrefetchConfig is what is fetched before it is read, and which profile says so.
type PrefetchConfig struct {
	Prefetch            bool          `toml:"prefetch"`
	PrefetchWait        time.Duration `toml:"prefetch_wait"`
	BackgroundFetch     bool          `toml:"background_fetch"`
	BackgroundFetchRate int64         `toml:"background_fetch_rate"`
	// ParallelFetch is when the rest of an image is fetched at line rate
	// (daemon.ParallelPolicy), ParallelFetchStreams batches at once on the node, and
	// ParallelFetchMinRate the fast link of its "auto".
	ParallelFetch        string      `toml:"parallel_fetch"`
	ParallelFetchStreams int         `toml:"parallel_fetch_streams"`
	ParallelFetchMinRate int64       `toml:"parallel_fetch_min_rate"`
	ProfilePolicy        string      `toml:"profile_policy"`
	ProfilePins          ProfilePins `toml:"profile_pin"`
	// Automatic profiles (daemon.AutoProfileOptions): record the start of an image with
	// no published profile, keep it and use it next time; push it when AutoProfilePush.
	AutoProfile         bool          `toml:"auto_profile"`
	AutoProfilePush     bool          `toml:"auto_profile_push"`
	AutoProfileQuiet    time.Duration `toml:"auto_profile_quiet"`
	AutoProfileMaxTime  time.Duration `toml:"auto_profile_max_time"`
	AutoProfileMaxFiles int           `toml:"auto_profile_max_files"`
	AutoProfileMaxBytes int64         `toml:"auto_profile_max_bytes"`
	// AutoProfileDeltaBytes bounds the files an update added, and those they name, fetched
	// with the profile of the version before (daemon.AutoProfileOptions.DeltaBytes); 0: none.
	AutoProfileDeltaBytes int64 `toml:"auto_profile_delta_bytes"`
	Speculate             bool  `toml:"speculate"`
	// SpeculateMinRTT: speculation applies while the registry's round trip is at least
	// this (daemon.OpenOptions.SpeculateMinRTT); 0: always.
	SpeculateMinRTT time.Duration `toml:"speculate_min_rtt"`
}

// DefaultNodeConfig is a NodeConfig at its defaults.
func DefaultNodeConfig() NodeConfig {
	return NodeConfig{
		Store:         DefaultStoreDir,
		StoreMaxBytes: SizeAuto,
		PrefetchConfig: PrefetchConfig{
			Prefetch:              true,
			BackgroundFetchRate:   daemon.DefaultFillRate,
			ProfilePolicy:         string(daemon.DefaultProfilePolicy),
			AutoProfile:           true,
			AutoProfileQuiet:      daemon.DefaultAutoQuiet,
			AutoProfileMaxTime:    daemon.DefaultAutoMaxDuration,
			AutoProfileMaxFiles:   daemon.DefaultAutoMaxFiles,
			AutoProfileMaxBytes:   daemon.DefaultAutoMaxBytes,
			AutoProfileDeltaBytes: daemon.DefaultAutoDeltaBytes,
			Speculate:             true,
			SpeculateMinRTT:       daemon.DefaultSpeculateMinRTT,
			ParallelFetch:         string(daemon.ParallelAuto),
			ParallelFetchStreams:  daemon.DefaultFillStreams,
			ParallelFetchMinRate:  daemon.DefaultFastRate,
		},
	}
}

// DefaultConfig is a Config at its defaults.
func DefaultConfig() Config {
	return Config{Address: DefaultAddress, Root: DefaultRoot, KeeperIdle: DefaultKeeperIdle, NodeConfig: DefaultNodeConfig(),
		ContainerdConfig: DefaultContainerdConfig, CRIProxy: CRIProxy{CRIProxyUpstream: DefaultCRIProxyUpstream}}
}

// Check refuses settings of the snapshotter that make no sense, before anything is opened.
// Its errors name the flag, and are the command line's to report.
func (c *Config) Check() error {
	if c.KeeperIdle <= 0 {
		return errors.New("-keeper-idle must be more than 0")
	}
	return c.NodeConfig.Check()
}

// Check refuses settings that make no sense, before anything is opened. Its errors name the
// flag, and are the command line's to report.
func (c *NodeConfig) Check() error {
	if c.StoreMaxBytes < 0 && c.StoreMaxBytes != SizeAuto {
		return errors.New("-store-max-bytes must not be negative")
	}
	if _, err := ParsePlatform(c.Platform); err != nil {
		return err
	}
	return c.PrefetchConfig.Check()
}

// Check refuses prefetch settings that make no sense.
func (c *PrefetchConfig) Check() error {
	if c.PrefetchWait < 0 {
		return errors.New("-prefetch-wait must not be negative")
	}
	if c.BackgroundFetchRate <= 0 {
		return errors.New("-background-fetch-rate must be more than 0 bytes per second")
	}
	if _, err := daemon.ParseProfilePolicy(c.ProfilePolicy); err != nil {
		return fmt.Errorf("-profile-policy: %w", err)
	}
	if _, err := daemon.ParseParallelPolicy(c.ParallelFetch); err != nil {
		return fmt.Errorf("-parallel-fetch: %w", err)
	}
	// Fewer than the registry client's requests in flight: reads keep places of their own.
	if c.ParallelFetchStreams < 1 || c.ParallelFetchStreams >= fetch.DefaultConcurrency {
		return fmt.Errorf("-parallel-fetch-streams %d: want 1 to %d (the node's %d requests in flight, one at least left to reads)",
			c.ParallelFetchStreams, fetch.DefaultConcurrency-1, fetch.DefaultConcurrency)
	}
	if c.ParallelFetchMinRate <= 0 {
		return errors.New("-parallel-fetch-min-rate must be more than 0 bytes per second")
	}
	switch {
	case c.AutoProfileQuiet <= 0:
		return errors.New("-auto-profile-quiet must be more than 0")
	case c.AutoProfileMaxTime <= 0:
		return errors.New("-auto-profile-max-time must be more than 0")
	case c.AutoProfileMaxFiles <= 0:
		return errors.New("-auto-profile-max-files must be more than 0")
	case c.AutoProfileMaxBytes <= 0:
		return errors.New("-auto-profile-max-bytes must be more than 0")
	case c.AutoProfileDeltaBytes < 0:
		return errors.New("-auto-profile-delta-bytes must not be negative")
	}
	return nil
}

// Auto is the automatic profiles' options under these settings (nil: off), pushing through
// client.
func (c *PrefetchConfig) Auto(client *fetch.Client, plainHTTP bool) *daemon.AutoProfileOptions {
	if !c.AutoProfile {
		return nil
	}
	o := &daemon.AutoProfileOptions{Quiet: c.AutoProfileQuiet, MaxDuration: c.AutoProfileMaxTime, MaxFiles: c.AutoProfileMaxFiles,
		MaxBytes: c.AutoProfileMaxBytes, DeltaBytes: c.AutoProfileDeltaBytes}
	if c.AutoProfileDeltaBytes == 0 {
		o.DeltaBytes = -1 // none; the daemon's zero is its default
	}
	if c.AutoProfilePush {
		o.Push = daemon.AutoPush(client, plainHTTP)
	}
	return o
}

// Choice is how an image's profile is chosen under these settings, pinned to the profile of
// digest pin when not "".
func (c *PrefetchConfig) Choice(pin string) (daemon.ProfileChoice, error) {
	policy, err := daemon.ParseProfilePolicy(c.ProfilePolicy)
	if err != nil {
		return daemon.ProfileChoice{}, fmt.Errorf("-profile-policy: %w", err)
	}
	ch := daemon.ProfileChoice{Policy: policy, Pins: c.ProfilePins}
	if pin != "" {
		if !c.Prefetch {
			return ch, fmt.Errorf("-profile %s with -prefetch=false: no profile would be used", pin)
		}
		if policy == daemon.PolicyOff {
			return ch, fmt.Errorf("-profile %s with -profile-policy off: no profile would be used", pin)
		}
		if ch.Pin, err = daemon.ParseProfileDigest(pin); err != nil {
			return ch, fmt.Errorf("-profile: %w", err)
		}
	}
	return ch, nil
}

// ParsePlatform parses a platform setting: nil (this machine's) when empty.
func ParsePlatform(s string) (*v1.Platform, error) {
	if s == "" {
		return nil, nil
	}
	p, err := v1.ParsePlatform(s)
	if err != nil {
		return nil, fmt.Errorf("-platform %q: %w", s, err)
	}
	return p, nil
}

// LogLevel is the least severe level a daemon logs: a flag and a config key, spelled
// debug, info, warn or error. Its zero value is info.
type LogLevel slog.Level

// logLevels are the levels a LogLevel is set to, by name.
var logLevels = []struct {
	name  string
	level slog.Level
}{{"debug", slog.LevelDebug}, {"info", slog.LevelInfo}, {"warn", slog.LevelWarn}, {"error", slog.LevelError}}

func (l *LogLevel) String() string {
	if l == nil {
		return "info"
	}
	for _, n := range logLevels {
		if n.level == slog.Level(*l) {
			return n.name
		}
	}
	return slog.Level(*l).String()
}

// Set sets the level named s.
func (l *LogLevel) Set(s string) error {
	for _, n := range logLevels {
		if strings.EqualFold(s, n.name) {
			*l = LogLevel(n.level)
			return nil
		}
	}
	return fmt.Errorf("log level %q: want debug, info, warn or error", s)
}

// Level is the level as slog takes it.
func (l LogLevel) Level() slog.Level { return slog.Level(l) }

// ProfilePins are profiles pinned by image manifest digest: a flag that may be repeated,
// each value (and the config key's string) a comma-separated list of IMAGE=PROFILE.
type ProfilePins map[v1.Hash]v1.Hash

func (p *ProfilePins) String() string {
	if p == nil || len(*p) == 0 {
		return ""
	}
	var out []string
	for img, prof := range *p {
		out = append(out, img.String()+"="+prof.String())
	}
	return strings.Join(out, ",")
}

// Set adds the pins of s.
func (p *ProfilePins) Set(s string) error {
	if *p == nil {
		*p = ProfilePins{}
	}
	for item := range strings.SplitSeq(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			continue
		}
		img, prof, ok := strings.Cut(item, "=")
		if !ok {
			return fmt.Errorf("%q: want IMAGE_DIGEST=PROFILE_DIGEST", item)
		}
		ih, err := v1.NewHash(img)
		if err != nil || ih.Algorithm != "sha256" || len(ih.Hex) != 64 {
			return fmt.Errorf("%q: image manifest digest %q: want sha256:<64 hex digits>", item, img)
		}
		ph, err := daemon.ParseProfileDigest(prof)
		if err != nil {
			return fmt.Errorf("%q: %w", item, err)
		}
		if old, ok := (*p)[ih]; ok && old != ph {
			return fmt.Errorf("%q: image %s is pinned to %s already", item, ih, old)
		}
		(*p)[ih] = ph
	}
	return nil
}

// ConfigKeys are the keys of the config file, in the order of Config's fields.
func ConfigKeys() []string {
	var keys []string
	for _, f := range configFields(&Config{}) {
		keys = append(keys, f.key)
	}
	return keys
}

// field is one key of the config file and the field it sets.
type field struct {
	key string
	v   reflect.Value
}

// configFields walks c's fields, those of embedded structs too, by their toml tags.
func configFields(c *Config) []field {
	var out []field
	var walk func(v reflect.Value)
	walk = func(v reflect.Value) {
		for i := range v.NumField() {
			sf := v.Type().Field(i)
			if sf.Anonymous {
				walk(v.Field(i))
				continue
			}
			if key := sf.Tag.Get("toml"); key != "" {
				out = append(out, field{key, v.Field(i)})
			}
		}
	}
	walk(reflect.ValueOf(c).Elem())
	return out
}

func lookupField(fields []field, key string) (reflect.Value, bool) {
	for _, f := range fields {
		if f.key == key {
			return f.v, true
		}
	}
	return reflect.Value{}, false
}

// LoadConfig sets c from the TOML file at path, except the keys keep reports (given on the
// command line, which wins over the file). A missing file is an error only when required.
// Every problem is reported with the file, the line and the key, and nothing is applied
// unless the whole file is right.
func LoadConfig(path string, required bool, c *Config, keep func(key string) bool) error {
	data, err := os.ReadFile(path)
	if err != nil {
		if errors.Is(err, os.ErrNotExist) && !required {
			return nil
		}
		return fmt.Errorf("config: %w", err)
	}
	return parseConfig(path, data, c, keep)
}

func parseConfig(path string, data []byte, c *Config, keep func(string) bool) error {
	var top map[string]toml.Primitive
	md, err := toml.Decode(string(data), &top)
	if err != nil {
		var pe toml.ParseError
		if errors.As(err, &pe) {
			return &configError{file: path, line: pe.Position.Line, key: pe.LastKey, msg: pe.Message}
		}
		return fmt.Errorf("config %s: %w", path, err)
	}
	fields := configFields(c)
	var (
		errs  configErrors
		apply []*optionValue
		seen  = map[string]bool{}
	)
	// In the order of the file, so that the first problem reported is the first in it.
	for _, k := range md.Keys() {
		key := k[0]
		if seen[key] {
			continue
		}
		seen[key] = true
		fv, ok := lookupField(fields, key)
		if !ok {
			errs = append(errs, &configError{file: path, line: keyLine(&md, top[key], toml.Key{key}), key: key,
				msg: "unknown key" + suggestKey(fields, key)})
			continue
		}
		v := &optionValue{field: fv}
		if err := md.PrimitiveDecode(top[key], v); err != nil {
			var pe toml.ParseError
			if !errors.As(err, &pe) {
				return fmt.Errorf("config %s: key %q: %w", path, key, err)
			}
			errs = append(errs, &configError{file: path, line: pe.Position.Line, key: key, msg: pe.Message})
			continue
		}
		if keep == nil || !keep(key) {
			apply = append(apply, v)
		}
	}
	if len(errs) > 0 {
		return errs
	}
	for _, v := range apply {
		v.apply()
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

// suggestKey names the key closest to a mistyped one, if one is close.
func suggestKey(fields []field, key string) string {
	best, bestDist := "", 3 // at most two edits away
	for _, f := range fields {
		if d := editDistance(strings.ReplaceAll(key, "-", "_"), f.key); d < bestDist {
			best, bestDist = f.key, d
		}
	}
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

// optionValue checks a TOML value against the type of the field it sets and keeps it, to
// be applied once the whole file is known to be right. Its errors come back from the toml
// package with the key's line.
type optionValue struct {
	field reflect.Value
	val   reflect.Value // what the field is set to
	text  string        // for a flag.Value field: its text, added with Set
}

// kind names the TOML type a field takes.
func kind(v reflect.Value) string {
	switch {
	case v.Type() == reflect.TypeFor[time.Duration]():
		return "duration string (like \"90s\")"
	case v.Type() == reflect.TypeFor[Size]():
		return "size (bytes, or a string like \"10G\" or \"auto\")"
	case reflect.PointerTo(v.Type()).Implements(reflect.TypeFor[flag.Value]()):
		return "string"
	case v.Kind() == reflect.Bool:
		return "boolean"
	case v.CanInt() || v.CanUint():
		return "integer"
	case v.CanFloat():
		return "number"
	}
	return "string"
}

func (o *optionValue) UnmarshalTOML(v any) error {
	ft := o.field.Type()
	switch k := kind(o.field); k {
	case kind(reflect.ValueOf(Size(0))):
		switch n := v.(type) {
		case int64:
			if n < 0 {
				return fmt.Errorf("invalid value %d: a size must not be negative", n)
			}
			o.val = reflect.ValueOf(Size(n))
		case string:
			var z Size
			if err := z.Set(n); err != nil {
				return err
			}
			o.val = reflect.ValueOf(z)
		default:
			return wrongType(k, v)
		}
	case "boolean":
		b, ok := v.(bool)
		if !ok {
			return wrongType(k, v)
		}
		o.val = reflect.ValueOf(b)
	case "integer":
		n, ok := v.(int64)
		if !ok {
			return wrongType(k, v)
		}
		if o.field.CanUint() && n < 0 {
			return fmt.Errorf("invalid value %q: value out of range", strconv.FormatInt(n, 10))
		}
		o.val = reflect.ValueOf(n)
	case "number":
		switch n := v.(type) {
		case int64:
			o.val = reflect.ValueOf(float64(n))
		case float64:
			o.val = reflect.ValueOf(n)
		default:
			return wrongType(k, v)
		}
	default: // strings, durations ("90s") and any flag.Value spelled as text
		s, ok := v.(string)
		if !ok {
			return wrongType(k, v)
		}
		return o.checkText(s, ft)
	}
	return nil
}

// checkText checks a string value: a duration parses, a flag.Value takes it (on a scratch copy).
func (o *optionValue) checkText(s string, ft reflect.Type) error {
	switch {
	case ft == reflect.TypeFor[time.Duration]():
		d, err := ParseDuration(s)
		if err != nil {
			return err
		}
		o.val = reflect.ValueOf(d)
	case reflect.PointerTo(ft).Implements(reflect.TypeFor[flag.Value]()):
		if err := reflect.New(ft).Interface().(flag.Value).Set(s); err != nil {
			return err
		}
		o.text = s
	default:
		o.val = reflect.ValueOf(s)
	}
	return nil
}

// ParseDuration parses a duration setting ("90s", "1m30s"), and says what to write when a
// unit is missing ("5": "5s").
func ParseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err == nil {
		return d, nil
	}
	if _, nerr := strconv.ParseFloat(strings.TrimSpace(s), 64); nerr == nil {
		return 0, fmt.Errorf("invalid duration %q: a duration needs a unit (ms, s, m, h), like \"%ss\"", s, strings.TrimSpace(s))
	}
	return 0, fmt.Errorf("invalid duration %q: want a number with a unit (ms, s, m, h), like \"90s\" or \"1m30s\"", s)
}

// apply sets the field to the value checked.
func (o *optionValue) apply() {
	if !o.val.IsValid() {
		o.field.Addr().Interface().(flag.Value).Set(o.text) // checked on a copy already
		return
	}
	o.field.Set(o.val.Convert(o.field.Type()))
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

// unixPathMax is the room for a socket's path in sockaddr_un on Linux, with its NUL.
const unixPathMax = 108

// CheckSocketPath refuses a socket path the daemon could not serve on, saying why, before
// anything else is opened: too long for a unix socket, a directory that cannot be made or
// written, something that is not a socket in the way, or another process serving there.
// A socket nobody answers on (left by a crash) is fine: it is replaced.
func CheckSocketPath(path string) error {
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
