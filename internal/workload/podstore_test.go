package workload

import (
	"context"
	"fmt"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"unique"

	corev1 "k8s.io/api/core/v1"
	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/diff"
	toolscache "k8s.io/client-go/tools/cache"
	fcache "k8s.io/client-go/tools/cache/testing"
	"k8s.io/client-go/util/workqueue"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
)

// fatPod is a pod of ReplicaSet owner, with what the store does not keep
// of it (an annotation, a container spec).
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

// startPodStore runs a PodStore's reflector over source and waits for its
// first list.
func startPodStore(t *testing.T, source *fcache.FakeControllerSource) *PodStore {
	t.Helper()
	return started(t, NewPodStore(source, nil))
}

// started runs s's reflectors and waits for their first lists.
func started(t *testing.T, s *PodStore) *PodStore {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go func() { _ = s.Start(ctx) }()
	if err := s.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	if !s.HasSynced() {
		t.Fatal("synced, yet HasSynced is false")
	}
	return s
}

// told records the stand-ins a PodStore's source maps, as owner names.
type told struct {
	mu     sync.Mutex
	owners []string
}

func (tt *told) mapFunc(_ context.Context, o client.Object) []reconcile.Request {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	ref := metav1.GetControllerOf(o)
	tt.owners = append(tt.owners, o.GetNamespace()+"/"+ref.Name)
	return []reconcile.Request{{NamespacedName: types.NamespacedName{Namespace: o.GetNamespace(), Name: ref.Name}}}
}

// take returns what was told since the last take.
func (tt *told) take() []string {
	tt.mu.Lock()
	defer tt.mu.Unlock()
	out := tt.owners
	tt.owners = nil
	slices.Sort(out)
	return out
}

func subscribe(t *testing.T, s *PodStore, tt *told) workqueue.TypedRateLimitingInterface[reconcile.Request] {
	t.Helper()
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	t.Cleanup(q.ShutDown)
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	src := s.Source(tt.mapFunc)
	if err := src.Start(ctx, q); err != nil {
		t.Fatal(err)
	}
	if err := src.WaitForSync(ctx); err != nil {
		t.Fatal(err)
	}
	return q
}

func TestThePodStoreHoldsPodsByController(t *testing.T) {
	source := fcache.NewFakeControllerSource()
	a1 := fatPod("web-1", "web-a", "reg.io/app@sha256:aaa")
	a2 := fatPod("web-2", "web-a", "reg.io/app@sha256:aaa")
	a2.Spec.NodeName = "node-b"
	b1 := fatPod("web-3", "web-b", "reg.io/app@sha256:bbb")
	b1.UID = "0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41" // a UUID, as the API server makes them
	bare := fatPod("debug", "web-a", "reg.io/app@sha256:ccc")
	bare.OwnerReferences = nil
	for _, p := range []*corev1.Pod{a1, a2, b1, bare} {
		source.Add(p)
	}
	s := startPodStore(t, source)

	got := ownedObjects(s, "prod", []types.UID{"rs-web-a"})
	if len(got) != 2 {
		t.Fatalf("pods of web-a: %d, want 2", len(got))
	}
	slices.SortFunc(got, func(x, y corev1.Pod) int { return compareStrings(x.Name, y.Name) })
	for i, want := range []*corev1.Pod{a1, a2} {
		p := got[i]
		if p.Name != want.Name || p.Namespace != "prod" || p.UID != want.UID || p.Spec.NodeName != want.Spec.NodeName ||
			p.Status.Phase != corev1.PodRunning || metav1.GetControllerOf(&p).Name != "web-a" ||
			p.Status.ContainerStatuses[0].ImageID != "reg.io/app@sha256:aaa" {
			t.Fatalf("pod %d: %+v, want what drift reads of %s", i, p, want.Name)
		}
		// Slimmed: what drift does not read is not held (labels but
		// those that tell a pod's template apart: none of a ReplicaSet's).
		if len(p.Annotations) != 0 || len(p.Spec.Containers) != 0 || len(p.Labels) != 0 {
			t.Fatalf("pod %s holds more than drift reads: %+v", p.Name, p)
		}
	}
	if got := ownedObjects(s, "prod", []types.UID{"rs-web-a", "rs-web-b"}); len(got) != 3 {
		t.Fatalf("pods of web-a and web-b: %d, want 3", len(got))
	}
	if got := ownedObjects(s, "other", []types.UID{"rs-web-a"}); len(got) != 0 {
		t.Fatalf("another namespace's owner UID found pods: %v", got)
	}
	p, ok := s.Pod("prod", "web-3")
	if !ok || p.UID != b1.UID || p.Status.ContainerStatuses[0].ImageID != "reg.io/app@sha256:bbb" {
		t.Fatalf("Pod(prod, web-3) = %+v, %v", p, ok)
	}
	// A pod with no controller belongs to no workload: not held.
	if _, ok := s.Pod("prod", "debug"); ok || s.Len() != 3 {
		t.Fatalf("the store holds %d pods, the bare one %v; want 3 without it", s.Len(), ok)
	}
}

