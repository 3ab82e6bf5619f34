package controllers

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// labelledNamespace creates a fresh namespace with labels.
func labelledNamespace(t *testing.T, kv ...string) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "cipin-", Labels: map[string]string{}}}
	for i := 0; i+1 < len(kv); i += 2 {
		ns.Labels[kv[i]] = kv[i+1]
	}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	return ns.Name
}

func imageOfDeployment(ns, name string) (string, error) {
	var d appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &d); err != nil {
		return "", err
	}
	return d.Spec.Template.Spec.Containers[0].Image, nil
}

// Issue 16: one ClusterImagePin in Pin mode pins Deployments in the
// namespaces it selects, and in one created afterwards; leaves an excluded
// namespace, and one it does not select, alone; yields to an ImagePin of
// a namespace, in Observe mode, where there is one; and reports every
// namespace in one status, each workload naming its namespace.
func TestClusterImagePinPinsEverySelectedNamespace(t *testing.T) {
	ctx := context.Background()
	// A label of its own, so that other tests' namespaces stay out.
	label := "pin-" + strings.ToLower(t.Name()[len(t.Name())-8:])
	image := reg.Image("cluster/app:v1")
	digest := reg.Push(t, "cluster/app:v1")
	pinned := image + "@" + digest

	var selected []string
	for range 3 {
		ns := labelledNamespace(t, "imagepin-test", label)
		selected = append(selected, ns)
		create(t, deployment(ns, "web", withLabels("app", "web"), withImage("app", image)))
	}
	excluded := labelledNamespace(t, "imagepin-test", label)
	create(t, deployment(excluded, "web", withLabels("app", "web"), withImage("app", image)))
	other := labelledNamespace(t)
	create(t, deployment(other, "web", withLabels("app", "web"), withImage("app", image)))
	optedOut := labelledNamespace(t, "imagepin-test", label)
	create(t, deployment(optedOut, "web", withLabels("app", "web"), withImage("app", image)),
		imagePin(optedOut, "mine", selecting("app", "web")))

	cp := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "platform-" + label}}
	cp.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"imagepin-test": label}}
	cp.Spec.ExcludeNamespaces = []string{excluded}
	cp.Spec.Mode = imagesv1alpha1.ModePin
	create(t, cp)
	t.Cleanup(func() { _ = k8s.Delete(ctx, cp) })

	pinnedIn := func(namespaces ...string) func() error {
		return func() error {
			for _, ns := range namespaces {
				got, err := imageOfDeployment(ns, "web")
				if err != nil {
					return err
				}
				if got != pinned {
					return fmt.Errorf("%s/web names %s, want %s", ns, got, pinned)
				}
			}
			return nil
		}
	}
	eventually(t, pinnedIn(selected...))

	// A namespace created afterwards is picked up.
	later := labelledNamespace(t, "imagepin-test", label)
	create(t, deployment(later, "web", withLabels("app", "web"), withImage("app", image)))
	eventually(t, pinnedIn(later))

	// One status for all: every selected namespace, each workload naming
	// its own; the opted-out namespace yields to its ImagePin.
	all := append(slices.Clone(selected), later, optedOut)
	eventually(t, func() error {
		var got imagesv1alpha1.ClusterImagePin
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(cp), &got); err != nil {
			return err
		}
		st := got.Status
		if st.ObservedGeneration != got.Generation {
			return fmt.Errorf("observedGeneration %d", st.ObservedGeneration)
		}
		if c := meta.FindStatusCondition(st.Conditions, imagesv1alpha1.ConditionReady); c == nil || c.Status != metav1.ConditionTrue {
			return fmt.Errorf("Ready is %v", c)
		}
		if st.Summary.Namespaces != int32(len(all)) || st.Summary.Workloads != int32(len(all)) {
			return fmt.Errorf("summary %+v, want %d namespaces and workloads", st.Summary, len(all))
		}
		var names []string
		for _, n := range st.Namespaces {
			names = append(names, n.Name)
			if n.Name == optedOut && !slices.Equal(n.YieldedTo, []string{"mine"}) {
				return fmt.Errorf("namespace %s yields to %v, want [mine]", n.Name, n.YieldedTo)
			}
		}
		slices.Sort(names)
		want := slices.Sorted(slices.Values(all))
		if !slices.Equal(names, want) {
			return fmt.Errorf("namespaces %v, want %v", names, want)
		}
		if len(st.Images) != 1 || len(st.Images[0].Workloads) != len(all) {
			return fmt.Errorf("images %+v", st.Images)
		}
		for _, w := range st.Images[0].Workloads {
			if !slices.Contains(all, w.Namespace) {
				return fmt.Errorf("a workload of namespace %q is listed", w.Namespace)
			}
		}
		return nil
	})

	// Left alone: the excluded namespace, the one not selected, and the
	// one whose ImagePin (Observe) wins.
	for _, ns := range []string{excluded, other, optedOut} {
		if got, err := imageOfDeployment(ns, "web"); err != nil || got != image {
			t.Errorf("%s/web names %s (%v), want it left as %s", ns, got, err, image)
		}
	}

	// Relabelled out: the namespace leaves the status.
	var n corev1.Namespace
	if err := k8s.Get(ctx, client.ObjectKey{Name: later}, &n); err != nil {
		t.Fatal(err)
	}
	before := n.DeepCopy()
	delete(n.Labels, "imagepin-test")
	if err := k8s.Patch(ctx, &n, client.MergeFrom(before)); err != nil {
		t.Fatal(err)
	}
	eventually(t, func() error {
		var got imagesv1alpha1.ClusterImagePin
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(cp), &got); err != nil {
			return err
		}
		if got.Status.Summary.Namespaces != int32(len(all)-1) {
			return fmt.Errorf("%d namespaces, want %d once %s is relabelled", got.Status.Summary.Namespaces, len(all)-1, later)
		}
		return nil
	})
}

