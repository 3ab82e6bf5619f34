package pinhook

import (
	"context"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// verifyingPin creates an ImagePin for app=<app> with spec.verify trusting
// key, and waits until the webhook pins a signed probe with it.
func verifyingPin(t *testing.T, ns, app string, key *registrytest.SigningKey, policy imagesv1alpha1.FailurePolicy) {
	t.Helper()
	ctx := context.Background()
	if err := k8s.Create(ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app + "-keys"},
		Data: map[string][]byte{"cosign.pub": key.PublicPEM}}); err != nil {
		t.Fatal(err)
	}
	p := &imagesv1alpha1.ImagePin{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: app},
		Spec: imagesv1alpha1.ImagePinSpec{
			Selector:      &metav1.LabelSelector{MatchLabels: map[string]string{"app": app}},
			Mode:          imagesv1alpha1.ModePin,
			FailurePolicy: policy,
			Verify: &imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{
				{SecretKeyRef: &imagesv1alpha1.ObjectKeyRef{Name: app + "-keys", Key: "cosign.pub"}}}},
		},
	}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	reg.SignLegacy(t, "probe/"+app, reg.Push(t, "probe/"+app+":v1"), key)
	waitPinned(t, deployment(ns, "probe", app, reg.Image("probe/"+app+":v1")))
}

// Issue 18: with spec.verify, the webhook pins only digests that verify.
// Under failurePolicy Fail an unsigned tag is refused naming the image,
// the digest and why; a signed one is stored pinned; a re-apply of the tag
// of a workload that runs a digest which does not verify keeps that
// digest, with a warning, rather than refusing or letting the tag float.
func TestWebhookPinsOnlyVerifiedDigests(t *testing.T) {
	ctx := context.Background()
	ns := namespace(t)
	key := registrytest.NewSigningKey(t)
	verifyingPin(t, ns, "strict", key, imagesv1alpha1.FailurePolicyFail)

	unsigned := reg.Image("verify/unsigned:v1")
	unsignedDigest := reg.Push(t, "verify/unsigned:v1")
	err := k8s.Create(ctx, deployment(ns, "unsigned", "strict", unsigned))
	if err == nil {
		t.Fatal("an unsigned tag was admitted under failurePolicy Fail")
	}
	for _, want := range []string{"failurePolicy: Fail", unsigned + "@" + unsignedDigest, "did not verify", "Unsigned"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the refusal does not say %q: %v", want, err)
		}
	}

	signed := reg.Image("verify/signed:v1")
	signedDigest := reg.Push(t, "verify/signed:v1")
	reg.SignLegacy(t, "verify/signed", signedDigest, key)
	d := deployment(ns, "signed", "strict", signed)
	if err := k8s.Create(ctx, d); err != nil {
		t.Fatal(err)
	}
	if got := d.Spec.Template.Spec.Containers[0].Image; got != signed+"@"+signedDigest {
		t.Fatalf("a signed tag was stored as %s, want it pinned", got)
	}

	// Signed by another key: refused too.
	other := registrytest.NewSigningKey(t)
	foreign := reg.Image("verify/foreign:v1")
	reg.SignLegacy(t, "verify/foreign", reg.Push(t, "verify/foreign:v1"), other)
	if err := k8s.Create(ctx, deployment(ns, "foreign", "strict", foreign)); err == nil || !strings.Contains(err.Error(), "Untrusted") {
		t.Errorf("a tag signed by another key: %v, want refused as Untrusted", err)
	}

	// A workload pinned (by CI, say) to a digest that does not verify: a
	// re-apply of its tag keeps that digest, with a warning.
	legacy := deployment(ns, "legacy", "strict", unsigned+"@"+unsignedDigest)
	if err := k8s.Create(ctx, legacy); err != nil {
		t.Fatal(err)
	}
	warnings.take()
	var got appsv1.Deployment
	err = retry.RetryOnConflict(retry.DefaultRetry, func() error {
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(legacy), &got); err != nil {
			return err
		}
		got.Spec.Template.Spec.Containers[0].Image = unsigned
		got.Spec.Template.Labels["touched"] = "yes"
		return k8s.Update(ctx, &got)
	})
	if err != nil {
		t.Fatalf("a re-apply of the tag of a workload running an unverified digest was refused: %v", err)
	}
	if img := got.Spec.Template.Spec.Containers[0].Image; img != unsigned+"@"+unsignedDigest {
		t.Errorf("stored %s, want the digest it runs kept", img)
	}
	if ws := strings.Join(warnings.take(), "\n"); !strings.Contains(ws, "kept the digest the workload runs") || !strings.Contains(ws, unsignedDigest) {
		t.Errorf("warnings %q do not say the digest was kept and why", ws)
	}
}

// Under failurePolicy Ignore an unsigned tag is admitted unpinned, with a
// warning naming it.
func TestWebhookWarnsOfAnUnverifiedDigest(t *testing.T) {
	ns := namespace(t)
	verifyingPin(t, ns, "lenient", registrytest.NewSigningKey(t), imagesv1alpha1.FailurePolicyIgnore)
	unsigned := reg.Image("verify/lenient:v1")
	reg.Push(t, "verify/lenient:v1")
	d := deployment(ns, "lenient", "lenient", unsigned)
	if err := k8s.Create(context.Background(), d); err != nil {
		t.Fatal(err)
	}
	if img := d.Spec.Template.Spec.Containers[0].Image; img != unsigned {
		t.Fatalf("stored %s, want it admitted unpinned", img)
	}
	if ws := strings.Join(warnings.take(), "\n"); !strings.Contains(ws, "admitted unpinned") || !strings.Contains(ws, unsigned) || !strings.Contains(ws, "did not verify") {
		t.Errorf("warnings %q do not name the image and why", ws)
	}
}
