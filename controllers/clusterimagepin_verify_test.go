package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// Issue 18, for a ClusterImagePin: its key references must name their
// namespace (Verified=False, VerifyConfigError naming the field, and
// nothing written); an unsigned digest is drift Unverified and not
// pinned; once signed (cosign's legacy layout) it is pinned.
func TestClusterImagePinPinsOnlyWhatIsSigned(t *testing.T) {
	ctx := context.Background()
	label := "verify-" + strings.ToLower(t.Name()[len(t.Name())-8:])
	image := reg.Image("cluster-verify/app:v1")
	digest := reg.Push(t, "cluster-verify/app:v1")
	ns := labelledNamespace(t, "imagepin-test", label)
	create(t, deployment(ns, "web", withLabels("app", "web"), withImage("app", image)))

	key := registrytest.NewSigningKey(t)
	create(t, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "keys"},
		Data: map[string][]byte{"cosign.pub": key.PublicPEM}})

	cp := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "signed-" + label}}
	cp.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"imagepin-test": label}}
	cp.Spec.Mode = imagesv1alpha1.ModePin
	cp.Spec.Interval = &metav1.Duration{Duration: 10e9}
	cp.Spec.Verify = &imagesv1alpha1.VerifySpec{Keys: []imagesv1alpha1.KeySource{{SecretKeyRef: &imagesv1alpha1.ObjectKeyRef{Name: "keys", Key: "cosign.pub"}}}}
	create(t, cp)
	t.Cleanup(func() { _ = k8s.Delete(ctx, cp) })

	verified := func(status metav1.ConditionStatus, reason, says string) func() error {
		return func() error {
			var got imagesv1alpha1.ClusterImagePin
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(cp), &got); err != nil {
				return err
			}
			c := meta.FindStatusCondition(got.Status.Conditions, imagesv1alpha1.ConditionVerified)
			if c == nil || c.Status != status || c.Reason != reason || c.ObservedGeneration != got.Generation || !strings.Contains(c.Message, says) {
				return fmt.Errorf("Verified = %+v, want %s %s saying %q", c, status, reason, says)
			}
			return nil
		}
	}
	eventually(t, verified(metav1.ConditionFalse, imagesv1alpha1.ReasonVerifyConfigError, "spec.verify.keys[0].secretKeyRef.namespace"))
	if got, _ := imageOfDeployment(ns, "web"); got != image {
		t.Fatalf("written without a key to verify with: %s", got)
	}

	// With the namespace named: the digest is unsigned, reported, not
	// written.
	patchClusterPin(t, cp, func(cp *imagesv1alpha1.ClusterImagePin) {
		cp.Spec.Verify.Keys[0].SecretKeyRef.Namespace = ns
	})
	eventually(t, verified(metav1.ConditionFalse, imagesv1alpha1.ReasonUnverified, image+"@"+digest+": Unsigned"))
	eventually(t, func() error {
		var got imagesv1alpha1.ClusterImagePin
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(cp), &got); err != nil {
			return err
		}
		if len(got.Status.Images) != 1 || len(got.Status.Images[0].Workloads) != 1 || !containsReason(got.Status.Images[0].Workloads[0].Drift, imagesv1alpha1.DriftUnverified) {
			return fmt.Errorf("images %+v, want web's container Unverified", got.Status.Images)
		}
		return nil
	})
	if got, _ := imageOfDeployment(ns, "web"); got != image {
		t.Fatalf("an unsigned digest was written: %s", got)
	}

	// Signed: pinned at the next tick.
	reg.SignLegacy(t, "cluster-verify/app", digest, key)
	eventually(t, func() error {
		got, err := imageOfDeployment(ns, "web")
		if err != nil {
			return err
		}
		if got != image+"@"+digest {
			return fmt.Errorf("web names %s", got)
		}
		return nil
	})
	eventually(t, verified(metav1.ConditionTrue, imagesv1alpha1.ReasonSignaturesVerified, "1 digest verified"))
}

func patchClusterPin(t *testing.T, cp *imagesv1alpha1.ClusterImagePin, change func(*imagesv1alpha1.ClusterImagePin)) {
	t.Helper()
	var got imagesv1alpha1.ClusterImagePin
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(cp), &got); err != nil {
		t.Fatal(err)
	}
	before := got.DeepCopy()
	change(&got)
	if err := k8s.Patch(context.Background(), &got, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
}
