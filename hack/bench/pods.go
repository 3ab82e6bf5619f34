package main

import (
	"context"
	"fmt"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// addPods gives each Deployment what kube-controller-manager and a kubelet
// would (no controller-manager runs for 1–6, and none could at 10,000
// Deployments on this machine): a ReplicaSet it controls, and
// --pods-per-deployment Running pods of it whose status names the digest
// its image runs. The manager caches all of them, as in a real cluster.
func (b *bench) addPods(ctx context.Context, deployments []*appsv1.Deployment) error {
	n := b.o.podsPerDeployment
	if n <= 0 {
		return nil
	}
	sets := make([]client.Object, len(deployments))
	for i, d := range deployments {
		if err := b.knowUID(ctx, d); err != nil {
			return err
		}
		sets[i] = replicaSetOf(d, int32(n))
	}
	if err := b.createAll(ctx, sets); err != nil {
		return err
	}
	for _, rs := range sets {
		if err := b.knowUID(ctx, rs); err != nil {
			return err
		}
	}
	var pods []client.Object
	for i, d := range deployments {
		for j := range n {
			pods = append(pods, podOf(d, sets[i].(*appsv1.ReplicaSet), j))
		}
	}
	if err := b.createAll(ctx, pods); err != nil {
		return err
	}
	return b.forAll(ctx, pods, func(ctx context.Context, o client.Object) error {
		p := o.(*corev1.Pod)
		c := p.Spec.Containers[0]
		p.Status = corev1.PodStatus{
			Phase: corev1.PodRunning, HostIP: "10.0.0.1", PodIP: "10.1.0.1",
			ContainerStatuses: []corev1.ContainerStatus{{
				Name: c.Name, Image: c.Image, ImageID: c.Image, Ready: true, Started: new(true),
				State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
			}},
		}
		return b.k8s.Status().Update(ctx, p)
	})
}

func replicaSetOf(d *appsv1.Deployment, replicas int32) *appsv1.ReplicaSet {
	const hash = "5d8f7c9b4"
	t := *d.Spec.Template.DeepCopy()
	t.Labels["pod-template-hash"] = hash
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: d.Namespace, Name: d.Name + "-" + hash, Labels: t.Labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(d, appsv1.SchemeGroupVersion.WithKind("Deployment"))},
		},
		Spec: appsv1.ReplicaSetSpec{
			Replicas: &replicas,
			Selector: &metav1.LabelSelector{MatchLabels: t.Labels},
			Template: t,
		},
	}
}

func podOf(d *appsv1.Deployment, rs *appsv1.ReplicaSet, i int) *corev1.Pod {
	spec := *rs.Spec.Template.Spec.DeepCopy()
	spec.NodeName = fmt.Sprintf("bench-node-%d", i%3)
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: d.Namespace, Name: fmt.Sprintf("%s-%05d", rs.Name, i), Labels: rs.Spec.Template.Labels,
			OwnerReferences: []metav1.OwnerReference{*metav1.NewControllerRef(rs, appsv1.SchemeGroupVersion.WithKind("ReplicaSet"))},
		},
		Spec: spec,
	}
}

// forAll runs f on each of objs with a few workers; the first error wins.
func (b *bench) forAll(ctx context.Context, objs []client.Object, f func(context.Context, client.Object) error) error {
	work := make(chan client.Object)
	var mu sync.Mutex
	var firstErr error
	var wg sync.WaitGroup
	for range 16 {
		wg.Go(func() {
			for o := range work {
				if err := f(ctx, o); err != nil {
					mu.Lock()
					if firstErr == nil {
						firstErr = fmt.Errorf("%T %s/%s: %w", o, o.GetNamespace(), o.GetName(), err)
					}
					mu.Unlock()
				}
			}
		})
	}
	for _, o := range objs {
		work <- o
	}
	close(work)
	wg.Wait()
	return firstErr
}

// knowUID reads o when createAll found it there already: an owner
// reference needs its UID.
func (b *bench) knowUID(ctx context.Context, o client.Object) error {
	if o.GetUID() != "" {
		return nil
	}
	return b.k8s.Get(ctx, client.ObjectKeyFromObject(o), o)
}
