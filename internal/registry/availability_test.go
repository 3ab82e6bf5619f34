package registry

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// availabilityFixture is an in-process registry and a resolver that
// reaches it.
func availabilityFixture(t *testing.T) (*registrytest.Registry, *Resolver) {
	t.Helper()
	reg := registrytest.New()
	t.Cleanup(reg.Close)
	r, err := New(Options{InsecureRegistries: []string{reg.Host}, QPS: 1000, Burst: 1000, Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return reg, r
}

func TestAvailableSaysWhetherTheRegistryStillServesADigest(t *testing.T) {
	reg, r := availabilityFixture(t)
	image := reg.Image("avail/app:v1")
	first := reg.Push(t, "avail/app:v1")
	second := reg.Push(t, "avail/app:v1") // first is untagged now
	ctx := context.Background()
	tick := time.Now()

	for _, d := range []string{first, second} {
		got, err := r.Available(ctx, AvailabilityRequest{Image: image, Digest: d, Keychain: authn.DefaultKeychain, FreshSince: tick})
		if err != nil || !got.Available {
			t.Fatalf("Available(%s) = %+v, %v; want available", d, got, err)
		}
	}
	// The registry's garbage collection deletes the untagged manifest.
	reg.Delete(t, "avail/app", first)
	heads, _ := reg.ManifestRequests()
	got, err := r.Available(ctx, AvailabilityRequest{Image: image, Digest: first, Keychain: authn.DefaultKeychain, FreshSince: tick})
	if err != nil || !got.Available {
		t.Fatalf("within the same check interval the answer is reused: %+v, %v", got, err)
	}
	if h, _ := reg.ManifestRequests(); h != heads {
		t.Fatalf("%d HEADs for an answer that was fresh", h-heads)
	}
	next := time.Now()
	got, err = r.Available(ctx, AvailabilityRequest{Image: image, Digest: first, Keychain: authn.DefaultKeychain, FreshSince: next})
	if err != nil || got.Available || got.CheckedAt.Before(next) {
		t.Fatalf("Available(collected %s) = %+v, %v; want unavailable, checked since %s", first, got, err, next)
	}
	got, err = r.Available(ctx, AvailabilityRequest{Image: image, Digest: second, Keychain: authn.DefaultKeychain, FreshSince: next})
	if err != nil || !got.Available {
		t.Fatalf("Available(tagged %s) = %+v, %v; want available", second, got, err)
	}
}

func TestAvailableAsksOncePerDigestPerInterval(t *testing.T) {
	reg, r := availabilityFixture(t)
	image := reg.Image("avail-once/app:v1")
	d := reg.Push(t, "avail-once/app:v1")
	heads, _ := reg.ManifestRequests()
	tick := time.Now()
	// Workloads name the digest's repository by several tags (and none):
	// the digest is one digest.
	images := []string{image, reg.Image("avail-once/app:latest"), reg.Image("avail-once/app")}
	var wg sync.WaitGroup
	for i := range 20 {
		wg.Go(func() {
			if got, err := r.Available(context.Background(), AvailabilityRequest{Image: images[i%len(images)], Digest: d, Keychain: authn.DefaultKeychain, FreshSince: tick}); err != nil || !got.Available {
				t.Errorf("Available = %+v, %v", got, err)
			}
		})
	}
	wg.Wait()
	if h, _ := reg.ManifestRequests(); h-heads != 1 {
		t.Fatalf("%d HEADs for 20 checks of one digest in one interval, want 1", h-heads)
	}
}

func TestAvailableGivesNoVerdictWhenTheRegistryFails(t *testing.T) {
	reg, r := availabilityFixture(t)
	image := reg.Image("avail-down/app:v1")
	d := reg.Push(t, "avail-down/app:v1")
	reg.SetDown(true)
	got, err := r.Available(context.Background(), AvailabilityRequest{Image: image, Digest: d, Keychain: authn.DefaultKeychain, FreshSince: time.Now()})
	if err == nil {
		t.Fatalf("Available with the registry down = %+v, no error: a failure must not read as gone", got)
	}
	// A failure is not kept: back up, the next check has its verdict.
	reg.SetDown(false)
	if got, err := r.Available(context.Background(), AvailabilityRequest{Image: image, Digest: d, Keychain: authn.DefaultKeychain}); err != nil || !got.Available {
		t.Fatalf("Available once the registry is back = %+v, %v", got, err)
	}
	if _, err := r.Available(context.Background(), AvailabilityRequest{Image: image, Digest: "sha256:nothex", FreshSince: time.Now()}); err == nil {
		t.Fatal("a digest that is not sha256 was accepted")
	}
}

// A refused credential says nothing of whether the digest is there: it
// is an error, never "gone", and what the registry's refusal was is said.
func TestAvailableWithARefusedCredentialIsAnError(t *testing.T) {
	f := newFixture(t)
	d := f.reg.push("private/app:v1")
	var seen authLog
	f.reg.setIntercept(basicAuth(func(u, p string) bool { return u == "bob" && p == "right" }, &seen))
	got, err := f.resolver.Available(context.Background(), AvailabilityRequest{
		Image: f.reg.image("private/app:v1"), Digest: d, Keychain: staticKeychain{"bob", "wrong"}, FreshSince: f.clock.Now(),
	})
	if err == nil || got.Available {
		t.Fatalf("Available with a refused credential = %+v, %v; want an error", got, err)
	}
	if strings.Contains(err.Error(), "wrong") {
		t.Fatalf("the error names the password: %v", err)
	}
	got, err = f.resolver.Available(context.Background(), AvailabilityRequest{
		Image: f.reg.image("private/app:v1"), Digest: d, Keychain: staticKeychain{"bob", "right"}, FreshSince: f.clock.Now(),
	})
	if err != nil || !got.Available {
		t.Fatalf("Available with the right credential = %+v, %v", got, err)
	}
}
