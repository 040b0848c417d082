package cli

import (
	"flag"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"lazypull/internal/service"
)

// A config file is TOML whose keys are the command's flags with "_" for "-"
// (store_max_bytes = 10737418240 for --store-max-bytes 10737418240). Its schema is
// service.Config; each flag is bound to the field of its key, typed and documented as the
// flag is, so the file, the flags and the help cannot drift apart (TestConfigDocumented).
// A flag given on the command line wins over the file.

// load reads the snapshotter's config file at path into f, except the settings given on
// the command line. A missing file is an error only when required.
func (f *snapshotterFlags) load(path string, required bool) error {
	set := setFlags(f.fs)
	return service.LoadConfig(path, required, &f.Config, func(key string) bool { return set[flagName(key)] })
}

// setFlags returns the names of the flags given on the command line.
func setFlags(fs *flag.FlagSet) map[string]bool {
	set := map[string]bool{}
	fs.Visit(func(fl *flag.Flag) { set[fl.Name] = true })
	return set
}

func configKey(flagName string) string { return strings.ReplaceAll(flagName, "-", "_") }

func flagName(key string) string { return strings.ReplaceAll(key, "_", "-") }

// configDoc describes the config file of the command whose flags are these: every key
// with its default, as TOML.
func configDoc(flags func(*flag.FlagSet) any, file string) string {
	fs := flag.NewFlagSet("", flag.ContinueOnError)
	flags(fs)
	keys := service.ConfigKeys()
	var b strings.Builder
	fmt.Fprintf(&b, "The config file (--config, default %s, optional there) is TOML; its keys\n", file)
	fmt.Fprintf(&b, "are the flags with _ for -, and a flag given on the command line wins over the file.\n")
	fmt.Fprintf(&b, "Unknown keys and values of the wrong type are refused. Every key, at its default:\n\n")
	fs.VisitAll(func(fl *flag.Flag) {
		if !slices.Contains(keys, configKey(fl.Name)) {
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
	if g, ok := fl.Value.(flag.Getter); ok {
		switch g.Get().(type) {
		case bool, int, int64, uint, uint64, float64:
			v = fl.DefValue
		}
	}
	return configKey(fl.Name) + " = " + v
}

// durationValue is a duration flag whose error for a number without a unit says which to
// write ("5": "5s"), as the config file's does (service.ParseDuration).
type durationValue struct{ d *time.Duration }

func durationFlag(fs *flag.FlagSet, p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	fs.Var(durationValue{p}, name, usage)
}

func (v durationValue) String() string {
	if v.d == nil {
		return time.Duration(0).String()
	}
	return v.d.String()
}

func (v durationValue) Set(s string) error {
	d, err := service.ParseDuration(s)
	if err != nil {
		return err
	}
	*v.d = d
	return nil
}

func (v durationValue) Get() any { return *v.d }
