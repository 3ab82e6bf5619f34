package pinhook

import (
	"context"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Issue 16: a ClusterImagePin in Pin mode pins at admission in the
// namespaces it selects, by the controller's rule: an ImagePin of the
// namespace that selects the workload wins, in any mode.
func TestClusterImagePinPinsAtAdmission(t *testing.T) {
	needCluster(t)
	ctx := context.Background()
	labelled := func(labels map[string]string) string {
		ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "hook-cluster-", Labels: labels}}
		if err := k8s.Create(ctx, ns); err != nil {
			t.Fatal(err)
		}
		return ns.Name
	}
	optIn := map[string]string{"imagepin-hook-test": "cluster"}
	// Created in this order, so that once the webhook's cache shows the
	// last one's labels (the probe below) it holds the others too.
	optedOut, other, pinned := labelled(optIn), labelled(nil), labelled(optIn)
	if err := k8s.Create(ctx, &imagesv1alpha1.ImagePin{
		ObjectMeta: metav1.ObjectMeta{Namespace: optedOut, Name: "mine"},
		Spec: imagesv1alpha1.ImagePinSpec{
			Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "web"}},
			Mode:     imagesv1alpha1.ModeObserve,
		},
	}); err != nil {
		t.Fatal(err)
	}
	// And once it pins for an ImagePin created after "mine", it holds
	// "mine".
	pinFor(t, optedOut, "probe")
	cp := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "hook-platform"}}
	cp.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: optIn}
	cp.Spec.Mode = imagesv1alpha1.ModePin
	if err := k8s.Create(ctx, cp); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, cp) })
	digest := reg.Push(t, "cluster/web:v1")
	image := reg.Image("cluster/web:v1")

	// Until the webhook's cache holds the ClusterImagePin, a dry run is
	// not pinned: probe until it is.
	probe := deployment(pinned, "web", "web", image)
	deadline := time.Now().Add(20 * time.Second)
	for {
		d := probe.DeepCopy()
		if err := k8s.Create(ctx, d, client.DryRunAll); err != nil {
			t.Fatal(err)
		}
		if strings.Contains(d.Spec.Template.Spec.Containers[0].Image, "@sha256:") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the webhook never pinned in a namespace the ClusterImagePin selects")
		}
		time.Sleep(100 * time.Millisecond)
	}
	warnings.take()

	for _, tc := range []struct {
		name, ns, want string
	}{
		{"selected namespace", pinned, image + "@" + digest},
		{"an Observe ImagePin of the namespace wins", optedOut, image},
		{"namespace not selected", other, image},
	} {
		d := deployment(tc.ns, "web", "web", image)
		if err := k8s.Create(ctx, d); err != nil {
			t.Fatal(err)
		}
		var got appsv1.Deployment
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(d), &got); err != nil {
			t.Fatal(err)
		}
		if img := got.Spec.Template.Spec.Containers[0].Image; img != tc.want {
			t.Errorf("%s: stored %s, want %s", tc.name, img, tc.want)
		}
	}
}
