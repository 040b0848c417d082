package cli

import (
	"context"
	"fmt"
	"runtime"
	"runtime/debug"

	"lazypull/internal/cmdline"
)

// Version is lazypull's version, set at build time with
// -ldflags "-X lazypull/internal/cli.Version=v1.2.3"; otherwise taken from the build info.
var Version = ""

func versionCommand() *command {
	return &command{
		name:    "version",
		args:    "",
		summary: "print lazypull's version",
		run: func(_ context.Context, e *env, _ any, args []string) error {
			if len(args) > 0 {
				return cmdline.Usagef("takes no arguments")
			}
			_, err := fmt.Fprintf(e.stdout, "lazypull %s %s %s/%s\n", version(), runtime.Version(), runtime.GOOS, runtime.GOARCH)
			return err
		},
	}
}

func version() string {
	if Version != "" {
		return Version
	}
	bi, ok := debug.ReadBuildInfo()
	if !ok {
		return "unknown"
	}
	v := bi.Main.Version
	if v == "" || v == "(devel)" {
		v = "devel"
	}
	for _, s := range bi.Settings {
		if s.Key == "vcs.revision" && len(s.Value) >= 12 {
			v += "+" + s.Value[:12]
		}
	}
	return v
}
