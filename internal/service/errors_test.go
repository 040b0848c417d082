package service

import (
	"context"
	"net/http"
	"path/filepath"
	"strings"
	"testing"

	"lazypull/internal/testutil"
)

// TestMountRefusedSaysWhatToDo: a registry that refuses lazypull (401) is named, with
// where the credentials come from, in one sentence; no Go value printed raw.
func TestMountRefusedSaysWhatToDo(t *testing.T) {
	reg := testutil.NewRegistry(t, testutil.WithHandler(func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"errors":[{"code":"UNAUTHORIZED","message":"authentication required","detail":[{"Type":"repository","Name":"app","Action":"pull"}]}]}`))
		})
	}))
	cfg := MountConfig{NodeConfig: DefaultNodeConfig(), Layer: -1}
	cfg.Store, cfg.PlainHTTP, cfg.Prefetch = filepath.Join(t.TempDir(), "store"), true, false
	ref := reg.Host + "/app:v1"
	err := Mount(context.Background(), cfg, []MountPoint{{Ref: ref, Dir: t.TempDir()}}, discard())
	if err == nil {
		t.Fatal("mount of a refusing registry worked")
	}
	for _, want := range []string{ref, "401", "registry " + reg.Host + " refused the credentials", "Docker config", "docker login " + reg.Host} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	if strings.Contains(err.Error(), "map[") {
		t.Errorf("error %q prints a Go map", err)
	}
}
