package bench

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
)

// A user's image is benched like the built ones: pushed to the private registry as
// bench/NAME:orig (skopeo copy from its Source), converted, profiled when the profile mode
// runs, and started cold in every mode over every link. Nothing of it is built.

// userNameRE is what a user's image may be called: a repository path component of one
// segment, so that bench/NAME is a valid repository and NAME a file name.
var userNameRE = regexp.MustCompile(`^[a-z0-9]+(?:[._-][a-z0-9]+)*$`)

// skopeoTransports are the source forms passed to skopeo as given.
var skopeoTransports = []string{"oci:", "oci-archive:", "docker://", "docker-archive:"}

// ParseUserImage describes a user's image to bench as name: src is an OCI layout directory,
// a skopeo source (oci:DIR[:TAG], docker://REF, oci-archive:, docker-archive:) or a registry
// reference; cmd, when not empty, replaces the image's command (a JSON array, or words split
// on blanks); ready is the readiness line, or empty for "ready when the command exits with
// status 0"; a server keeps running once ready and is killed then.
func ParseUserImage(imageName, src, cmd, ready string, server bool) (Image, error) {
	im := Image{Name: imageName, Ready: ready, Server: server}
	if !userNameRE.MatchString(imageName) {
		return im, fmt.Errorf("image name %q: want lower-case letters and digits, with . _ - between", imageName)
	}
	if _, ok := Workloads[imageName]; ok {
		return im, fmt.Errorf("image name %q is a built-in image's; name yours otherwise", imageName)
	}
	if server && ready == "" {
		return im, fmt.Errorf("image %s: a server needs a readiness line (it never exits)", imageName)
	}
	var err error
	if im.Source, err = skopeoSource(src); err != nil {
		return im, fmt.Errorf("image %s: %w", imageName, err)
	}
	if im.Cmd, err = parseCmd(cmd); err != nil {
		return im, fmt.Errorf("image %s: command: %w", imageName, err)
	}
	return im, nil
}

// skopeoSource is src as skopeo copy reads it.
func skopeoSource(src string) (string, error) {
	src = strings.TrimSpace(src)
	if src == "" {
		return "", fmt.Errorf("no image given")
	}
	for _, t := range skopeoTransports {
		if strings.HasPrefix(src, t) {
			return src, nil
		}
	}
	if st, err := os.Stat(src); err == nil && st.IsDir() {
		if _, err := os.Stat(filepath.Join(src, "oci-layout")); err != nil {
			return "", fmt.Errorf("directory %s is not an OCI layout (no oci-layout file)", src)
		}
		abs, err := filepath.Abs(src)
		if err != nil {
			return "", err
		}
		return "oci:" + abs, nil
	}
	if _, err := name.ParseReference(src); err != nil {
		return "", fmt.Errorf("%q is neither an OCI layout directory nor an image reference: %w", src, err)
	}
	return "docker://" + src, nil
}

// parseCmd reads a command: a JSON array of strings, or words split on blanks as a shell
// splits them, with '...' and "..." quoting and backslash escapes (nothing is expanded).
func parseCmd(s string) ([]string, error) {
	s = strings.TrimSpace(s)
	if strings.HasPrefix(s, "[") {
		var out []string
		if err := json.Unmarshal([]byte(s), &out); err != nil {
			return nil, fmt.Errorf("%q: not a JSON array of strings: %w", s, err)
		}
		if len(out) == 0 {
			return nil, fmt.Errorf("an empty JSON array")
		}
		return out, nil
	}
	return splitWords(s)
}

// splitWords splits s into words the way a shell does, quotes and backslashes only.
func splitWords(s string) ([]string, error) {
	var out []string
	var w strings.Builder
	inWord := false
	var quote rune // the open quote, or 0
	escaped := false
	for _, r := range s {
		switch {
		case escaped:
			w.WriteRune(r)
			escaped = false
		case quote == '\'':
			if r == '\'' {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\\' && quote != '\'':
			escaped, inWord = true, true
		case quote == '"':
			if r == '"' {
				quote = 0
			} else {
				w.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t' || r == '\n':
			if inWord {
				out = append(out, w.String())
				w.Reset()
				inWord = false
			}
		default:
			w.WriteRune(r)
			inWord = true
		}
	}
	if quote != 0 || escaped {
		return nil, fmt.Errorf("%q: an unterminated quote or escape", s)
	}
	if inWord {
		out = append(out, w.String())
	}
	return out, nil
}

// skopeoSourceArgs are the skopeo copy flags for reading from src: a registry on loopback is
// read over plain HTTP.
func skopeoSourceArgs(src string) []string {
	ref, ok := strings.CutPrefix(src, "docker://")
	if !ok {
		return nil
	}
	r, err := name.ParseReference(ref)
	if err != nil {
		return nil
	}
	host := r.Context().RegistryStr()
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if ip := net.ParseIP(host); host == "localhost" || ip != nil && ip.IsLoopback() {
		return []string{"--src-tls-verify=false"}
	}
	return nil
}

// workload is the image called imageName: a user's (c.User) or a built one (Workloads).
func (c Config) workload(imageName string) (Image, bool) {
	for _, im := range c.User {
		if im.Name == imageName {
			return im, true
		}
	}
	im, ok := Workloads[imageName]
	return im, ok
}

// toBuild lists the images of names the image builder makes: all but the user's.
func (c Config) toBuild(names []string) []string {
	var out []string
	for _, n := range names {
		if im, _ := c.workload(n); im.Source == "" {
			out = append(out, n)
		}
	}
	return out
}

// source is where skopeo copies im from: its Source, or the builder's layout in imagesDir.
func (im Image) source(imagesDir string) string {
	if im.Source != "" {
		return im.Source
	}
	return "oci:" + filepath.Join(imagesDir, im.Name) + ":" + im.Name
}
