package controllers

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/prometheus/client_golang/prometheus/testutil"
	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	clocktesting "k8s.io/utils/clock/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/faulttest"
)

// A registry that answers with a manifest not matching its digest, or
// with a malformed digest header, never gets a digest written into a
// workload: Pin reports Ready=False with the registry's fault and leaves
// the Deployment as it is, and pins the right digest once the registry
// answers properly. The faults sit in front of one repository of the
// shared in-process registry, so other tests are not disturbed.
func TestPinWritesNoDigestTheRegistryCannotVouchFor(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := namespace(t)
	const repo = "faults/pin"
	image := reg.Image(repo + ":v1")
	good := reg.Push(t, repo+":v1")
	ref, err := name.NewDigest(reg.Image(repo+"@"+good), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	desc, err := remote.Get(ref)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(append(append([]byte{}, desc.Manifest...), '\n'))
	corrupt := "sha256:" + hex.EncodeToString(sum[:])
	other := "sha256:" + strings.Repeat("0", 64)

	faults := faulttest.Wrap(reg.Backend())
	defer reg.Route(repo, faults)()

	dep := deployment(ns, "web", withLabels("app", "web"), withImage("app", image))
	create(t, dep)
	pin := imagePin(ns, "web", selecting("app", "web"), func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Mode = imagesv1alpha1.ModePin
		p.Spec.Interval = &metav1.Duration{Duration: 10 * time.Second}
	})

	imageOf := func() (string, int64, error) {
		var d appsv1.Deployment
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(dep), &d); err != nil {
			return "", 0, err
		}
		return d.Spec.Template.Spec.Containers[0].Image, d.Generation, nil
	}
	// failsWith waits for the ImagePin to report the image unresolvable
	// for a reason saying each of want, checking meanwhile that the
	// Deployment is never written.
	failsWith := func(want ...string) {
		t.Helper()
		eventually(t, func() error {
			if img, _, err := imageOf(); err != nil || img != image {
				t.Fatalf("the Deployment's image is %q (err %v), want it left %q", img, err, image)
			}
			got, err := checked(pin)
			if err != nil {
				return err
			}
			st, _, err := entryFor(got, image, "web", "app")
			if err != nil {
				return err
			}
			for _, w := range append([]string{"registry " + reg.Host}, want...) {
				if !strings.Contains(st.Error, w) {
					return fmt.Errorf("status.images[].error = %q, want it to say %q", st.Error, w)
				}
			}
			if st.Digest != "" {
				return fmt.Errorf("status.images[].digest = %s, want none: nothing was ever resolved", st.Digest)
			}
			if err := conditionIs(got, imagesv1alpha1.ConditionReady, metav1.ConditionFalse, imagesv1alpha1.ReasonResolutionFailed); err != nil {
				return err
			}
			if c := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady); !strings.Contains(c.Message, "not trusted") {
				return fmt.Errorf("Ready message %q does not say the registry's answer is not trusted", c.Message)
			}
			return nil
		})
	}

	// HEAD without a digest, and a manifest that does not match the digest
	// its GET advertises: before the fix, the corrupt content's digest was
	// pinned.
	faults.Set(faulttest.Faults{OmitHeadDigest: true, CorruptManifest: true})
	create(t, pin)
	failsWith("does not match "+good, corrupt, "not trusted")

	// A malformed HEAD digest, and a GET whose header names another digest.
	faults.Set(faulttest.Faults{HeadDigest: "sha256:abc", GetDigest: other})
	failsWith(`malformed Docker-Content-Digest "sha256:abc"`, "does not match "+other)

	// The registry answers properly: the right digest is pinned, once.
	faults.Set(faulttest.Faults{})
	eventually(t, func() error {
		img, _, err := imageOf()
		if err != nil {
			return err
		}
		if img != image+"@"+good {
			return fmt.Errorf("image %q, want %q", img, image+"@"+good)
		}
		return nil
	})
	if _, gen, err := imageOf(); err != nil || gen != 2 {
		t.Fatalf("Deployment generation %d (err %v), want 2: one write, of the right digest", gen, err)
	}
	if n := faults.Count("GET", "/manifests/"); n > 20 {
		t.Errorf("%d manifest GETs in about 30 s at a 10 s interval, want a few", n)
	}
}

// An image of a registry outside --allowed-registries is reported
// unresolvable with the reason, and nothing is sent to its registry; the
// allowed registry's image resolves as usual. The ImagePin lives only in
// memory and is checked by a reconciler with its own resolver, so the
// shared manager (whose resolver allows everything) never sees it.
func TestImageOfARegistryNotAllowedIsUnresolvable(t *testing.T) {
	t.Parallel()
	ctx := context.Background()
	ns := namespace(t)
	metrics := registry.NewMetrics(nil)
	limited, err := registry.New(registry.Options{
		InsecureRegistries: []string{reg.Host}, AllowedRegistries: []string{reg.Host},
		Timeout: 3 * time.Second, Metrics: metrics,
	})
	if err != nil {
		t.Fatal(err)
	}
	good := reg.Push(t, "allowed/app:v1")
	allowed, refused := reg.Image("allowed/app:v1"), "evil.example.com/team/app:v1"
	create(t, deployment(ns, "mixed", withLabels("app", "mixed"), withImage("app", allowed), withImage("side", refused)))

	pin := imagePin(ns, "mixed", selecting("app", "mixed"), func(p *imagesv1alpha1.ImagePin) {
		p.Generation = 1
		p.Spec.Interval = &metav1.Duration{Duration: time.Minute}
	})
	r := &ImagePinReconciler{Client: cached, Resolver: limited, Keychains: &registry.Keychains{Reader: cached}, Pods: podStore, Clock: clocktesting.NewFakePassiveClock(time.Now())}
	got := pin.DeepCopy()
	eventually(t, func() error {
		got.Status = imagesv1alpha1.ImagePinStatus{}
		if _, err := r.reconcile(ctx, pin, &got.Status); err != nil {
			return err
		}
		if got.Status.Summary.Workloads != 1 {
			return fmt.Errorf("summary.workloads = %d, want 1 (the cache may not hold the Deployment yet)", got.Status.Summary.Workloads)
		}
		return nil
	})

	want := "registry evil.example.com is not in --allowed-registries; not contacted"
	st, w, err := entryFor(got, refused, "mixed", "side")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(st.Error, want) || st.Digest != "" {
		t.Errorf("refused image: error %q, digest %q; want %q and no digest", st.Error, st.Digest, want)
	}
	if err := driftIs(w, imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftUnresolvable); err != nil {
		t.Error(err)
	}
	if st, _, err := entryFor(got, allowed, "mixed", "app"); err != nil || string(st.Digest) != good || st.Error != "" {
		t.Errorf("allowed image: %+v (err %v), want %s resolved", st, err, good)
	}
	if err := conditionIs(got, imagesv1alpha1.ConditionReady, metav1.ConditionFalse, imagesv1alpha1.ReasonResolutionFailed); err != nil {
		t.Error(err)
	}
	if c := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionReady); c == nil || !strings.Contains(c.Message, want) {
		t.Errorf("Ready condition %+v does not say why", c)
	}
	for _, m := range []string{"GET", "HEAD"} {
		if n := testutil.ToFloat64(metrics.Requests.WithLabelValues("evil.example.com", m, "error")); n != 0 {
			t.Errorf("%v %s requests tried against evil.example.com", n, m)
		}
	}
}
