package registry

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// readWrite makes the test registry ask for Basic credentials, and lets
// "reader" read and "writer" read and write: a registry whose pull
// secret may not push (403), as Harbor's robot accounts and ECR's
// read-only roles are.
func readWrite(seen *authLog) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		user, pass, ok := r.BasicAuth()
		if ok {
			seen.add(r.Method + " " + user)
		}
		switch {
		case ok && user == "writer" && pass == "w":
			return false
		case ok && user == "reader" && pass == "r" && (r.Method == http.MethodGet || r.Method == http.MethodHead):
			return false
		case ok && user == "reader" && pass == "r":
			http.Error(w, `{"errors":[{"code":"DENIED","message":"requested access to the resource is denied"}]}`, http.StatusForbidden)
			return true
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="imagepin-test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	}
}

// tagPointsAt is what tag of repo points at in the test registry, or ""
// when the tag is not there.
func (tr *testRegistry) tagPointsAt(repo, tag string) string {
	tr.t.Helper()
	ref, err := name.NewTag(tr.host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		tr.t.Fatal(err)
	}
	desc, err := remote.Head(ref, remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: "writer", Password: "w"})))
	if unknownManifest(err) {
		return ""
	}
	if err != nil {
		tr.t.Fatal(err)
	}
	return desc.Digest.String()
}

func TestKeepPushesATagAndUnkeepDeletesOnlyItsOwn(t *testing.T) {
	f := newFixture(t)
	first := f.reg.push("keep/app:v1")
	second := f.reg.push("keep/app:v1") // first is untagged now
	var seen authLog
	f.reg.setIntercept(readWrite(&seen))
	ctx := context.Background()
	req := KeepRequest{Image: f.reg.image("keep/app:v1"), Digest: first, Keychain: staticKeychain{"writer", "w"}, FreshSince: f.clock.Now()}

	created, err := f.resolver.Keep(ctx, req)
	if err != nil || !created {
		t.Fatalf("Keep = %v, %v; want the tag pushed", created, err)
	}
	tag := KeepTagOf(first)
	if want := "imagepin-keep-" + strings.TrimPrefix(first, "sha256:")[:12]; tag != want {
		t.Fatalf("KeepTagOf = %q, want %q", tag, want)
	}
	if got := f.reg.tagPointsAt("keep/app", tag); got != first {
		t.Fatalf("%s points at %q, want %s", tag, got, first)
	}
	if got := f.reg.tagPointsAt("keep/app", "v1"); got != second {
		t.Fatalf("v1 points at %q after Keep, want %s untouched", got, second)
	}

	// Kept since FreshSince: no request, and the push is said again (a
	// caller whose record of it was lost learns it again).
	f.reg.resetCounts()
	if created, err := f.resolver.Keep(ctx, req); err != nil || !created {
		t.Fatalf("second Keep = %v, %v; want the push said again", created, err)
	}
	// ... to the caller whose request pushed it, and to nobody else.
	if created, err := f.resolver.Keep(ctx, KeepRequest{Image: req.Image, Digest: first, Keychain: req.Keychain, FreshSince: req.FreshSince, Owner: "another"}); err != nil || created {
		t.Fatalf("Keep by another owner = %v, %v; want the tag found in place, not pushed by it", created, err)
	}
	if n := f.reg.count("HEAD manifests") + f.reg.count("PUT manifests"); n != 0 {
		t.Fatalf("a Keep fresh since FreshSince sent %d requests", n)
	}
	// On the next tick: one HEAD finds the tag in place.
	f.clock.Step(time.Minute)
	req.FreshSince = f.clock.Now()
	if created, err := f.resolver.Keep(ctx, req); err != nil || created {
		t.Fatalf("Keep on the next tick = %v, %v; want the tag found in place", created, err)
	}
	if h, p := f.reg.count("HEAD manifests"), f.reg.count("PUT manifests"); h != 1 || p != 0 {
		t.Fatalf("Keep of a tag in place sent %d HEADs and %d PUTs; want 1 and 0", h, p)
	}

	// A tag of that name someone pointed elsewhere is neither overwritten
	// nor deleted.
	other := KeepRequest{Image: req.Image, Digest: second, Keychain: req.Keychain}
	f.reg.setIntercept(nil)
	taken := f.reg.host + "/keep/app:" + KeepTagOf(second)
	ref, _ := name.NewTag(taken, name.Insecure)
	desc, err := remote.Get(ref.Context().Digest(first))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Tag(ref, desc); err != nil {
		t.Fatal(err)
	}
	f.reg.setIntercept(readWrite(&seen))
	if _, err := f.resolver.Keep(ctx, other); err == nil || !strings.Contains(err.Error(), "did not push") {
		t.Fatalf("Keep over a tag pointing elsewhere = %v; want it refused", err)
	}
	if deleted, err := f.resolver.Unkeep(ctx, other, nil); err != nil || deleted {
		t.Fatalf("Unkeep of a tag pointing elsewhere = %v, %v; want it left", deleted, err)
	}
	if got := f.reg.tagPointsAt("keep/app", KeepTagOf(second)); got != first {
		t.Fatalf("a tag imagepin did not push was changed: points at %q", got)
	}

	// Nothing is deleted while someone still needs the tag.
	if deleted, err := f.resolver.Unkeep(ctx, req, func() bool { return true }); err != nil || deleted {
		t.Fatalf("Unkeep of a tag still wanted = %v, %v; want it left", deleted, err)
	}
	if got := f.reg.tagPointsAt("keep/app", tag); got != first {
		t.Fatalf("a tag still wanted was deleted: points at %q", got)
	}
	// Unkeep deletes the tag, and nothing else.
	deleted, err := f.resolver.Unkeep(ctx, req, nil)
	if err != nil || !deleted {
		t.Fatalf("Unkeep = %v, %v; want the tag deleted", deleted, err)
	}
	if got := f.reg.tagPointsAt("keep/app", tag); got != "" {
		t.Fatalf("%s still points at %s after Unkeep", tag, got)
	}
	if got := f.reg.tagPointsAt("keep/app", "v1"); got != second {
		t.Fatalf("v1 points at %q after Unkeep, want %s", got, second)
	}
	// The manifest itself stays (only the tag went).
	if v, err := f.resolver.Available(ctx, AvailabilityRequest{Image: req.Image, Digest: first, Keychain: req.Keychain, FreshSince: f.clock.Now()}); err != nil || !v.Available {
		t.Fatalf("the kept manifest is gone after Unkeep: %+v, %v", v, err)
	}
	// A Keep after Unkeep pushes the tag again, whatever FreshSince says.
	if created, err := f.resolver.Keep(ctx, req); err != nil || !created {
		t.Fatalf("Keep after Unkeep = %v, %v; want the tag pushed again", created, err)
	}
}

