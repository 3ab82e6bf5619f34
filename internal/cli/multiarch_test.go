package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// Issue 19: `imagepin pin` on multi-arch images sends no GET (Docker Hub
// counts manifest GETs as pulls): one HEAD per tag pins each to its
// index digest.
func TestPinMultiArchImagesSendsNoGET(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	var in strings.Builder
	want := map[string]string{}
	for i := range 5 {
		tag := fmt.Sprintf("multi/app%d:v1", i)
		index, _ := reg.PushIndex(t, tag)
		want[reg.Image(tag)] = index
		fmt.Fprintf(&in, "---\napiVersion: apps/v1\nkind: Deployment\nmetadata: {name: app-%d}\nspec:\n  template:\n    spec:\n      containers:\n      - {name: app, image: %s}\n", i, reg.Image(tag))
	}
	heads0, gets0 := reg.ManifestRequests()
	var out bytes.Buffer
	if code := Pin(context.Background(), []string{"--insecure-registry", reg.Host}, strings.NewReader(in.String()), &out, io.Discard); code != 0 {
		t.Fatalf("exit %d", code)
	}
	for image, index := range want {
		if !strings.Contains(out.String(), image+"@"+index) {
			t.Errorf("%s not pinned to its index %s", image, index)
		}
	}
	heads, gets := reg.ManifestRequests()
	if gets != gets0 || heads-heads0 != len(want) {
		t.Errorf("pinning %d multi-arch tags sent %d HEADs and %d GETs, want %d and 0", len(want), heads-heads0, gets-gets0, len(want))
	}
}