func compareStrings(a, b string) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}

func TestThePodStoreTellsOnlyWhatDriftReads(t *testing.T) {
	source := fcache.NewFakeControllerSource()
	source.Add(fatPod("web-1", "web-a", "reg.io/app@sha256:aaa"))
	s := startPodStore(t, source)
	var tt told
	q := subscribe(t, s, &tt)

	step := func(what string, change func(), want ...string) {
		t.Helper()
		change()
		// The fake source delivers in order: a pod added after the
		// change is told after it, so waiting for it orders the check.
		marker := fmt.Sprintf("marker-%d", len(what))
		source.Add(fatPod(marker, "marker", "reg.io/app@sha256:fff"))
		var got []string
		waitFor(t, func() bool {
			got = append(got, tt.take()...)
			return slices.Contains(got, "prod/marker")
		})
		got = slices.DeleteFunc(got, func(o string) bool { return o == "prod/marker" })
		if fmt.Sprint(got) != fmt.Sprint(want) {
			t.Fatalf("%s: told %v, want %v", what, got, want)
		}
	}
	web1 := func(imageID, node string, phase corev1.PodPhase) *corev1.Pod {
		p := fatPod("web-1", "web-a", imageID)
		p.Spec.NodeName, p.Status.Phase = node, phase
		return p
	}
	step("a pod added", func() { source.Add(fatPod("web-2", "web-a", "reg.io/app@sha256:aaa")) }, "prod/web-a")
	step("what drift does not read changes", func() {
		p := web1("reg.io/app@sha256:aaa", "node-a", corev1.PodRunning)
		p.Annotations["big"] = "other"
		p.Status.PodIP = "10.0.0.9"
		p.Status.Conditions = []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}
		source.Modify(p)
	})
	step("another image runs", func() { source.Modify(web1("reg.io/app@sha256:bbb", "node-a", corev1.PodRunning)) }, "prod/web-a")
	step("another node", func() { source.Modify(web1("reg.io/app@sha256:bbb", "node-c", corev1.PodRunning)) }, "prod/web-a")
	step("the pod finished", func() { source.Modify(web1("reg.io/app@sha256:bbb", "node-c", corev1.PodSucceeded)) }, "prod/web-a")
	step("adopted by another controller", func() {
		source.Modify(fatPod("web-1", "web-b", "reg.io/app@sha256:bbb"))
	}, "prod/web-a", "prod/web-b")
	step("deleted", func() { source.Delete(fatPod("web-1", "web-b", "")) }, "prod/web-b")

	if got := ownedObjects(s, "prod", []types.UID{"rs-web-b"}); len(got) != 0 {
		t.Fatalf("a deleted pod is still held: %v", got)
	}
	if q.Len() == 0 {
		t.Fatal("nothing reached the controller's queue")
	}
}