func TestKeepWithCredentialsThatMayNotPushIsRefusedClearly(t *testing.T) {
	f := newFixture(t)
	first := f.reg.push("keep/ro:v1")
	var seen authLog
	f.reg.setIntercept(readWrite(&seen))
	ctx := context.Background()
	req := KeepRequest{Image: f.reg.image("keep/ro:v1"), Digest: first, Keychain: staticKeychain{"reader", "r"},
		FreshSince: f.clock.Now(), RetrySince: f.clock.Now()}

	_, err := f.resolver.Keep(ctx, req)
	if !errors.Is(err, ErrPushRefused) {
		t.Fatalf("Keep with a read-only credential = %v; want ErrPushRefused", err)
	}
	for _, want := range []string{"keep/ro", "DENIED", "PUT"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q: %v", want, err)
		}
	}
	if strings.Contains(err.Error(), `"r"`) || strings.Contains(err.Error(), ":r@") {
		t.Errorf("the refusal names the password: %v", err)
	}
	if got := f.reg.tagPointsAt("keep/ro", KeepTagOf(first)); got != "" {
		t.Fatalf("a refused Keep left a tag at %s", got)
	}
	// Remembered until RetrySince moves: no request per check.
	f.reg.resetCounts()
	if _, err := f.resolver.Keep(ctx, req); !errors.Is(err, ErrPushRefused) {
		t.Fatalf("the remembered refusal = %v", err)
	}
	if n := f.reg.count("HEAD manifests") + f.reg.count("PUT manifests") + f.reg.count("GET manifests"); n != 0 {
		t.Fatalf("a refusal remembered since RetrySince sent %d requests", n)
	}
	// Other credentials (a push secret) are asked at once.
	req.Keychain = staticKeychain{"writer", "w"}
	if created, err := f.resolver.Keep(ctx, req); err != nil || !created {
		t.Fatalf("Keep with a push credential = %v, %v", created, err)
	}
}

func TestKeepOfACollectedDigestIsAnError(t *testing.T) {
	f := newFixture(t)
	first := f.reg.push("keep/gone:v1")
	f.reg.push("keep/gone:v1")
	ref, _ := name.NewDigest(f.reg.host+"/keep/gone@"+first, name.Insecure)
	if err := remote.Delete(ref); err != nil {
		t.Fatal(err)
	}
	_, err := f.resolver.Keep(context.Background(), KeepRequest{Image: f.reg.image("keep/gone:v1"), Digest: first})
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Fatalf("Keep of a collected digest = %v; want not found", err)
	}
	if got := f.reg.tagPointsAt("keep/gone", KeepTagOf(first)); got != "" {
		t.Fatalf("a tag was pushed for a collected digest: %s", got)
	}
}

// Harbor, Docker Hub and the distribution registry without
// storage.delete.enabled do not delete tags through the API: Unkeep says
// so apart from a refusal of the credentials, and the tag stays.
func TestUnkeepOnARegistryThatDoesNotDeleteTagsSaysSo(t *testing.T) {
	f := newFixture(t)
	d := f.reg.push("keep/nodel:v1")
	req := KeepRequest{Image: f.reg.image("keep/nodel:v1"), Digest: d}
	if created, err := f.resolver.Keep(context.Background(), req); err != nil || !created {
		t.Fatalf("Keep = %v, %v", created, err)
	}
	f.reg.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodDelete {
			return false
		}
		http.Error(w, `{"errors":[{"code":"UNSUPPORTED","message":"The operation is unsupported."}]}`, http.StatusMethodNotAllowed)
		return true
	})
	deleted, err := f.resolver.Unkeep(context.Background(), req, nil)
	if deleted || !errors.Is(err, ErrDeleteUnsupported) || errors.Is(err, ErrPushRefused) {
		t.Fatalf("Unkeep on a registry that does not delete tags = %v, %v; want ErrDeleteUnsupported", deleted, err)
	}
	if got := f.reg.tagPointsAt("keep/nodel", KeepTagOf(d)); got != d {
		t.Fatalf("the tag points at %q, want %s", got, d)
	}
}
