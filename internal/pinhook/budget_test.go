package pinhook

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	admissionv1 "k8s.io/api/admission/v1"
	admissionregistrationv1 "k8s.io/api/admissionregistration/v1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/util/retry"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
	"sigs.k8s.io/controller-runtime/pkg/webhook/admission"
	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/registry/faulttest"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
	"github.com/imagepin/imagepin/internal/testenv"
)

// blackhole is a registry that accepts every connection and request and
// never answers, for the tests that need the API server (needCluster
// starts it and trusts it over plain HTTP).
var blackhole *faulttest.Proxy

// startBlackhole puts a fault proxy that holds every request in front of
// an in-process registry (which lives as long as the test process).
func startBlackhole() (*faulttest.Proxy, error) {
	upstream := registrytest.New()
	p, err := faulttest.Start(faulttest.Options{Upstream: "http://" + upstream.Host})
	if err != nil {
		upstream.Close()
		return nil, err
	}
	p.Set(faulttest.Faults{Delay: time.Hour})
	return p, nil
}

// webhookTimeout reads the timeoutSeconds the API server is configured
// with, from config/webhook.
func webhookTimeout(t *testing.T) time.Duration {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(testenv.RepoRoot(), "config", "webhook", "manifests.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg admissionregistrationv1.MutatingWebhookConfiguration
	if err := yaml.Unmarshal(raw, &cfg); err != nil {
		t.Fatal(err)
	}
	for _, w := range cfg.Webhooks {
		if w.ClientConfig.Service != nil && w.ClientConfig.Service.Path != nil && *w.ClientConfig.Service.Path == Path && w.TimeoutSeconds != nil {
			return time.Duration(*w.TimeoutSeconds) * time.Second
		}
	}
	t.Fatalf("config/webhook has no timeoutSeconds for %s", Path)
	return 0
}

// Issue 13 item 7: three uncached images on a blackholed registry are
// resolved concurrently under one budget for the whole request, so the
// answer comes within the budget (it took one timeout per image, in a row),
// and the ImagePin's policy holds: Fail refuses, Ignore warns, naming each
// image. The default budget leaves the API server's timeout room to spare.
func TestBudgetBoundsTheWholeRequest(t *testing.T) {
	if timeout := webhookTimeout(t); DefaultBudget > timeout/2 {
		t.Fatalf("DefaultBudget %s leaves too little of the webhook's timeoutSeconds (%s)", DefaultBudget, timeout)
	}
	hole, err := startBlackhole()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hole.Close)
	resolver, err := registry.New(registry.Options{InsecureRegistries: []string{hole.Host}, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	pins := []client.Object{
		&imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: hookNS, Name: "strict"}, Spec: imagesv1alpha1.ImagePinSpec{
			Selector:      &metav1.LabelSelector{MatchLabels: map[string]string{"policy": "fail"}},
			Mode:          imagesv1alpha1.ModePin,
			FailurePolicy: imagesv1alpha1.FailurePolicyFail,
		}},
		&imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: hookNS, Name: "lenient"}, Spec: imagesv1alpha1.ImagePinSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"policy": "ignore"}},
			Mode:     imagesv1alpha1.ModePin,
		}},
	}
	c := fake.NewClientBuilder().WithScheme(testenv.Scheme()).WithObjects(pins...).Build()
	const budget = time.Second
	h := &Handler{Reader: c, Resolver: resolver, Keychains: &registry.Keychains{Reader: c}, Budget: budget}

	for _, policy := range []string{"fail", "ignore"} {
		t.Run(policy, func(t *testing.T) {
			var images []string
			for _, repo := range []string{"a", "b", "c"} {
				images = append(images, fmt.Sprintf("%s/%s-%s:v1", hole.Host, repo, policy))
			}
			d := deployment(hookNS, "web", "web", images...)
			d.Labels["policy"] = policy
			req := admissionRequest(t, "Deployment", d)
			start := time.Now()
			resp := h.Handle(context.Background(), req)
			// One budget, not one per image: the three resolutions ran side
			// by side. (Allow for a loaded machine, not for a second image.)
			if took := time.Since(start); took > budget+budget/2 {
				t.Fatalf("answered after %s, want within the budget of %s", took, budget)
			}
			if len(resp.Patches) != 0 {
				t.Fatalf("patched %+v, want nothing pinned", resp.Patches)
			}
			switch policy {
			case "fail":
				if resp.Allowed || resp.Result == nil || !strings.Contains(resp.Result.Message, "failurePolicy: Fail") {
					t.Fatalf("allowed=%v result=%+v, want a refusal under failurePolicy: Fail", resp.Allowed, resp.Result)
				}
				for _, img := range images {
					if !strings.Contains(resp.Result.Message, img) {
						t.Fatalf("the refusal %q does not name %s", resp.Result.Message, img)
					}
				}
			case "ignore":
				if !resp.Allowed {
					t.Fatalf("refused under failurePolicy: Ignore: %+v", resp.Result)
				}
				ws := strings.Join(resp.Warnings, "\n")
				for _, img := range images {
					if !strings.Contains(ws, "admitted unpinned, "+img) {
						t.Fatalf("warnings %q do not name %s", ws, img)
					}
				}
				if !strings.Contains(ws, "budget") {
					t.Fatalf("warnings %q do not say the budget ran out", ws)
				}
			}
		})
	}
}