func TestThePodStoreForgetsPodsARelistDoesNotName(t *testing.T) {
	source := fcache.NewFakeControllerSource()
	s := NewPodStore(source, nil)
	var tt told
	q := workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[reconcile.Request]())
	defer q.ShutDown()
	if err := s.Source(tt.mapFunc).Start(context.Background(), q); err != nil {
		t.Fatal(err)
	}
	if err := s.Replace([]any{fatPod("web-1", "web-a", "reg.io/app@sha256:aaa"), fatPod("web-2", "web-b", "reg.io/app@sha256:aaa")}, "1"); err != nil {
		t.Fatal(err)
	}
	if !s.HasSynced() || s.Len() != 2 {
		t.Fatalf("after the first list: synced %v, %d pods", s.HasSynced(), s.Len())
	}
	// The first list tells nobody: the checks that follow read every pod,
	// and at 50,000 pods telling each held back the controllers' start.
	// (Changes are told in order: a pod added after it is told after.)
	if err := s.Add(fatPod("marker", "marker", "reg.io/app@sha256:fff")); err != nil {
		t.Fatal(err)
	}
	var got []string
	waitFor(t, func() bool {
		got = append(got, tt.take()...)
		return slices.Contains(got, "prod/marker")
	})
	if fmt.Sprint(got) != "[prod/marker]" {
		t.Fatalf("after the first list, told %v, want only the pod added after it", got)
	}
	// The watch broke; the relist no longer has web-2 and web-1 moved.
	moved := fatPod("web-1", "web-a", "reg.io/app@sha256:aaa")
	moved.Spec.NodeName = "node-z"
	if err := s.Replace([]any{moved}, "2"); err != nil {
		t.Fatal(err)
	}
	got = nil
	waitFor(t, func() bool {
		got = append(got, tt.take()...)
		slices.Sort(got)
		return fmt.Sprint(got) == "[prod/marker prod/web-a prod/web-b]"
	})
	if s.Len() != 1 || len(ownedObjects(s, "prod", []types.UID{"rs-web-b"})) != 0 {
		t.Fatalf("after the relist: %d pods, web-b's %v", s.Len(), ownedObjects(s, "prod", []types.UID{"rs-web-b"}))
	}
	if p := ownedObjects(s, "prod", []types.UID{"rs-web-a"}); len(p) != 1 || p[0].Spec.NodeName != "node-z" {
		t.Fatalf("web-a's pods after the relist: %+v", p)
	}
}

// TestAStoredPodCostsLessThanACachedOne: what the store holds per pod of
// ReplicaSets of five is at most half of what an informer held per pod,
// packed as the manager's cache packs objects, with the indexes the cache
// keeps (namespace, and the owner index namespaced and cluster-wide).
func TestAStoredPodCostsLessThanACachedOne(t *testing.T) {
	const n = 5000
	// Each pod its own strings, as a decoded pod's are; garbage once held.
	podsOf := func(each func(*corev1.Pod)) {
		for i := range n {
			p := fatPod(fmt.Sprintf("web-%05d", i), fmt.Sprintf("web-%04d", i/5), fmt.Sprintf("reg.io/app@sha256:%064x", i/5))
			p.UID = types.UID(fmt.Sprintf("%08x-0d3c-4b7e-9b39-3c1a0c3f7a41", i))
			p.Labels = map[string]string{"app": name0("web"), "pod-template-hash": fmt.Sprintf("%010d", i/5)}
			each(p)
		}
	}

	store := NewPodStore(nil, nil)
	before := liveHeap()
	podsOf(func(p *corev1.Pod) {
		if err := store.Add(p); err != nil {
			t.Fatal(err)
		}
	})
	stored := (liveHeap() - before) / n

	indexer := toolscache.NewIndexer(toolscache.MetaNamespaceKeyFunc, toolscache.Indexers{
		toolscache.NamespaceIndex: toolscache.MetaNamespaceIndexFunc,
		"field:" + OwnerIndex: func(obj any) ([]string, error) {
			u, err := unpack(obj)
			if err != nil {
				return nil, err
			}
			p := u.(*corev1.Pod)
			uid := string(metav1.GetControllerOf(p).UID)
			return []string{p.Namespace + "/" + uid, "__all_namespaces/" + uid}, nil
		},
	})
	podKind := KindNamed("Pod")
	before = liveHeap()
	podsOf(func(p *corev1.Pod) {
		slim, _ := keepWhatDriftReads(p)
		if err := indexer.Add(pack(podKind, slim)); err != nil {
			t.Fatal(err)
		}
	})
	cached := (liveHeap() - before) / n

	t.Logf("live heap per pod: %d bytes stored, %d bytes cached", stored, cached)
	if store.Len() != n || len(indexer.ListKeys()) != n {
		t.Fatalf("%d pods stored and %d cached, want %d", store.Len(), len(indexer.ListKeys()), n)
	}
	if stored > cached/2 {
		t.Fatalf("a stored pod costs %d bytes, more than half of a cached one's %d", stored, cached)
	}
	runtime.KeepAlive(store)
	runtime.KeepAlive(indexer)
}

