package pinning

import (
	"context"
	"fmt"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// rolloutImage reads the image of a Rollout's first container.
func rolloutImage(t *testing.T, ns, name string) (string, error) {
	t.Helper()
	ro := &unstructured.Unstructured{}
	ro.SetAPIVersion("argoproj.io/v1alpha1")
	ro.SetKind("Rollout")
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, ro); err != nil {
		return "", err
	}
	cs, _, _ := unstructured.NestedSlice(ro.Object, "spec", "template", "spec", "containers")
	if len(cs) == 0 {
		return "", fmt.Errorf("no containers")
	}
	img, _ := cs[0].(map[string]any)["image"].(string)
	return img, nil
}

// replicaSetsOf counts the ReplicaSets Argo Rollouts made for a Rollout.
func replicaSetsOf(t *testing.T, ns string, uid string) int {
	t.Helper()
	var rss appsv1.ReplicaSetList
	if err := k8s.List(context.Background(), &rss, client.InNamespace(ns)); err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, rs := range rss.Items {
		if ref := metav1.GetControllerOf(&rs); ref != nil && string(ref.UID) == uid {
			n++
		}
	}
	return n
}

// Issue 14 item 2: a Rollout under Follow, run by the real Argo Rollouts
// controller, is pinned, and rolls out exactly once per real digest
// change (one new ReplicaSet), none for a push of identical content.
func TestRolloutFollowsOncePerChangeThroughArgoRollouts(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("argo/app:v1")
	a := reg.Push(t, "argo/app:v1")
	ro := testenv.Rollout(ns, "canary", image, 1)
	create(t, ro)
	uid := string(ro.GetUID())
	pin := imagePin(ns, "canary", imagesv1alpha1.ModeFollow, func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{imagesv1alpha1.KindRollout}
	})
	create(t, pin)
	eventually(t, 30*time.Second, func() error {
		img, err := rolloutImage(t, ns, "canary")
		if err != nil {
			return err
		}
		if img != image+"@"+a {
			return fmt.Errorf("Rollout image %s, want it pinned to %s", img, a)
		}
		return nil
	})
	// Argo Rollouts makes a ReplicaSet for the pinned template (and may
	// have made one for the tag-only template before it).
	var before int
	eventually(t, 60*time.Second, func() error {
		if before = replicaSetsOf(t, ns, uid); before == 0 {
			return fmt.Errorf("Argo Rollouts made no ReplicaSet yet")
		}
		return nil
	})
	checksAfter(t, pin, time.Now())
	before = replicaSetsOf(t, ns, uid)

	b := reg.Push(t, "argo/app:v1")
	eventually(t, 45*time.Second, func() error {
		img, err := rolloutImage(t, ns, "canary")
		if err != nil {
			return err
		}
		if img != image+"@"+b {
			return fmt.Errorf("Rollout image %s, want it followed to %s", img, b)
		}
		return nil
	})
	eventually(t, 60*time.Second, func() error {
		if n := replicaSetsOf(t, ns, uid); n != before+1 {
			return fmt.Errorf("%d ReplicaSets, want %d: one rollout for the change", n, before+1)
		}
		return nil
	})
	// The same content pushed again: no rollout.
	reg.Tag(t, "argo/app:v1", b)
	checksAfter(t, pin, time.Now())
	if n := replicaSetsOf(t, ns, uid); n != before+1 {
		t.Fatalf("%d ReplicaSets after a push of identical content, want %d", n, before+1)
	}
	got := getPin(t, pin)
	if got.Status.Summary.Workloads != 1 {
		t.Fatalf("summary %+v, want the Rollout", got.Status.Summary)
	}
}
