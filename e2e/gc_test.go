package e2e

import (
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
)

// Issue 20 on the local cluster: `:v1` is pushed twice, and the
// distribution registry's own garbage collection (`registry
// garbage-collect --delete-untagged`, the registry stopped) deletes the
// untagged first build. Without retention, imagepin reports it gone and
// refuses a rollback to it, and the workload stays healthy; with
// spec.retention.protect, the first build survives the collection and a
// rollback to it rolls out once.
func TestBackoutAcrossGarbageCollection(t *testing.T) {
	t.Run("without retention", func(t *testing.T) {
		ns := "gc-off"
		useNamespace(t, ns, true)
		repo := local.Registry.Host + "/gcoff/web"
		image := repo + ":v1"
		build1 := push(t, "gcoff/web:v1", "gc off build 1")
		// A digest found present is checked again on the retention tick:
		// the shortest, so that the test sees the collection within it.
		apply(t, ns, imagePinYAML("Observe", "{matchLabels: {app: web}}")+"  retention: {checkInterval: 1m}\n")
		apply(t, ns, deploymentYAML("web", image, 1))
		waitPods(t, ns, "web", allRun(build1, 1))
		waitPin(t, ns, "history to hold build 1", historyHas(image, build1))
		build2 := push(t, "gcoff/web:v1", "gc off build 2")
		waitPin(t, ns, "history to hold both builds, both there", func(p *imagesv1alpha1.ImagePin) error {
			if err := historyHas(image, build2, build1)(p); err != nil {
				return err
			}
			return historyAvailable(p, image, map[imagesv1alpha1.Digest]bool{build1: true, build2: true})
		})

		collect(t)
		if inRegistry(t, "gcoff/web", build1) {
			t.Fatalf("garbage collection kept the untagged build 1 (%s)", build1)
		}
		// The pod runs a digest the registry no longer has: the next pod
		// will not pull it, and a rollback to it cannot be written.
		pin := waitPinWithin(t, ns, "build 1 reported gone, by the next retention tick", 2*time.Minute, func(p *imagesv1alpha1.ImagePin) error {
			if err := historyAvailable(p, image, map[imagesv1alpha1.Digest]bool{build1: false, build2: true}); err != nil {
				return err
			}
			if err := condition(p, imagesv1alpha1.ConditionRollbackReady, metav1.ConditionFalse); err != nil {
				return err
			}
			return workloadImage(p, image, build2, []imagesv1alpha1.DriftReason{
				imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftDigestGone})
		})
		t.Logf("without retention, after GC: %s", meta.FindStatusCondition(pin.Status.Conditions, imagesv1alpha1.ConditionRollbackReady).Message)

		// Follow moves the workload to build 2, which the registry has.
		kubectlAt(t, local.Kubeconfig, nil, "-n", ns, "patch", "ipin", "web", "--type=merge", "-p", `{"spec":{"mode":"Follow"}}`)
		waitImage(t, ns, "web", image+"@"+string(build2))
		waitPods(t, ns, "web", allRun(build2, 1))
		rollouts := replicaSets(t, ns, "web")

		// A rollback to build 1 is refused; the workload keeps running
		// build 2.
		kubectlAt(t, local.Kubeconfig, nil, "-n", ns, "patch", "ipin", "web", "--type=merge", "-p",
			fmt.Sprintf(`{"spec":{"overrides":[{"image":%q,"digest":%q}]}}`, image, build1))
		pin = waitPin(t, ns, "the override refused", func(p *imagesv1alpha1.ImagePin) error {
			c := meta.FindStatusCondition(p.Status.Conditions, imagesv1alpha1.ConditionReady)
			if c == nil || c.Reason != imagesv1alpha1.ReasonOverrideDigestGone || c.ObservedGeneration != p.Generation {
				return fmt.Errorf("Ready is %v, want False/%s", c, imagesv1alpha1.ReasonOverrideDigestGone)
			}
			if !strings.Contains(c.Message, "spec.overrides[0].digest") {
				return fmt.Errorf("Ready does not name the field: %s", c.Message)
			}
			return nil
		})
		checkedAt := pin.Status.LastCheckTime
		waitPin(t, ns, "a later check", func(p *imagesv1alpha1.ImagePin) error {
			if !p.Status.LastCheckTime.After(checkedAt.Time) {
				return fmt.Errorf("last check %s", p.Status.LastCheckTime)
			}
			return nil
		})
		if got := deployment(t, ns, "web").Spec.Template.Spec.Containers[0].Image; got != image+"@"+string(build2) {
			t.Errorf("the refused rollback was written: web names %s", got)
		}
		if got := replicaSets(t, ns, "web"); got != rollouts {
			t.Errorf("the refused rollback rolled out: %d ReplicaSets, were %d", got, rollouts)
		}
		waitPods(t, ns, "web", allRun(build2, 1))
	})

	t.Run("with retention", func(t *testing.T) {
		ns := "gc-on"
		useNamespace(t, ns, true)
		repo := local.Registry.Host + "/gcon/web"
		image := repo + ":v1"
		build1 := push(t, "gcon/web:v1", "gc on build 1")
		apply(t, ns, imagePinYAML("Follow", "{matchLabels: {app: web}}")+"  retention: {protect: true}\n")
		apply(t, ns, deploymentYAML("web", image, 1))
		waitImage(t, ns, "web", image+"@"+string(build1))
		waitPods(t, ns, "web", allRun(build1, 1))
		build2 := push(t, "gcon/web:v1", "gc on build 2")
		waitImage(t, ns, "web", image+"@"+string(build2))
		waitPods(t, ns, "web", allRun(build2, 1))
		waitPin(t, ns, "both builds kept by a tag", func(p *imagesv1alpha1.ImagePin) error {
			var kept []string
			for _, k := range p.Status.KeepTags {
				kept = append(kept, string(k.Digest))
			}
			for _, d := range []imagesv1alpha1.Digest{build1, build2} {
				if !slices.Contains(kept, string(d)) {
					return fmt.Errorf("keepTags %v lack %s", kept, d)
				}
			}
			return condition(p, imagesv1alpha1.ConditionRetained, metav1.ConditionTrue)
		})

		collect(t)
		if !inRegistry(t, "gcon/web", build1) {
			t.Fatalf("garbage collection deleted build 1 (%s) though its keep tag %s points at it", build1, registry.KeepTagOf(string(build1)))
		}
		before := deployment(t, ns, "web").Generation

		// The rollback to build 1 rolls out, once (back to build 1's
		// ReplicaSet).
		kubectlAt(t, local.Kubeconfig, nil, "-n", ns, "patch", "ipin", "web", "--type=merge", "-p",
			fmt.Sprintf(`{"spec":{"overrides":[{"image":%q,"digest":%q}]}}`, image, build1))
		waitImage(t, ns, "web", image+"@"+string(build1))
		waitPods(t, ns, "web", allRun(build1, 1))
		waitPin(t, ns, "the rollback checked, build 1 there", func(p *imagesv1alpha1.ImagePin) error {
			if err := condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue); err != nil {
				return err
			}
			return historyAvailable(p, image, map[imagesv1alpha1.Digest]bool{build1: true, build2: true})
		})
		if got := deployment(t, ns, "web").Generation - before; got != 1 {
			t.Errorf("the rollback changed the Deployment %d times, want exactly once", got)
		}
	})
}

