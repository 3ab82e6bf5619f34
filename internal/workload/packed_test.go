package workload

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"
	"unsafe"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	fcache "k8s.io/client-go/tools/cache/testing"
)

// startInformer runs the cache's informer constructor for example's kind
// over source, with transform and an owner index set as the manager's
// cache sets them, and waits for its first list.
func startInformer(t *testing.T, source *fcache.FakeControllerSource, example kruntime.Object, transform toolscache.TransformFunc, h toolscache.ResourceEventHandler) toolscache.SharedIndexInformer {
	t.Helper()
	inf := CacheOptions().NewInformer(source, example, 0, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	if err := inf.SetTransform(transform); err != nil {
		t.Fatal(err)
	}
	if err := inf.AddIndexers(toolscache.Indexers{OwnerIndex: func(obj any) ([]string, error) {
		o, ok := obj.(interface {
			GetOwnerReferences() []metav1.OwnerReference
		})
		if !ok {
			return nil, fmt.Errorf("index function got %T", obj)
		}
		for _, r := range o.GetOwnerReferences() {
			if r.Controller != nil && *r.Controller {
				return []string{string(r.UID)}, nil
			}
		}
		return nil, nil
	}}); err != nil {
		t.Fatal(err)
	}
	if h != nil {
		if _, err := inf.AddEventHandler(h); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go inf.RunWithContext(ctx)
	if !toolscache.WaitForCacheSync(ctx.Done(), inf.HasSynced) {
		t.Fatal("informer never synced")
	}
	return inf
}

func fatPod(name, owner, imageID string) *corev1.Pod {
	controller := true
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "prod", UID: types.UID("uid-" + name0(name)),
			Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f7c"},
			Annotations:     map[string]string{"big": string(make([]byte, 2000))},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: owner, UID: types.UID("rs-" + name0(owner)), Controller: &controller}},
		},
		Spec: corev1.PodSpec{NodeName: "node-a", Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1", Env: []corev1.EnvVar{{Name: "A", Value: "b"}}}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, ContainerStatuses: []corev1.ContainerStatus{{
			Name: "app", Image: "reg.io/app:v1", ImageID: imageID,
		}}},
	}
}

// name0 copies s, as a decoded object's strings are its own.
func name0(s string) string { return string([]byte(s)) }

// events records what an informer's handler is given.
type events struct {
	mu    sync.Mutex
	types []string
}

func (e *events) add(kind string, objs ...any) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, o := range objs {
		if d, ok := o.(toolscache.DeletedFinalStateUnknown); ok {
			o = d.Obj
		}
		e.types = append(e.types, fmt.Sprintf("%s %T", kind, o))
	}
}
func (e *events) OnAdd(o any, _ bool) { e.add("add", o) }
func (e *events) OnUpdate(o, n any)   { e.add("update", o, n) }
func (e *events) OnDelete(o any)      { e.add("delete", o) }
func (e *events) seen() []string {
	e.mu.Lock()
	defer e.mu.Unlock()
	return append([]string(nil), e.types...)
}