// shares counts what s holds once for many pods: the bodies its groups'
// states point at (each one the store holds), and the states.
func shares(t *testing.T, s *PodStore) (bodies, states int) {
	t.Helper()
	held := map[*podBody]bool{}
	for _, g := range s.owners {
		for _, st := range g.states {
			held[st.body] = true
			if s.bodies[st.body.raw] != st.body {
				t.Fatal("a state points at a body the store does not hold")
			}
		}
		states += len(g.states)
	}
	if len(held) != len(s.bodies) {
		t.Fatalf("the states point at %d bodies, the store holds %d", len(held), len(s.bodies))
	}
	return len(held), states
}

// Pods that run the same images share one body, whichever controller made
// them, and the pods of one controller one state; a body is let go with
// the last state that has it, and a state with its last pod.
func TestPodsThatRunTheSameImagesShareOneBody(t *testing.T) {
	s := NewPodStore(nil, nil)
	add := func(p *corev1.Pod) {
		t.Helper()
		if err := s.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	var pods []*corev1.Pod
	for _, owner := range []string{"web-a", "web-b"} {
		for i := range 3 {
			pods = append(pods, fatPod(fmt.Sprintf("%s-%d", owner, i), owner, "reg.io/app@sha256:aaa"))
		}
	}
	api := fatPod("api-0", "api", "reg.io/api@sha256:ccc")
	for _, p := range append(pods, api) {
		add(p)
	}
	if bodies, states := shares(t, s); bodies != 2 || states != 3 {
		t.Fatalf("7 pods of 3 controllers that run 2 images: %d bodies and %d states, want 2 and 3", bodies, states)
	}

	// A pod of web-b moves to another image: a body and a state of its
	// own; the other pods run what they ran.
	add(fatPod("web-b-0", "web-b", "reg.io/app@sha256:bbb"))
	if bodies, states := shares(t, s); bodies != 3 || states != 4 {
		t.Fatalf("after a pod moved: %d bodies and %d states, want 3 and 4", bodies, states)
	}
	ran := func(owner string) string {
		var out []string
		for _, p := range ownedObjects(s, "prod", []types.UID{types.UID("rs-" + owner)}) {
			out = append(out, p.Name+" "+p.Status.ContainerStatuses[0].ImageID)
		}
		slices.Sort(out)
		return fmt.Sprint(out)
	}
	if got, want := ran("web-a"), "[web-a-0 reg.io/app@sha256:aaa web-a-1 reg.io/app@sha256:aaa web-a-2 reg.io/app@sha256:aaa]"; got != want {
		t.Errorf("web-a's pods run %s, want %s", got, want)
	}
	if got, want := ran("web-b"), "[web-b-0 reg.io/app@sha256:bbb web-b-1 reg.io/app@sha256:aaa web-b-2 reg.io/app@sha256:aaa]"; got != want {
		t.Errorf("web-b's pods run %s, want %s", got, want)
	}

	// The last pod that runs an image gone, so is its body.
	if err := s.Delete(api); err != nil {
		t.Fatal(err)
	}
	for raw := range s.bodies {
		if strings.Contains(raw, "sha256:ccc") {
			t.Fatal("the body of a deleted pod is still held")
		}
	}
	if bodies, states := shares(t, s); bodies != 2 || states != 3 {
		t.Fatalf("after api-0 was deleted: %d bodies and %d states, want 2 and 3", bodies, states)
	}
	for _, p := range pods {
		if err := s.Delete(p); err != nil {
			t.Fatal(err)
		}
	}
	if s.count != 0 || len(s.owners) != 0 || len(s.spaces) != 0 || len(s.bodies) != 0 || len(s.oddUIDs) != 0 {
		t.Fatalf("with every pod deleted the store holds %d pods, %d groups in %d namespaces, %d bodies and %d UIDs",
			s.count, len(s.owners), len(s.spaces), len(s.bodies), len(s.oddUIDs))
	}
}

// pytorchJob is a configured kind whose pods' template label says which of
// its templates each runs.
const pytorchJob = "kubeflow.org/v1/PyTorchJob,spec=spec.pytorchReplicaSpecs.*.template.spec,template-label=training.kubeflow.org/replica-type"

// What the store gives back is a pod as keepWhatDriftReads slims it, less
// what the pods of a controller do not share but for their name, UID and
// node: the labels but the template's, the resource version and the
// deletion.
func TestAStoredPodIsThePodDriftReads(t *testing.T) {
	configure(t, pytorchJob)
	plain := fatPod("web-1", "web-a", "reg.io/app@sha256:aaa")
	uuidNamed := fatPod("web-2", "web-a", "reg.io/app@sha256:aaa")
	uuidNamed.UID = "0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41"
	uuidNamed.Spec.NodeName = "node-b"
	leaving := fatPod("web-3", "web-a", "reg.io/app@sha256:bbb")
	leaving.ResourceVersion, leaving.DeletionTimestamp = "42", &metav1.Time{}
	leaving.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", Image: "reg.io/init:v1", ImageID: "reg.io/init@sha256:iii", Ready: true}}
	leaving.Status.ContainerStatuses[0].VolumeMounts = []corev1.VolumeMountStatus{
		{Name: "model", MountPath: "/model", VolumeStatus: &corev1.VolumeStatus{Image: &corev1.ImageVolumeStatus{ImageRef: "reg.io/model@sha256:mmm"}}},
		{Name: "data", MountPath: "/data"},
	}
	worker := fatPod("train-worker-0", "train", "reg.io/train@sha256:ttt")
	worker.OwnerReferences[0].APIVersion, worker.OwnerReferences[0].Kind = "kubeflow.org/v1", "PyTorchJob"
	worker.OwnerReferences = append(worker.OwnerReferences, metav1.OwnerReference{APIVersion: "v1", Kind: "ConfigMap", Name: "cm", UID: "cm-uid"})
	worker.Labels["training.kubeflow.org/replica-type"] = "worker"
	pending := fatPod("train-master-0", "train", "")
	pending.OwnerReferences = worker.OwnerReferences
	pending.Labels["training.kubeflow.org/replica-type"] = "master"
	pending.Spec.NodeName, pending.Status = "", corev1.PodStatus{Phase: corev1.PodPending}

	s := NewPodStore(nil, nil)
	pods := []*corev1.Pod{plain, uuidNamed, leaving, worker, pending}
	for _, p := range pods {
		if err := s.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	owned := map[string]corev1.Pod{}
	for _, p := range ownedObjects(s, "prod", []types.UID{"rs-web-a", "rs-train"}) {
		owned[p.Name] = p
	}
	for _, p := range pods {
		slim, _ := keepWhatDriftReads(p)
		want := slim.(*corev1.Pod)
		want.Labels = nil
		if v, ok := p.Labels["training.kubeflow.org/replica-type"]; ok {
			want.Labels = map[string]string{"training.kubeflow.org/replica-type": v}
		}
		want.ResourceVersion, want.DeletionTimestamp = "", nil
		got, ok := s.Pod("prod", p.Name)
		if !ok || !apiequality.Semantic.DeepEqual(got, want) {
			t.Errorf("Pod(prod, %s):\n%s", p.Name, diff.Diff(want, got))
		}
		if got := owned[p.Name]; !apiequality.Semantic.DeepEqual(&got, want) {
			t.Errorf("PodsOwnedBy's %s:\n%s", p.Name, diff.Diff(want, &got))
		}
	}
}

// A pod's change is told when what drift reads of it changes (its node,
// owner, UID, phase, images or template labels), and only then.
func TestAPodChangeIsToldWhenWhatDriftReadsChanges(t *testing.T) {
	configure(t, pytorchJob)
	pod := func(change func(*corev1.Pod)) *corev1.Pod {
		p := fatPod("web-1", "web-a", "reg.io/app@sha256:aaa")
		p.UID = "0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41"
		p.Labels["training.kubeflow.org/replica-type"] = "worker"
		change(p)
		return p
	}
	for _, c := range []struct {
		what   string
		change func(*corev1.Pod)
		told   string
	}{
		{"nothing drift reads", func(p *corev1.Pod) {
			p.ResourceVersion, p.Annotations["big"], p.Labels["app"] = "9", "other", "api"
			p.Spec.Containers[0].Env = nil
			p.Status.PodIP, p.Status.ContainerStatuses[0].Ready = "10.0.0.9", true
		}, "[]"},
		{"the node", func(p *corev1.Pod) { p.Spec.NodeName = "node-b" }, "[web-a]"},
		{"the UID", func(p *corev1.Pod) { p.UID = "5c3d7e1a-0d3c-4b7e-9b39-3c1a0c3f7a41" }, "[web-a]"},
		{"the UID, to one not a UUID", func(p *corev1.Pod) { p.UID = "uid-web-1" }, "[web-a]"},
		{"the phase", func(p *corev1.Pod) { p.Status.Phase = corev1.PodSucceeded }, "[web-a]"},
		{"an image", func(p *corev1.Pod) { p.Status.ContainerStatuses[0].ImageID = "reg.io/app@sha256:bbb" }, "[web-a]"},
		{"an init container", func(p *corev1.Pod) {
			p.Status.InitContainerStatuses = []corev1.ContainerStatus{{Name: "init", Image: "reg.io/init:v1", ImageID: "reg.io/init@sha256:iii"}}
		}, "[web-a]"},
		{"the template label", func(p *corev1.Pod) { p.Labels["training.kubeflow.org/replica-type"] = "master" }, "[web-a]"},
		{"the owner", func(p *corev1.Pod) {
			p.OwnerReferences[0].Name, p.OwnerReferences[0].UID = "web-b", "rs-web-b"
		}, "[web-a web-b]"},
	} {
		t.Run(c.what, func(t *testing.T) {
			s := NewPodStore(nil, nil)
			s.put(pod(func(*corev1.Pod) {}), true)
			var told []string
			for _, ch := range s.put(pod(c.change), false) {
				told = append(told, metav1.GetControllerOf(standIn(ch)).Name)
			}
			slices.Sort(told)
			if fmt.Sprint(told) != c.told {
				t.Errorf("told %v, want %s", told, c.told)
			}
		})
	}
}

// A pod is held by the end of its name when it starts with its
// controller's name (as controllers name their pods), and whole
// otherwise; either is found by name, when it changes controller, in a
// relist and from a tombstone that names a controller it has left.
func TestAPodIsFoundByNameWhereverItsControllerHoldsIt(t *testing.T) {
	s := NewPodStore(nil, nil)
	names := func(owner string) string {
		var out []string
		for _, p := range ownedObjects(s, "prod", []types.UID{types.UID("rs-" + owner)}) {
			out = append(out, p.Name+"="+string(p.UID))
		}
		slices.Sort(out)
		return fmt.Sprint(out)
	}
	x1, x2, odd := fatPod("web-a-x1", "web-a", "reg.io/app@sha256:aaa"), fatPod("web-a-x2", "web-a", "reg.io/app@sha256:aaa"), fatPod("odd", "web-a", "reg.io/app@sha256:aaa")
	// One UID a UUID, as the API server makes them (held in 16 bytes).
	x2.UID = "0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41"
	for _, p := range []*corev1.Pod{x1, x2, odd} {
		if err := s.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	if got, want := names("web-a"), "[odd=uid-odd web-a-x1=uid-web-a-x1 web-a-x2=0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41]"; got != want {
		t.Fatalf("web-a's pods: %s, want %s", got, want)
	}
	if p, ok := s.Pod("prod", "web-a-x2"); !ok || p.Name != "web-a-x2" || p.UID != x2.UID {
		t.Fatalf("Pod(prod, web-a-x2) = %+v, %v", p, ok)
	}
	if g := s.owners[ownerKey{unique.Make("prod"), compactUIDOf("rs-web-a")}]; len(g.pods) != 3 || cap(g.pods) != 3 {
		t.Fatalf("a group of 3 holds %d records in room for %d", len(g.pods), cap(g.pods))
	}

	// Adopted by web-b: held there, whole (it does not start with web-b).
	adopted := fatPod("web-a-x1", "web-b", "reg.io/app@sha256:aaa")
	if err := s.Update(adopted); err != nil {
		t.Fatal(err)
	}
	if a, b := names("web-a"), names("web-b"); a != "[odd=uid-odd web-a-x2=0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41]" || b != "[web-a-x1=uid-web-a-x1]" || s.Len() != 3 {
		t.Fatalf("after the adoption: web-a %s, web-b %s, %d pods", a, b, s.Len())
	}

	// A relist: web-a-x1 back with web-a, odd now web-b's, web-a-x2 gone.
	if err := s.Replace([]any{fatPod("web-a-x1", "web-a", "reg.io/app@sha256:aaa"), fatPod("odd", "web-b", "reg.io/app@sha256:aaa")}, "2"); err != nil {
		t.Fatal(err)
	}
	if a, b := names("web-a"), names("web-b"); a != "[web-a-x1=uid-web-a-x1]" || b != "[odd=uid-odd]" || s.Len() != 2 {
		t.Fatalf("after the relist: web-a %s, web-b %s, %d pods", a, b, s.Len())
	}

	// A tombstone that still names web-a for odd.
	if err := s.Delete(toolscache.DeletedFinalStateUnknown{Key: "prod/odd", Obj: odd}); err != nil {
		t.Fatal(err)
	}
	// Released by its controller: no workload's pod.
	released := fatPod("web-a-x1", "web-a", "reg.io/app@sha256:aaa")
	released.OwnerReferences = nil
	if err := s.Update(released); err != nil {
		t.Fatal(err)
	}
	if s.count != 0 || len(s.owners) != 0 || len(s.spaces) != 0 || len(s.bodies) != 0 || len(s.oddUIDs) != 0 {
		t.Fatalf("the store still holds %d pods in %d groups, %d UIDs", s.count, len(s.owners), len(s.oddUIDs))
	}
}

// ownedObjects is s.PodsOwnedBy(ns, owners), each pod a whole object.
func ownedObjects(s *PodStore, ns string, owners []types.UID) []corev1.Pod {
	var out []corev1.Pod
	for _, p := range s.PodsOwnedBy(ns, owners) {
		out = append(out, *p.Object(ns))
	}
	return out
}