// collect runs the registry's garbage collection (the registry down
// meanwhile) and logs what it deleted.
func collect(t *testing.T) {
	t.Helper()
	out, err := local.Registry.GarbageCollect()
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("registry garbage-collect --delete-untagged:\n%s", out)
}

// inRegistry says whether the registry still serves digest in repo: a
// HEAD by digest, as a kubelet's pull begins.
func inRegistry(t *testing.T, repo string, digest imagesv1alpha1.Digest) bool {
	t.Helper()
	ref, err := name.NewDigest(local.Registry.Host + "/" + repo + "@" + string(digest))
	if err != nil {
		t.Fatal(err)
	}
	auth := &authn.Basic{Username: local.Registry.User, Password: local.Registry.Password}
	_, err = remote.Head(ref, remote.WithAuth(auth), remote.WithTransport(local.Registry.Transport()))
	var terr *transport.Error
	switch {
	case err == nil:
		return true
	case errors.As(err, &terr) && terr.StatusCode == http.StatusNotFound:
		return false
	}
	t.Fatalf("HEAD %s: %v", ref, err)
	return false
}

// historyHas checks that image's history lists want, newest first.
func historyHas(image string, want ...imagesv1alpha1.Digest) func(*imagesv1alpha1.ImagePin) error {
	return func(p *imagesv1alpha1.ImagePin) error {
		for _, img := range p.Status.Images {
			if img.Image != image {
				continue
			}
			var got []imagesv1alpha1.Digest
			for _, h := range img.History {
				got = append(got, h.Digest)
			}
			if !slices.Equal(got, want) {
				return fmt.Errorf("history %v, want %v", got, want)
			}
			return nil
		}
		return fmt.Errorf("no status for %s", image)
	}
}

// historyAvailable checks that each digest of want is in image's history,
// checked, with available as want says.
func historyAvailable(p *imagesv1alpha1.ImagePin, image string, want map[imagesv1alpha1.Digest]bool) error {
	for _, img := range p.Status.Images {
		if img.Image != image {
			continue
		}
		for d, avail := range want {
			i := slices.IndexFunc(img.History, func(h imagesv1alpha1.DigestRecord) bool { return h.Digest == d })
			if i < 0 {
				return fmt.Errorf("%s not in history", d)
			}
			if h := img.History[i]; h.Available == nil || *h.Available != avail {
				return fmt.Errorf("history says %s available %v, want %v", d, h.Available, avail)
			}
		}
		return nil
	}
	return fmt.Errorf("no status for %s", image)
}
