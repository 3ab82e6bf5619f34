package controllers

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/testenv"
)

// tagIn is what repo:tag points at in the test registry ("" when the tag
// is not there), read as the writer of readOnlyExceptWriter.
func tagIn(t *testing.T, repo, tag string) string {
	t.Helper()
	ref, err := name.NewTag(reg.Host+"/"+repo+":"+tag, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Head(ref, remote.WithAuth(authn.FromConfig(authn.AuthConfig{Username: "writer", Password: "w"})))
	if err != nil {
		if strings.Contains(err.Error(), "404") || strings.Contains(err.Error(), "MANIFEST_UNKNOWN") {
			return ""
		}
		t.Fatal(err)
	}
	return desc.Digest.String()
}

// keepTagsAre checks that status.keepTags lists want (repo, digest,
// pushed by this ImagePin), in any order.
func keepTagsAre(got *imagesv1alpha1.ImagePin, repo string, want ...string) error {
	var ds []string
	for _, k := range got.Status.KeepTags {
		if k.Image != repo || k.Tag != registry.KeepTagOf(string(k.Digest)) || !k.Pushed {
			return fmt.Errorf("keep tag %+v, want one of %s, pushed", k, repo)
		}
		ds = append(ds, string(k.Digest))
	}
	slices.Sort(ds)
	want = slices.Clone(want)
	slices.Sort(want)
	if fmt.Sprint(ds) != fmt.Sprint(want) {
		return fmt.Errorf("keepTags %v, want %v", ds, want)
	}
	return nil
}

// eventNotes lists the notes of the events of reason about pin.
func eventNotes(t *testing.T, pin *imagesv1alpha1.ImagePin, reason string) []string {
	t.Helper()
	var evs eventsv1.EventList
	if err := k8s.List(context.Background(), &evs, client.InNamespace(pin.Namespace)); err != nil {
		t.Fatal(err)
	}
	var notes []string
	for _, e := range evs.Items {
		if e.Reason == reason && e.Regarding.Name == pin.Name {
			notes = append(notes, e.Note)
		}
	}
	return notes
}

// Issue 20, retention: with spec.retention.protect, what the pods run
// and the tag's newest digests get a keep tag each, so that garbage
// collection of untagged manifests spares them; turned off, the tags are
// deleted again, and nothing else is.
func TestProtectTagsWhatABackoutNeedsAndDeletesOnlyItsOwnTags(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	repo := reg.Host + "/keep/app"
	image := repo + ":v1"
	a := reg.Push(t, "keep/app:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	b := reg.Push(t, "keep/app:v1") // a is untagged: the pods run it
	reg.Tag(t, "keep/app:mine", a)  // a user's tag, never imagepin's to touch
	pin := observePin(ns, "web")
	pin.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: true}
	create(t, pin)

	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := keepTagsAre(got, repo, a, b); err != nil {
			return err
		}
		return conditionIs(got, imagesv1alpha1.ConditionRetained, metav1.ConditionTrue, imagesv1alpha1.ReasonDigestsKept)
	})
	for _, d := range []string{a, b} {
		if got := tagIn(t, "keep/app", registry.KeepTagOf(d)); got != d {
			t.Fatalf("%s points at %q, want %s", registry.KeepTagOf(d), got, d)
		}
	}
	eventually(t, func() error {
		if notes := eventNotes(t, pin, EventKeepTagsPushed); len(notes) != 1 || !strings.Contains(notes[0], registry.KeepTagOf(a)) {
			return fmt.Errorf("KeepTagsPushed events %q, want one naming %s", notes, registry.KeepTagOf(a))
		}
		return nil
	})

	// Off: the tags imagepin pushed are deleted; the manifests, the tag v1
	// and the user's tag stay.
	got, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.Retention.Protect = false
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if len(got.Status.KeepTags) != 0 {
			return fmt.Errorf("keepTags %+v after protect was turned off", got.Status.KeepTags)
		}
		if c := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionRetained); c != nil {
			return fmt.Errorf("Retained %s/%s with nothing kept", c.Status, c.Reason)
		}
		if len(got.Finalizers) != 0 {
			return fmt.Errorf("finalizers %v with no keep tag left", got.Finalizers)
		}
		return nil
	})
	for _, d := range []string{a, b} {
		if got := tagIn(t, "keep/app", registry.KeepTagOf(d)); got != "" {
			t.Errorf("%s still points at %s after protect was turned off", registry.KeepTagOf(d), got)
		}
	}
	if got := tagIn(t, "keep/app", "v1"); got != b {
		t.Errorf("v1 points at %q, want %s", got, b)
	}
	if got := tagIn(t, "keep/app", "mine"); got != a {
		t.Errorf("the user's tag points at %q, want %s", got, a)
	}
	eventually(t, func() error {
		if notes := eventNotes(t, pin, EventKeepTagsDeleted); len(notes) != 1 {
			return fmt.Errorf("KeepTagsDeleted events %q, want one", notes)
		}
		return nil
	})
}

