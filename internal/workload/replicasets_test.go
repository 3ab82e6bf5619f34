package workload

import (
	"context"
	"fmt"
	"slices"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	fcache "k8s.io/client-go/tools/cache/testing"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/client/fake"
)

// replicaSetOf is fatReplicaSet with the UID fatPod's owner reference
// names.
func replicaSetOf(name, owner string) *appsv1.ReplicaSet {
	rs := fatReplicaSet(name, owner)
	rs.UID = types.UID("rs-" + name)
	return rs
}

// startStoreWithReplicaSets runs a PodStore over pods and ReplicaSets, as
// NewPodStoreFor makes it, and waits for both first lists.
func startStoreWithReplicaSets(t *testing.T, pods, sets *fcache.FakeControllerSource) *PodStore {
	t.Helper()
	return started(t, NewPodStore(pods, sets))
}

// The owner walk and Pods read ReplicaSets from the PodStore: a pod's
// workload is found through its ReplicaSet, a workload's pods through its
// ReplicaSets, and nothing is read of ReplicaSets from the client (it has
// none).
func TestReplicaSetsAreReadFromThePodStore(t *testing.T) {
	d := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "prod", Name: "web", UID: "0b6fd9f5-0d3c-4b7e-9b39-3c1a0c3f7a41"}}
	d.Spec.Template.Spec.Containers = []corev1.Container{{Name: "app", Image: "reg.io/app:v1"}}
	rs := replicaSetOf("web-a", "web")
	rs.OwnerReferences[0].UID = d.UID
	old := replicaSetOf("web-old", "web")
	old.OwnerReferences[0].UID = d.UID
	sets := fcache.NewFakeControllerSource()
	sets.Add(rs)
	sets.Add(old)
	pods := fcache.NewFakeControllerSource()
	pods.Add(fatPod("web-a-x1", "web-a", "reg.io/app@sha256:aaa"))
	pods.Add(fatPod("web-old-x1", "web-old", "reg.io/app@sha256:bbb"))
	s := startStoreWithReplicaSets(t, pods, sets)
	c := fake.NewClientBuilder().WithObjects(d).Build()

	owner, kind, err := OwningWorkload(context.Background(), c, s, fatPod("web-a-x1", "web-a", ""))
	if err != nil || owner == nil || owner.GetName() != "web" || kind != "Deployment" {
		t.Fatalf("OwningWorkload(web-a-x1) = %v, %s, %v; want Deployment web", owner, kind, err)
	}
	var got appsv1.Deployment
	if err := c.Get(context.Background(), client.ObjectKeyFromObject(d), &got); err != nil {
		t.Fatal(err)
	}
	running, err := Pods(context.Background(), c, s, Workload{Kind: "Deployment", Object: &got})
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, p := range running {
		names = append(names, p.Name)
	}
	slices.Sort(names)
	if fmt.Sprint(names) != "[web-a-x1 web-old-x1]" {
		t.Fatalf("the Deployment's pods: %v", names)
	}

	// The old ReplicaSet is deleted, web-a is released: neither leads
	// to the Deployment any more.
	sets.Delete(old)
	released := rs.DeepCopy()
	released.OwnerReferences = nil
	sets.Modify(released)
	waitFor(t, func() bool { return len(s.ReplicaSetsOwnedBy("prod", []types.UID{d.UID})) == 0 })
	if owner, _, err := OwningWorkload(context.Background(), c, s, fatPod("web-a-x1", "web-a", "")); err != nil || owner != nil {
		t.Fatalf("OwningWorkload through a released ReplicaSet = %v, %v", owner, err)
	}
	if _, ok := s.ReplicaSet("prod", "web-old"); ok {
		t.Fatal("a deleted ReplicaSet is still held")
	}
	if len(s.sets) != 1 || len(s.setsOf) != 0 {
		t.Fatalf("the store holds %d ReplicaSets, %d controllers of them; want 1 and 0", len(s.sets), len(s.setsOf))
	}
}

// A ReplicaSet that arrives after its pods (its watch is behind the pods')
// tells the controllers of its pods: the owner walk that found nothing for
// them finds their workload now.
func TestAReplicaSetAfterItsPodsTellsOfThem(t *testing.T) {
	sets := fcache.NewFakeControllerSource()
	pods := fcache.NewFakeControllerSource()
	pods.Add(fatPod("web-a-x1", "web-a", "reg.io/app@sha256:aaa"))
	s := startStoreWithReplicaSets(t, pods, sets)
	var tt told
	subscribe(t, s, &tt)

	sets.Add(replicaSetOf("web-a", "web"))
	var got []string
	waitFor(t, func() bool {
		got = append(got, tt.take()...)
		return len(got) > 0
	})
	if fmt.Sprint(got) != "[prod/web-a]" {
		t.Fatalf("told %v, want the ReplicaSet's pods' owner", got)
	}
	// A change the owner walk does not read tells nobody.
	same := replicaSetOf("web-a", "web")
	same.Labels["other"] = "x"
	s.mu.Lock()
	told := s.putSet(same)
	s.mu.Unlock()
	if len(told) != 0 {
		t.Fatalf("a change of what the store does not read tells %v", told)
	}
	// A new controller tells the pods' owner (their walk leads to it now)
	// and the former controller (they are no longer its workload's).
	sets.Modify(replicaSetOf("web-a", "web2"))
	waitToldAll(t, &tt, "[prod/web prod/web-a]")
	if rs, ok := s.ReplicaSet("prod", "web-a"); !ok || metav1.GetControllerOf(rs).Name != "web2" || rs.UID != "rs-web-a" {
		t.Fatalf("ReplicaSet(prod, web-a) = %+v, %v", rs, ok)
	}
	// Deleted: the former controller is told, with the pods' owner.
	sets.Delete(replicaSetOf("web-a", "web2"))
	waitToldAll(t, &tt, "[prod/web-a prod/web2]")
}

// waitToldAll waits until tt has been told of want (sorted, as printed),
// gathered over as many takes as it takes.
func waitToldAll(t *testing.T, tt *told, want string) {
	t.Helper()
	var got []string
	waitFor(t, func() bool {
		got = append(got, tt.take()...)
		slices.Sort(got)
		return fmt.Sprint(got) == want
	})
}