func TestTheCacheHoldsPodsPackedAndShowsThemTyped(t *testing.T) {
	source := fcache.NewFakeControllerSource()
	source.Add(fatPod("web-1", "web-a", "reg.io/app@sha256:aaa"))
	leaving := fatPod("web-2", "web-b", "reg.io/app@sha256:bbb")
	leaving.DeletionTimestamp = &metav1.Time{Time: time.Unix(1700000000, 0)}
	leaving.Spec.NodeName = "node-b"
	source.Add(leaving)
	var seen events
	inf := startInformer(t, source, &corev1.Pod{}, keepWhatDriftReads, &seen)

	// Held packed: what the informer's own store holds.
	for _, o := range inf.(*packingInformer).SharedIndexInformer.GetIndexer().List() {
		if _, ok := o.(*packed); !ok {
			t.Fatalf("the store holds a %T, not a packed object", o)
		}
	}
	// Read typed, slimmed, by key and through the owner index.
	got, ok, err := inf.GetIndexer().GetByKey("prod/web-1")
	if err != nil || !ok {
		t.Fatalf("GetByKey: %v %v", ok, err)
	}
	p := got.(*corev1.Pod)
	if p.Status.ContainerStatuses[0].ImageID != "reg.io/app@sha256:aaa" || p.Spec.NodeName != "node-a" ||
		p.Labels["app"] != "web" || p.UID != "uid-web-1" || p.Kind != "Pod" || p.APIVersion != "v1" {
		t.Fatalf("unpacked pod lost what drift reads: %+v", p)
	}
	if len(p.Annotations) != 0 || len(p.Spec.Containers) != 0 {
		t.Fatalf("the transform did not run before packing: %+v", p)
	}
	// Each read is a fresh object (the cache does not copy it again): a
	// reader's change is its own.
	p.Labels["app"], p.Status.ContainerStatuses[0].ImageID = "changed", "changed"
	again, _, _ := inf.GetIndexer().GetByKey("prod/web-1")
	if a := again.(*corev1.Pod); a.Labels["app"] != "web" || a.Status.ContainerStatuses[0].ImageID != "reg.io/app@sha256:aaa" {
		t.Fatalf("a reader's change reached the cache: %+v", a)
	}
	byOwner, err := inf.GetIndexer().ByIndex(OwnerIndex, "rs-web-b")
	if err != nil || len(byOwner) != 1 {
		t.Fatalf("ByIndex(owner rs-web-b) = %v, %v", byOwner, err)
	}
	if p := byOwner[0].(*corev1.Pod); p.Name != "web-2" || p.Namespace != "prod" || p.Spec.NodeName != "node-b" ||
		p.DeletionTimestamp == nil || !p.DeletionTimestamp.Equal(leaving.DeletionTimestamp) || p.Status.ContainerStatuses[0].ImageID != "reg.io/app@sha256:bbb" {
		t.Fatalf("unpacked pod of rs-web-b: %+v", p)
	}
	byNamespace, err := inf.GetIndexer().ByIndex(toolscache.NamespaceIndex, "prod")
	if err != nil || len(byNamespace) != 2 {
		t.Fatalf("ByIndex(namespace prod) = %v, %v", byNamespace, err)
	}

	// Every event carries typed objects: an update (the owner index moves
	// with it) and a delete.
	moved := fatPod("web-1", "web-b", "reg.io/app@sha256:ccc")
	source.Modify(moved)
	source.Delete(fatPod("web-2", "web-b", ""))
	waitFor(t, func() bool {
		objs, _ := inf.GetIndexer().ByIndex(OwnerIndex, "rs-web-b")
		return len(objs) == 1 && objs[0].(*corev1.Pod).Name == "web-1"
	})
	want := []string{"add *v1.Pod", "add *v1.Pod", "update *v1.Pod", "update *v1.Pod", "delete *v1.Pod"}
	waitFor(t, func() bool { return len(seen.seen()) == len(want) })
	if fmt.Sprint(seen.seen()) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", seen.seen(), want)
	}
	if old, _ := inf.GetIndexer().ByIndex(OwnerIndex, "rs-web-a"); len(old) != 0 {
		t.Fatalf("the owner index kept the pod's old owner: %v", old)
	}
}

func TestTheCacheHoldsWorkloadsPackedWithTheirTemplates(t *testing.T) {
	source := fcache.NewFakeControllerSource()
	d := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "prod", Labels: map[string]string{"app": "web"}, Generation: 3},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
			ServiceAccountName: "web", ImagePullSecrets: []corev1.LocalObjectReference{{Name: "pull"}},
			Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1", Args: []string{"--x"}}},
		}}},
	}
	source.Add(d)
	inf := startInformer(t, source, &appsv1.Deployment{}, keepWhatSelectionReads, nil)
	got, ok, err := inf.GetStore().GetByKey("prod/web")
	if err != nil || !ok {
		t.Fatalf("GetByKey: %v %v", ok, err)
	}
	w := got.(*appsv1.Deployment)
	spec := w.Spec.Template.Spec
	if w.Generation != 3 || w.Labels["app"] != "web" || spec.ServiceAccountName != "web" || len(spec.ImagePullSecrets) != 1 ||
		len(spec.Containers) != 1 || spec.Containers[0].Image != "reg.io/app:v1" || len(spec.Containers[0].Args) != 0 {
		t.Fatalf("unpacked Deployment: %+v", w)
	}
}

// TestAPackedPodCostsLessThanAnEmptyPod: what the cache holds per pod (the
// informer's store and indexes included) is less than the Go struct of a
// Pod alone, which is what every typed cache entry costs at least.
func TestAPackedPodCostsLessThanAnEmptyPod(t *testing.T) {
	const n = 3000
	source := fcache.NewFakeControllerSource()
	for i := range n {
		source.Add(fatPod(fmt.Sprintf("web-%05d", i), fmt.Sprintf("web-%03d", i/5), fmt.Sprintf("reg.io/app@sha256:%064x", i/5)))
	}
	before := liveHeap()
	inf := startInformer(t, source, &corev1.Pod{}, keepWhatDriftReads, nil)
	perPod := (liveHeap() - before) / n
	if got := len(inf.GetStore().ListKeys()); got != n {
		t.Fatalf("%d pods cached, want %d", got, n)
	}
	t.Logf("%d bytes of live heap per cached pod (an empty Pod struct is %d)", perPod, unsafe.Sizeof(corev1.Pod{}))
	if perPod >= int64(unsafe.Sizeof(corev1.Pod{})) {
		t.Fatalf("%d bytes per cached pod, not less than an empty Pod's %d", perPod, unsafe.Sizeof(corev1.Pod{}))
	}
	runtime.KeepAlive(inf)
}

func liveHeap() int64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return int64(m.HeapAlloc)
}

func waitFor(t *testing.T, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatal("condition not met in 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
