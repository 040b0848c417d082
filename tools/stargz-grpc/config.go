package main

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"slices"
	"strings"

	"github.com/BurntSushi/toml"
	"github.com/containerd/stargz-snapshotter/service"
)

// Defaults that the library declares only in `default:"..."` struct tags, which a TOML decoder
// does not read: set here so that a missing key means what the library's documentation says.
const (
	defaultDirectCache      = true      // directory_cache.direct: no in-memory data cache
	defaultMergeBufferSize  = 419430400 // fuse.merge_buffer_size: 400 MB
	defaultMergeWorkerCount = 10        // fuse.merge_worker_count
)

// defaultConfig is the configuration with no file at all: the library's defaults.
func defaultConfig() *service.Config {
	var c service.Config
	c.DirectoryCacheConfig.Direct = defaultDirectCache
	c.FuseConfig.MergeBufferSize = defaultMergeBufferSize
	c.FuseConfig.MergeWorkerCount = defaultMergeWorkerCount
	return &c
}

// loadConfig reads the snapshotter's TOML configuration at path (the format of the library's
// service.Config, as upstream's daemon reads it) over the defaults. A missing file is an
// error only when required (the path was given on the command line): the default path may
// be absent. Unknown keys and features this daemon does not run are errors naming the file,
// so that a typo never silently leaves a default in place.
func loadConfig(path string, required bool) (*service.Config, error) {
	c := defaultConfig()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) && !required {
		return c, nil
	}
	if err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	if err := parseConfig(string(b), c); err != nil {
		return nil, fmt.Errorf("config %s: %w", path, err)
	}
	return c, nil
}

// parseConfig decodes the TOML document doc into c and checks it.
func parseConfig(doc string, c *service.Config) error {
	md, err := toml.Decode(doc, c)
	if err != nil {
		return err // BurntSushi's errors carry the line and the key
	}
	if und := md.Undecoded(); len(und) > 0 {
		var keys []string
		for _, k := range und {
			keys = append(keys, k.String())
		}
		slices.Sort(keys)
		return fmt.Errorf("unknown key(s) %s", strings.Join(keys, ", "))
	}
	return checkConfig(c)
}

// checkConfig refuses what this daemon cannot honour: the CRI and kubeconfig keychains need
// services (a CRI image proxy, a Kubernetes client) that upstream's daemon starts and this
// small one does not; and negative sizes or counts, which the library would take as given.
func checkConfig(c *service.Config) error {
	if c.CRIKeychainConfig.EnableKeychain {
		return errors.New("cri_keychain.enable_keychain: not supported by this daemon (credentials come from the Docker config)")
	}
	if c.KubeconfigKeychainConfig.EnableKeychain {
		return errors.New("kubeconfig_keychain.enable_keychain: not supported by this daemon (credentials come from the Docker config)")
	}
	for _, f := range []struct {
		key string
		v   int64
	}{
		{"prefetch_size", c.PrefetchSize},
		{"prefetch_timeout_sec", c.PrefetchTimeoutSec},
		{"prefetch_async_size", c.PrefetchAsyncSize},
		{"max_concurrency", c.MaxConcurrency},
		{"blob.chunk_size", c.BlobConfig.ChunkSize},
		{"blob.prefetch_chunk_size", c.BlobConfig.PrefetchChunkSize},
		{"blob.max_retries", int64(c.BlobConfig.MaxRetries)},
		{"fuse.merge_buffer_size", c.FuseConfig.MergeBufferSize},
		{"fuse.merge_worker_count", int64(c.FuseConfig.MergeWorkerCount)},
	} {
		if f.v < 0 {
			return fmt.Errorf("%s: must not be negative, got %d", f.key, f.v)
		}
	}
	for host, h := range c.ResolverConfig.Host {
		for i, m := range h.Mirrors {
			if m.Host == "" {
				return fmt.Errorf("resolver.host.%q.mirrors[%d]: host is empty", host, i)
			}
		}
	}
	return nil
}