// admissionRequest is a CREATE of obj as the API server sends it.
func admissionRequest(t *testing.T, kind string, obj runtime.Object) admission.Request {
	t.Helper()
	raw, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	return admission.Request{AdmissionRequest: admissionv1.AdmissionRequest{
		UID: "uid", Kind: requestKind(kind), Namespace: hookNS, Operation: admissionv1.Create,
		Object: runtime.RawExtension{Raw: raw},
	}}
}

// Issue 13 item 7: through the API server (timeoutSeconds 5, the webhook's
// own failurePolicy Ignore), three uncached images on a blackholed
// registry are answered before the API server gives up: an ImagePin's
// failurePolicy: Fail refuses the Deployment, and under Ignore it is
// admitted unpinned with a warning per image. Before, the webhook took 2 s
// per image in a row, the API server gave up at 5 s and admitted silently.
func TestBlackholedRegistryAnsweredInsideTheWebhookTimeout(t *testing.T) {
	for _, tc := range []struct {
		app    string
		policy imagesv1alpha1.FailurePolicy
	}{
		{"strict", imagesv1alpha1.FailurePolicyFail},
		{"lenient", imagesv1alpha1.FailurePolicyIgnore},
	} {
		t.Run(tc.app, func(t *testing.T) {
			ns := namespace(t)
			pinFor(t, ns, tc.app, func(p *imagesv1alpha1.ImagePin) { p.Spec.FailurePolicy = tc.policy })
			var images []string
			for _, repo := range []string{"a", "b", "c"} {
				images = append(images, blackhole.Host+"/"+ns+"/"+repo+":v1")
			}
			d := deployment(ns, tc.app, tc.app, images...)
			warnings.take()
			err := k8s.Create(context.Background(), d)
			if tc.policy == imagesv1alpha1.FailurePolicyFail {
				if err == nil {
					t.Fatal("created: the API server gave up on the webhook and admitted the Deployment, want a refusal")
				}
				for _, img := range images {
					if !strings.Contains(err.Error(), "failurePolicy: Fail") || !strings.Contains(err.Error(), img) {
						t.Fatalf("refusal %q does not name the policy and %s", err, img)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for i, c := range d.Spec.Template.Spec.Containers {
				if c.Image != images[i] {
					t.Fatalf("stored %s, want %s admitted unpinned", c.Image, images[i])
				}
			}
			ws := strings.Join(warnings.take(), "\n")
			for _, img := range images {
				if !strings.Contains(ws, "admitted unpinned, "+img) {
					t.Fatalf("warnings %q do not name %s: the webhook did not answer in time", ws, img)
				}
			}
		})
	}
}

// Issue 13 item 7: an override applies to an image that already carries a
// digest, as the controller applies it. A manifest pinned by CI to the
// tag's newest build, deployed during an override rollback, is stored with
// the override's digest (before, it was admitted as it came: the rollout
// went forward, then back when the controller applied the override).
func TestOverrideAppliesToAnImagePinnedByCI(t *testing.T) {
	ns := namespace(t)
	rolledBackTo := reg.Push(t, "ovr/app:v1")
	ciBuild := reg.Push(t, "ovr/app:v1")
	image := reg.Image("ovr/app:v1")
	pinFor(t, ns, "ovr", func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: image, Digest: imagesv1alpha1.Digest(rolledBackTo)}}
	})
	d := deployment(ns, "ovr", "ovr", image+"@"+ciBuild)
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != image+"@"+rolledBackTo {
		t.Fatalf("stored %s, want the override's digest %s", img, rolledBackTo)
	}
	// CI deploys its pinned manifest again: still the override, no rollout.
	// (kube-controller-manager writes the Deployment too: retry on a
	// conflict, as kubectl does.)
	var got appsv1.Deployment
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
			return err
		}
		got.Spec.Template.Spec.Containers[0].Image = image + "@" + ciBuild
		return k8s.Update(context.Background(), &got)
	})
	if err != nil {
		t.Fatal(err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != image+"@"+rolledBackTo {
		t.Fatalf("re-deployed CI manifest stored %s, want the override's digest %s", img, rolledBackTo)
	}
	if got.Generation != 1 {
		t.Fatalf("generation %d, want 1: the override held, nothing rolled out", got.Generation)
	}
}

// Issue 20 item 3: an override whose digest the controller found gone
// from the registry (garbage collected) is refused under failurePolicy
// Fail, and under Ignore the Deployment is admitted as it came, with a
// warning: a pod would fail to pull the digest.
func TestAnOverrideToACollectedDigestIsRefusedOrWarned(t *testing.T) {
	for _, tc := range []struct {
		app    string
		policy imagesv1alpha1.FailurePolicy
	}{
		{"gone-strict", imagesv1alpha1.FailurePolicyFail},
		{"gone-lenient", imagesv1alpha1.FailurePolicyIgnore},
	} {
		t.Run(tc.app, func(t *testing.T) {
			ctx := context.Background()
			ns := namespace(t)
			repo := tc.app + "/app"
			image := reg.Image(repo + ":v1")
			collected := reg.Push(t, repo+":v1")
			reg.Push(t, repo+":v1")
			reg.Delete(t, repo, collected)
			pinFor(t, ns, tc.app, func(p *imagesv1alpha1.ImagePin) {
				p.Spec.FailurePolicy = tc.policy
				p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: image, Digest: imagesv1alpha1.Digest(collected)}}
			})
			// What the controller's check of the override learnt, with
			// the credentials the Deployment's pods have.
			kc, err := (&registry.Keychains{Reader: k8s}).ForPod(ctx, ns, &corev1.PodSpec{})
			if err != nil {
				t.Fatal(err)
			}
			if v, err := resolver.Available(ctx, registry.AvailabilityRequest{Image: image, Digest: collected, Keychain: kc}); err != nil || v.Available {
				t.Fatalf("the collected digest: %+v, %v; want gone", v, err)
			}

			d := deployment(ns, tc.app, tc.app, image)
			warnings.take()
			err = k8s.Create(ctx, d)
			if tc.policy == imagesv1alpha1.FailurePolicyFail {
				if err == nil || !strings.Contains(err.Error(), "no longer in the registry") || !strings.Contains(err.Error(), collected) {
					t.Fatalf("created (%v): want a refusal naming the collected digest %s", err, collected)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if img := d.Spec.Template.Spec.Containers[0].Image; img != image {
				t.Fatalf("stored %s, want %s as it came", img, image)
			}
			if ws := strings.Join(warnings.take(), "\n"); !strings.Contains(ws, "admitted unpinned") || !strings.Contains(ws, collected) {
				t.Fatalf("warnings %q do not name the collected digest %s", ws, collected)
			}
		})
	}
}

// The same, where this replica's resolver has no verdict (another replica
// ran the check, or this one restarted): the ImagePin's status history
// says the digest is gone, and the webhook reads it there.
func TestAnOverrideTheStatusSaysIsGoneIsRefused(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	image := reg.Image("gone-status/app:v1")
	// In the registry still: only the status says otherwise.
	held := reg.Push(t, "gone-status/app:v1")
	pinFor(t, ns, "gone-status", func(p *imagesv1alpha1.ImagePin) {
		p.Spec.FailurePolicy = imagesv1alpha1.FailurePolicyFail
		p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: image, Digest: imagesv1alpha1.Digest(held)}}
	})
	var pin imagesv1alpha1.ImagePin
	if err := k8s.Get(ctx, client.ObjectKey{Namespace: ns, Name: "gone-status"}, &pin); err != nil {
		t.Fatal(err)
	}
	gone := false
	pin.Status.Images = []imagesv1alpha1.ImageStatus{{Image: image, History: []imagesv1alpha1.DigestRecord{
		{Digest: imagesv1alpha1.Digest(held), FirstSeen: metav1.Now(), Available: &gone, CheckedAt: ptr.To(metav1.Now())},
	}}}
	if err := k8s.Status().Update(ctx, &pin); err != nil {
		t.Fatal(err)
	}
	// The webhook reads ImagePins from its cache: a dry run until it has
	// the status, then the create itself.
	d := deployment(ns, "gone-status", "gone-status", image)
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := k8s.Create(ctx, d.DeepCopy(), client.DryRunAll)
		if err != nil && strings.Contains(err.Error(), "no longer in the registry") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("a dry run still answered %v after 10s: the status's verdict was not read", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if err := k8s.Create(ctx, d); err == nil || !strings.Contains(err.Error(), held) {
		t.Fatalf("created (%v): want a refusal naming %s", err, held)
	}
}