// readOnlyExceptWriter lets anyone read the test registry's repository,
// and only "writer" push or delete in it: a pull credential that may not
// push.
func readOnlyExceptWriter(backend http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		user, pass, _ := r.BasicAuth()
		if r.Method == http.MethodGet || r.Method == http.MethodHead || (user == "writer" && pass == "w") {
			backend.ServeHTTP(w, r)
			return
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="imagepin-test"`)
		http.Error(w, `{"errors":[{"code":"UNAUTHORIZED","message":"authentication required"}]}`, http.StatusUnauthorized)
	})
}

// A registry that will not let the workload's credentials push: Retained
// says so and names the way out; a pushSecretRef to a Secret that may push
// puts the tags in place.
func TestProtectWithCredentialsThatMayNotPushSaysSoUntilAPushSecretIsNamed(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	repo := reg.Host + "/keepro/app"
	image := repo + ":v1"
	a := reg.Push(t, "keepro/app:v1")
	t.Cleanup(reg.Route("keepro/app", readOnlyExceptWriter(reg.Backend())))
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	pin := observePin(ns, "web")
	pin.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: true}
	create(t, pin)

	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := conditionSays(got, imagesv1alpha1.ConditionRetained, metav1.ConditionFalse, imagesv1alpha1.ReasonPushRefused, "pushSecretRef", "keepro/app"); err != nil {
			return err
		}
		if len(got.Status.KeepTags) != 0 {
			return fmt.Errorf("keepTags %+v with nothing pushed", got.Status.KeepTags)
		}
		return nil
	})
	if got := tagIn(t, "keepro/app", registry.KeepTagOf(a)); got != "" {
		t.Fatalf("a keep tag points at %s though the push was refused", got)
	}

	// A pushSecretRef naming a Secret that is missing says so.
	got, err := getPin(pin)
	if err != nil {
		t.Fatal(err)
	}
	got.Spec.Retention.PushSecretRef = &corev1.LocalObjectReference{Name: "pusher"}
	if err := k8s.Update(context.Background(), got); err != nil {
		t.Fatal(err)
	}
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := conditionSays(got, imagesv1alpha1.ConditionRetained, metav1.ConditionFalse, imagesv1alpha1.ReasonRetentionFailed, "pushSecretRef", "not found"); err != nil {
			return err
		}
		return nil
	})

	// The Secret appears: the tag is pushed with it at the next check.
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "pusher"},
		Type:       corev1.SecretTypeDockerConfigJson,
		Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(reg.Host, "writer", "w")},
	}
	if err := k8s.Create(context.Background(), secret); err != nil {
		t.Fatal(err)
	}
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := keepTagsAre(got, repo, a); err != nil {
			return err
		}
		return conditionIs(got, imagesv1alpha1.ConditionRetained, metav1.ConditionTrue, imagesv1alpha1.ReasonDigestsKept)
	})
	if got := tagIn(t, "keepro/app", registry.KeepTagOf(a)); got != a {
		t.Fatalf("%s points at %q, want %s", registry.KeepTagOf(a), got, a)
	}
}

// A deleted ImagePin deletes the keep tags it pushed before it goes: the
// finalizer added before the first push holds it until then.
func TestADeletedImagePinDeletesItsKeepTags(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	repo := reg.Host + "/keepdel/app"
	image := repo + ":v1"
	a := reg.Push(t, "keepdel/app:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	pin := observePin(ns, "web")
	pin.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: true}
	create(t, pin)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if err := keepTagsAre(got, repo, a); err != nil {
			return err
		}
		if !slices.Contains(got.Finalizers, keepTagsFinalizer) {
			return fmt.Errorf("finalizers %v, want %s", got.Finalizers, keepTagsFinalizer)
		}
		return nil
	})
	if got := tagIn(t, "keepdel/app", registry.KeepTagOf(a)); got != a {
		t.Fatalf("%s points at %q, want %s", registry.KeepTagOf(a), got, a)
	}

	if err := k8s.Delete(context.Background(), pin); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		if _, err := getPin(pin); !apierrors.IsNotFound(err) {
			return fmt.Errorf("the ImagePin is still there (%w)", err)
		}
		return nil
	})
	if got := tagIn(t, "keepdel/app", registry.KeepTagOf(a)); got != "" {
		t.Fatalf("%s still points at %s after the ImagePin was deleted", registry.KeepTagOf(a), got)
	}
	if got := tagIn(t, "keepdel/app", "v1"); got != a {
		t.Fatalf("v1 points at %q, want %s", got, a)
	}
}

// Two ImagePins keep one digest: the first pushes its tag, the second
// finds it in place (and would never delete it). When the first no longer
// needs it, the tag stays for the second, which is made its pusher; it
// deletes the tag once it lets go too.
func TestAKeepTagTwoImagePinsNeedIsHandedOverAndDeletedOnceNeitherDoes(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	repo := reg.Host + "/keepshared/app"
	image := repo + ":v1"
	a := reg.Push(t, "keepshared/app:v1")
	deploymentRunning(t, ns, "web", image, podRun{"node-a", a})
	deploymentRunning(t, ns, "api", image, podRun{"node-b", a})
	protect := func(p *imagesv1alpha1.ImagePin, on bool) {
		t.Helper()
		got, err := getPin(p)
		if err != nil {
			t.Fatal(err)
		}
		before := got.DeepCopy()
		got.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: on}
		if err := k8s.Patch(context.Background(), got, client.MergeFrom(before)); err != nil {
			t.Fatal(err)
		}
	}
	record := func(p *imagesv1alpha1.ImagePin, want string) {
		t.Helper()
		whenChecked(t, p, func(got *imagesv1alpha1.ImagePin) error {
			var recs []string
			for _, k := range got.Status.KeepTags {
				recs = append(recs, fmt.Sprintf("pushed=%v released=%v", k.Pushed, k.Released))
			}
			if fmt.Sprint(recs) != want {
				return fmt.Errorf("keepTags %v, want %s", recs, want)
			}
			return nil
		})
	}
	web, api := observePin(ns, "web"), observePin(ns, "api")
	web.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: true}
	create(t, web)
	record(web, "[pushed=true released=false]")
	create(t, api)
	protect(api, true)
	record(api, "[pushed=false released=false]")

	// web lets go: api still needs the tag, and is made its pusher.
	protect(web, false)
	record(web, "[]")
	record(api, "[pushed=true released=false]")
	if got := tagIn(t, "keepshared/app", registry.KeepTagOf(a)); got != a {
		t.Fatalf("the tag api needs was deleted (points at %q)", got)
	}
	// api lets go: it deletes the tag.
	protect(api, false)
	record(api, "[]")
	if got := tagIn(t, "keepshared/app", registry.KeepTagOf(a)); got != "" {
		t.Fatalf("the tag nobody needs still points at %s", got)
	}
}
