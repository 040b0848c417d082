package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strings"

	"github.com/awslabs/soci-snapshotter/config"
	"github.com/pelletier/go-toml/v2"
)

// loadConfig reads the snapshotter's TOML configuration at path (the library's config.Config,
// read by its own NewConfigFromToml, which sets the defaults of whatever the file leaves out).
// A missing file is an error only when required (the path was given on the command line).
// Unknown keys and what this runner does not run are errors naming the file, so that a typo
// never silently leaves a default in place.
//
// One default differs from upstream's: with no content_store.type, SOCI artifacts go to the
// snapshotter's own store under its root ("soci"), not to containerd's ("containerd", the
// system containerd's socket and directory, which a private containerd does not use).
func loadConfig(path string, required bool) (*config.Config, error) {
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		c := config.NewConfig()
		if c == nil {
			return nil, errors.New("the library's default configuration does not parse")
		}
		c.ContentStoreConfig.Type = config.SociContentStoreType
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := checkKeys(b); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	c, err := config.NewConfigFromToml(path)
	if err != nil {
		return nil, err // names the file
	}
	var given struct {
		ContentStore struct {
			Type *string `toml:"type"`
		} `toml:"content_store"`
	}
	if err := toml.Unmarshal(b, &given); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if given.ContentStore.Type == nil {
		c.ContentStoreConfig.Type = config.SociContentStoreType
	}
	if err := checkConfig(c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// checkKeys refuses a document with keys that config.Config does not have (the library's
// decoder ignores them).
func checkKeys(doc []byte) error {
	var c config.Config
	err := toml.NewDecoder(strings.NewReader(string(doc))).DisallowUnknownFields().Decode(&c)
	var strict *toml.StrictMissingError
	if errors.As(err, &strict) {
		var keys []string
		for _, e := range strict.Errors {
			keys = append(keys, strings.Join(e.Key(), "."))
		}
		return fmt.Errorf("unknown key(s) %s", strings.Join(keys, ", "))
	}
	return err // a syntax error carries its line
}

// checkConfig refuses what this runner cannot honour: the CRI and kubeconfig keychains need
// services (a CRI image proxy, a Kubernetes client) that upstream's daemon starts and this
// small one does not, nor does it serve metrics or debug endpoints.
func checkConfig(c *config.Config) error {
	switch {
	case c.CRIKeychainConfig.EnableKeychain:
		return errors.New("cri_keychain.enable_keychain: not supported by this runner (credentials come from the Docker config)")
	case c.KubeconfigKeychainConfig.EnableKeychain:
		return errors.New("kubeconfig_keychain.enable_keychain: not supported by this runner (credentials come from the Docker config)")
	case c.MetricsAddress != "":
		return errors.New("metrics_address: not served by this runner")
	case c.DebugAddress != "":
		return errors.New("debug_address: not served by this runner")
	}
	return nil
}
