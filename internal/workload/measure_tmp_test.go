package workload

import (
	"context"
	"fmt"
	"os"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	fcache "k8s.io/client-go/tools/cache/testing"
)

func TestMeasureTmp(t *testing.T) {
	if os.Getenv("MEASURE") == "" {
		t.Skip()
	}
	const n = 2000
	ctrl := true
	var deps, sets, pods []kruntime.Object
	for i := range n {
		ns := fmt.Sprintf("bench-%03d", i%100)
		name := fmt.Sprintf("app-%05d", i)
		labels := map[string]string{"app": name, "tier": "web"}
		d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID(fmt.Sprintf("%08d-aaaa-bbbb-cccc-dddddddddddd", i)), ResourceVersion: fmt.Sprint(1000 + i), Generation: 1, Labels: labels, CreationTimestamp: metav1.Now()},
			Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: fmt.Sprintf("reg.example.com/bench/app%d:v%d", i%50, i%10)}}}}}}
		deps = append(deps, d)
		rsName := name + "-5d8f7c9b4"
		rsUID := types.UID(fmt.Sprintf("%08d-rsrs-bbbb-cccc-dddddddddddd", i))
		l2 := map[string]string{"app": name, "tier": "web", "pod-template-hash": "5d8f7c9b4"}
		rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: rsName, UID: rsUID, ResourceVersion: fmt.Sprint(5000 + i), Labels: l2, CreationTimestamp: metav1.Now(),
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: name, UID: d.UID, Controller: &ctrl}}},
			Spec: appsv1.ReplicaSetSpec{Template: d.Spec.Template}}
		sets = append(sets, rs)
		for j := range 5 {
			pods = append(pods, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: fmt.Sprintf("%s-%05d", rsName, j), UID: types.UID(fmt.Sprintf("%08d-%04d-bbbb-cccc-dddddddddddd", i, j)), ResourceVersion: fmt.Sprint(9000 + i*5 + j), Labels: l2,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: rsName, UID: rsUID, Controller: &ctrl}}},
				Spec:   corev1.PodSpec{NodeName: fmt.Sprintf("node-%d", j%3), Containers: d.Spec.Template.Spec.Containers},
				Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{Name: "app", Image: "x", ImageID: "reg.example.com/bench/app@sha256:0123456789012345678901234567890123456789012345678901234567890123"}}}})
		}
	}
	crIdx := func(obj any) ([]string, error) {
		o := obj.(interface {
			GetOwnerReferences() []metav1.OwnerReference
			GetNamespace() string
		})
		for _, r := range o.GetOwnerReferences() {
			if r.Controller != nil && *r.Controller {
				return []string{o.GetNamespace() + "/" + string(r.UID), "__all_namespaces/" + string(r.UID)}, nil
			}
		}
		return nil, nil
	}
	run := func(what string, objs []kruntime.Object, example kruntime.Object, tr toolscache.TransformFunc, owner bool) {
		source := fcache.NewFakeControllerSource()
		for _, o := range objs {
			source.Add(o)
		}
		before := liveHeap()
		inf := CacheOptions().NewInformer(source, example, 0, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
		_ = inf.SetTransform(func(o any) (any, error) { o, _ = stripForCache(o); return tr(o) })
		if owner {
			_ = inf.AddIndexers(toolscache.Indexers{"field:" + OwnerIndex: crIdx})
		}
		stop := make(chan struct{})
		go inf.Run(stop)
		toolscache.WaitForCacheSync(stop, inf.HasSynced)
		// drop the source's own copies
		source = nil
		after := liveHeap()
		t.Logf("%s: %d bytes each", what, (after-before)/int64(len(objs)))
		close(stop)
		_ = inf
	}
	switch os.Getenv("MEASURE") {
	case "d":
		run("deployment", deps, &appsv1.Deployment{}, keepWhatSelectionReads, false)
	case "rs":
		run("replicaset", sets, &appsv1.ReplicaSet{}, keepWhatSelectionReads, false)
	case "pod":
		run("pod", pods, &corev1.Pod{}, keepWhatDriftReads, true)
	case "store":
		source := fcache.NewFakeControllerSource()
		for _, o := range pods {
			source.Add(o)
		}
		before := liveHeap()
		st := NewPodStore(source)
		ctx, cancel := context.WithCancel(context.Background())
		go st.Start(ctx)
		_ = st.WaitForSync(ctx)
		after := liveHeap()
		t.Logf("store: %d bytes per pod (%d)", (after-before)/int64(len(pods)), st.Len())
		cancel()
	}
}

func TestMeasureTmp2(t *testing.T) {
	ctrl := true
	l2 := map[string]string{"app": "app-00001", "tier": "web", "pod-template-hash": "5d8f7c9b4"}
	rs := &appsv1.ReplicaSet{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "app-00001-5d8f7c9b4", UID: "00000001-rsrs-bbbb-cccc-dddddddddddd", ResourceVersion: "5001", Labels: l2, CreationTimestamp: metav1.Now(),
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: "app-00001", UID: "00000001-aaaa-bbbb-cccc-dddddddddddd", Controller: &ctrl}}}}
	o, _ := keepWhatSelectionReads(rs)
	p := pack(KindNamed("ReplicaSet"), o)
	t.Logf("%T %d", p, len(p.(*packed).rest))
}