// An ImagePin of the namespace in Pin mode holds its own override against
// a ClusterImagePin in Follow: the namespaced one wins.
func TestNamespacedPinHoldsItsDigestAgainstAClusterImagePin(t *testing.T) {
	label := "hold-" + strings.ToLower(t.Name()[len(t.Name())-6:])
	image := reg.Image("cluster/held:v1")
	old := reg.Push(t, "cluster/held:v1")
	reg.Push(t, "cluster/held:v1") // the tag moves on
	ns := labelledNamespace(t, "imagepin-test", label)
	create(t, deployment(ns, "web", withLabels("app", "web"), withImage("app", image)),
		imagePin(ns, "hold", selecting("app", "web"), func(p *imagesv1alpha1.ImagePin) {
			p.Spec.Mode = imagesv1alpha1.ModePin
			p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: image, Digest: imagesv1alpha1.Digest(old)}}
		}))
	cp := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "follow-" + label}}
	cp.Spec.NamespaceSelector = &metav1.LabelSelector{MatchLabels: map[string]string{"imagepin-test": label}}
	cp.Spec.Mode = imagesv1alpha1.ModeFollow
	create(t, cp)
	t.Cleanup(func() { _ = k8s.Delete(context.Background(), cp) })
	eventually(t, func() error {
		got, err := imageOfDeployment(ns, "web")
		if err != nil {
			return err
		}
		if got != image+"@"+old {
			return fmt.Errorf("web names %s, want the override %s", got, old)
		}
		var c imagesv1alpha1.ClusterImagePin
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(cp), &c); err != nil {
			return err
		}
		if len(c.Status.Namespaces) != 1 || !slices.Equal(c.Status.Namespaces[0].YieldedTo, []string{"hold"}) {
			return fmt.Errorf("breakdown %+v, want %s yielding to hold", c.Status.Namespaces, ns)
		}
		return nil
	})
	// It stays so: the ClusterImagePin's checks do not take turns with
	// the ImagePin's.
	var d appsv1.Deployment
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web"}, &d); err != nil {
		t.Fatal(err)
	}
	gen := d.Generation
	// Ask the ClusterImagePin to check again (a spec change, patched: its
	// status is written meanwhile), and wait until it has.
	patchClusterPin(t, cp, func(c *imagesv1alpha1.ClusterImagePin) {
		c.Spec.Interval = &metav1.Duration{Duration: 2 * c.Spec.Interval.Duration}
	})
	eventually(t, func() error {
		var got imagesv1alpha1.ClusterImagePin
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(cp), &got); err != nil {
			return err
		}
		if got.Status.ObservedGeneration != got.Generation {
			return fmt.Errorf("not checked since the change")
		}
		return nil
	})
	if err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web"}, &d); err != nil {
		t.Fatal(err)
	}
	if d.Generation != gen {
		t.Errorf("the Deployment was written (generation %d → %d) although its ImagePin holds it", gen, d.Generation)
	}
}
