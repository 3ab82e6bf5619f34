package workload

import (
	"context"
	"fmt"
	"runtime"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	kruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	toolscache "k8s.io/client-go/tools/cache"
	fcache "k8s.io/client-go/tools/cache/testing"
)

// startInformer runs the cache's informer constructor for example's kind
// over source, with transform set as the manager's cache sets it and an
// index by the label app, and waits for its first list.
func startInformer(t *testing.T, source *fcache.FakeControllerSource, example kruntime.Object, transform toolscache.TransformFunc, h toolscache.ResourceEventHandler) toolscache.SharedIndexInformer {
	t.Helper()
	inf := CacheOptions().NewInformer(source, example, 0, toolscache.Indexers{toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc})
	if err := inf.SetTransform(transform); err != nil {
		t.Fatal(err)
	}
	// An index function sees the object typed.
	if err := inf.AddIndexers(toolscache.Indexers{"app": func(obj any) ([]string, error) {
		o, ok := obj.(interface{ GetLabels() map[string]string })
		if !ok {
			return nil, fmt.Errorf("index function got %T", obj)
		}
		return []string{o.GetLabels()["app"]}, nil
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

// fatReplicaSet is a ReplicaSet of Deployment owner, with what the cache
// does not keep of it (its template, an annotation).
func fatReplicaSet(name, owner string) *appsv1.ReplicaSet {
	controller := true
	return &appsv1.ReplicaSet{
		ObjectMeta: metav1.ObjectMeta{
			Name: name, Namespace: "prod", UID: types.UID("uid-" + name0(name)), Generation: 2,
			Labels:          map[string]string{"app": "web", "pod-template-hash": "5d8f7c"},
			Annotations:     map[string]string{"big": string(make([]byte, 2000))},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "Deployment", Name: owner, UID: types.UID("d-" + name0(owner)), Controller: &controller}},
		},
		Spec: appsv1.ReplicaSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: "reg.io/app:v1"}}}}},
	}
}

func TestTheCacheHoldsReplicaSetsPackedAndShowsThemTyped(t *testing.T) {
	source := fcache.NewFakeControllerSource()
	source.Add(fatReplicaSet("web-1", "web-a"))
	leaving := fatReplicaSet("web-2", "web-b")
	leaving.DeletionTimestamp = &metav1.Time{Time: time.Unix(1700000000, 0)}
	source.Add(leaving)
	var seen events
	inf := startInformer(t, source, &appsv1.ReplicaSet{}, keepWhatSelectionReads, &seen)

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
	rs := got.(*appsv1.ReplicaSet)
	if rs.UID != "uid-web-1" || metav1.GetControllerOf(rs).Name != "web-a" || rs.Kind != "ReplicaSet" || rs.APIVersion != "apps/v1" {
		t.Fatalf("unpacked ReplicaSet lost what the owner walk reads: %+v", rs)
	}
	if len(rs.Annotations) != 0 || len(rs.Spec.Template.Spec.Containers) != 0 {
		t.Fatalf("the transform did not run before packing: %+v", rs)
	}
	// Each read is a fresh object (the cache does not copy it again): a
	// reader's change is its own.
	rs.OwnerReferences[0].Name = "changed"
	again, _, _ := inf.GetIndexer().GetByKey("prod/web-1")
	if a := again.(*appsv1.ReplicaSet); a.OwnerReferences[0].Name != "web-a" {
		t.Fatalf("a reader's change reached the cache: %+v", a)
	}
	// The owner index, as controller-runtime's cache reads it, is served
	// from the packed records: no index holds it.
	if _, indexed := inf.GetIndexer().GetIndexers()[ownerIndexName]; indexed {
		t.Fatal("the owner index is an index of the informer's")
	}
	byOwner, err := inf.GetIndexer().ByIndex(ownerIndexName, "prod/d-web-b")
	if err != nil || len(byOwner) != 1 {
		t.Fatalf("ByIndex(owner prod/d-web-b) = %v, %v", byOwner, err)
	}
	if all, err := inf.GetIndexer().ByIndex(ownerIndexName, allNamespaces+"/d-web-b"); err != nil || len(all) != 1 {
		t.Fatalf("ByIndex(owner d-web-b in all namespaces) = %v, %v", all, err)
	}
	if other, err := inf.GetIndexer().ByIndex(ownerIndexName, "other/d-web-b"); err != nil || len(other) != 0 {
		t.Fatalf("ByIndex(owner d-web-b in another namespace) = %v, %v", other, err)
	}
	// An index function sees the object typed (the cache drops a
	// ReplicaSet's labels: none is found by them).
	if byApp, err := inf.GetIndexer().ByIndex("app", ""); err != nil || len(byApp) != 2 {
		t.Fatalf("ByIndex(app \"\") = %v, %v", byApp, err)
	}
	if rs := byOwner[0].(*appsv1.ReplicaSet); rs.Name != "web-2" || rs.Namespace != "prod" ||
		rs.DeletionTimestamp == nil || !rs.DeletionTimestamp.Equal(leaving.DeletionTimestamp) {
		t.Fatalf("unpacked ReplicaSet of web-b: %+v", rs)
	}
	byNamespace, err := inf.GetIndexer().ByIndex(toolscache.NamespaceIndex, "prod")
	if err != nil || len(byNamespace) != 2 {
		t.Fatalf("ByIndex(namespace prod) = %v, %v", byNamespace, err)
	}

	// Every event carries typed objects: an update (the owner moves with
	// it) and a delete.
	source.Modify(fatReplicaSet("web-1", "web-b"))
	source.Delete(fatReplicaSet("web-2", "web-b"))
	waitFor(t, func() bool {
		objs, _ := inf.GetIndexer().ByIndex(ownerIndexName, "prod/d-web-b")
		return len(objs) == 1 && objs[0].(*appsv1.ReplicaSet).Name == "web-1"
	})
	want := []string{"add *v1.ReplicaSet", "add *v1.ReplicaSet", "update *v1.ReplicaSet", "update *v1.ReplicaSet", "delete *v1.ReplicaSet"}
	waitFor(t, func() bool { return len(seen.seen()) == len(want) })
	if fmt.Sprint(seen.seen()) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", seen.seen(), want)
	}
	if old, _ := inf.GetIndexer().ByIndex(ownerIndexName, "prod/d-web-a"); len(old) != 0 {
		t.Fatalf("the owner index kept the ReplicaSet's old owner: %v", old)
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
