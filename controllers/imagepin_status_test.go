package controllers

import (
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/workload"
)

// These tests build statuses from plain observations: no cluster.

func dg(c string) string { return "sha256:" + strings.Repeat(c, 64) }

var t0 = time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)

func obsOf(containers ...containerObs) observation {
	names := map[string]bool{}
	for _, c := range containers {
		names[string(c.kind)+"/"+c.workload] = true
	}
	return observation{workloads: len(names), containers: containers}
}

func resolvedTo(image, workloadName, digest string, running ...imagesv1alpha1.RunningDigest) containerObs {
	return containerObs{
		kind: imagesv1alpha1.KindDeployment, workload: workloadName, place: place{container: "app"},
		image: image, hasTag: true, running: running,
		result: registry.Result{Digest: digest, ResolvedAt: t0},
	}
}

func runningOn(digest string, pods int32, nodes ...string) imagesv1alpha1.RunningDigest {
	return imagesv1alpha1.RunningDigest{Digest: imagesv1alpha1.Digest(digest), Pods: pods, Nodes: nodes}
}

func check(status *imagesv1alpha1.ImagePinStatus, now time.Time, obs observation) {
	setChecked(status, checkInput{generation: 1, now: now, interval: time.Minute, obs: obs})
}

func TestHistoryIsNewestFirstAndCapped(t *testing.T) {
	var status imagesv1alpha1.ImagePinStatus
	for i := range maxHistory + 5 {
		d := dg(fmt.Sprintf("%x", i%16))
		if i >= 16 {
			t.Fatal("test needs distinct digests")
		}
		check(&status, t0.Add(time.Duration(i)*time.Minute), obsOf(resolvedTo("reg.io/app:v1", "web", d)))
		check(&status, t0.Add(time.Duration(i)*time.Minute+time.Second), obsOf(resolvedTo("reg.io/app:v1", "web", d))) // unchanged: no new entry
	}
	h := status.Images[0].History
	if len(h) != maxHistory {
		t.Fatalf("history has %d entries, want the cap %d", len(h), maxHistory)
	}
	if string(h[0].Digest) != dg("e") || !h[0].FirstSeen.Time.Equal(t0.Add(14*time.Minute)) {
		t.Fatalf("newest entry = %+v, want %s first seen at +14m", h[0], dg("e"))
	}
	if string(h[maxHistory-1].Digest) != dg("5") {
		t.Fatalf("oldest kept = %s, want %s", h[maxHistory-1].Digest, dg("5"))
	}
}

func TestStatusStaysBoundedAndSaysWhatIsLeftOut(t *testing.T) {
	var cs []containerObs
	for i := range 2000 {
		cs = append(cs, resolvedTo(fmt.Sprintf("registry.example.com/team-%03d/app:v1", i%150), fmt.Sprintf("web-%04d", i), dg("a"), runningOn(dg("a"), 3, "node-a", "node-b")))
	}
	var status imagesv1alpha1.ImagePinStatus
	check(&status, t0, obsOf(cs...))

	entries := 0
	for _, img := range status.Images {
		entries += len(img.Workloads)
	}
	if len(status.Images) > maxImages || entries > maxWorkloadEntries {
		t.Fatalf("%d images and %d workload entries, want at most %d and %d", len(status.Images), entries, maxImages, maxWorkloadEntries)
	}
	if got := int(status.Summary.Omitted); got != 2000-entries {
		t.Fatalf("summary.omitted = %d, want %d", got, 2000-entries)
	}
	if status.Summary.Workloads != 2000 || status.Summary.Images != 150 {
		t.Fatalf("summary = %+v, want every workload and image counted", status.Summary)
	}
	ready := meta.FindStatusCondition(status.Conditions, imagesv1alpha1.ConditionReady)
	if !strings.Contains(ready.Message, fmt.Sprintf("%d workload containers left out of status.images", status.Summary.Omitted)) {
		t.Fatalf("Ready message does not say what was left out: %s", ready.Message)
	}
	raw, err := yaml.Marshal(status)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 256<<10 {
		t.Fatalf("status of 2,000 workloads is %d KiB, want well under 1 MiB", len(raw)>>10)
	}
	t.Logf("status of 2,000 workloads naming 150 images: %d KiB", len(raw)>>10)
}

func TestConditionsSayWhatToLookAt(t *testing.T) {
	tests := []struct {
		name                  string
		obs                   observation
		ready, drifted        metav1.ConditionStatus
		readyReason, drReason string
		says                  []string
	}{
		{
			name:  "in step",
			obs:   obsOf(resolvedTo("reg.io/app:v1", "web", dg("a"), runningOn(dg("a"), 2, "n1"))),
			ready: metav1.ConditionTrue, readyReason: imagesv1alpha1.ReasonResolved,
			drifted: metav1.ConditionFalse, drReason: imagesv1alpha1.ReasonNoDrift,
			says: []string{"resolved 1 image of 1 workload", "(1 by tag only: Unpinned)"},
		},
		{
			name:  "tag moved and replicas split",
			obs:   obsOf(resolvedTo("reg.io/app:v1", "web", dg("b"), runningOn(dg("a"), 1, "n1"), runningOn(dg("b"), 1, "n2"))),
			ready: metav1.ConditionTrue, readyReason: imagesv1alpha1.ReasonResolved,
			drifted: metav1.ConditionTrue, drReason: string(imagesv1alpha1.DriftTagMoved),
			says: []string{"1 of 1 image drifted: reg.io/app:v1 (Deployment web/app: TagMoved, MixedReplicas)"},
		},
		{
			name: "unresolvable",
			obs: obsOf(containerObs{
				kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: "reg.io/app:nope", hasTag: true,
				err: errors.New(`resolve reg.io/app:nope: tag "nope" not found in reg.io/app`),
			}),
			ready: metav1.ConditionFalse, readyReason: imagesv1alpha1.ReasonResolutionFailed,
			drifted: metav1.ConditionTrue, drReason: string(imagesv1alpha1.DriftUnresolvable),
			says: []string{`could not resolve 1 of 1 image (last digests kept): resolve reg.io/app:nope: tag "nope" not found`},
		},
		{
			name:  "digest-only reference needs no resolution",
			obs:   obsOf(containerObs{kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: "reg.io/app", pinned: dg("a"), running: []imagesv1alpha1.RunningDigest{runningOn(dg("a"), 1)}}),
			ready: metav1.ConditionTrue, readyReason: imagesv1alpha1.ReasonResolved,
			drifted: metav1.ConditionFalse, drReason: imagesv1alpha1.ReasonNoDrift,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var status imagesv1alpha1.ImagePinStatus
			check(&status, t0, tt.obs)
			ready := meta.FindStatusCondition(status.Conditions, imagesv1alpha1.ConditionReady)
			drifted := meta.FindStatusCondition(status.Conditions, imagesv1alpha1.ConditionDrifted)
			if ready.Status != tt.ready || ready.Reason != tt.readyReason {
				t.Errorf("Ready = %s %s (%s), want %s %s", ready.Status, ready.Reason, ready.Message, tt.ready, tt.readyReason)
			}
			if drifted.Status != tt.drifted || drifted.Reason != tt.drReason {
				t.Errorf("Drifted = %s %s (%s), want %s %s", drifted.Status, drifted.Reason, drifted.Message, tt.drifted, tt.drReason)
			}
			all := ready.Message + " | " + drifted.Message
			for _, s := range tt.says {
				if !strings.Contains(all, s) {
					t.Errorf("messages %q do not say %q", all, s)
				}
			}
		})
	}
}

// lastCheckTime moves only when something changed or an interval passed,
// so pod events do not each cost a status write.
func TestLastCheckTimeMovesOnChangeOrInterval(t *testing.T) {
	var status imagesv1alpha1.ImagePinStatus
	obs := obsOf(resolvedTo("reg.io/app:v1", "web", dg("a")))
	// Real clocks have nanoseconds; the API keeps seconds. The status read
	// back must still compare equal to a fresh check.
	obs.containers[0].result.ResolvedAt = t0.Add(123456789 * time.Nanosecond)
	check(&status, t0.Add(987654321*time.Nanosecond), obs)
	status = roundTrip(t, status)
	before := status.DeepCopy()
	check(&status, t0.Add(30*time.Second+5), obs)
	if !equalStatus(before, &status) {
		t.Fatalf("a check with nothing changed rewrote the status:\n%+v\n%+v", before, status)
	}
	if !status.LastCheckTime.Time.Equal(t0) {
		t.Fatalf("lastCheckTime moved to %s with nothing changed inside the interval", status.LastCheckTime)
	}
	check(&status, t0.Add(time.Minute+5), obs)
	if !status.LastCheckTime.Time.Equal(t0.Add(time.Minute)) {
		t.Fatalf("lastCheckTime = %s, want it moved after an interval", status.LastCheckTime)
	}
	check(&status, t0.Add(70*time.Second), obsOf(resolvedTo("reg.io/app:v1", "web", dg("b"))))
	if !status.LastCheckTime.Time.Equal(t0.Add(70 * time.Second)) {
		t.Fatalf("lastCheckTime = %s, want it moved with the change", status.LastCheckTime)
	}
}

func TestTransitionsEmitOnlyOnChange(t *testing.T) {
	var s0, s1, s2, s3 imagesv1alpha1.ImagePinStatus
	check(&s1, t0, obsOf(resolvedTo("reg.io/app:v1", "web", dg("a"), runningOn(dg("a"), 1))))
	s2 = *s1.DeepCopy()
	check(&s2, t0.Add(time.Minute), obsOf(resolvedTo("reg.io/app:v1", "web", dg("b"), runningOn(dg("a"), 1))))
	s3 = *s2.DeepCopy()
	check(&s3, t0.Add(2*time.Minute), obsOf(containerObs{
		kind: imagesv1alpha1.KindDeployment, workload: "web", place: place{container: "app"}, image: "reg.io/app:v1", hasTag: true,
		err: errors.New("registry down"), result: registry.Result{Digest: dg("b"), Stale: true},
	}))
	s4 := *s3.DeepCopy()
	check(&s4, t0.Add(3*time.Minute), obsOf(resolvedTo("reg.io/app:v1", "web", dg("b"), runningOn(dg("b"), 1))))

	reasons := func(before, after imagesv1alpha1.ImagePinStatus) string {
		var out []string
		for _, tr := range transitions(&before, &after) {
			out = append(out, tr.kind+" "+tr.reason)
		}
		return fmt.Sprint(out)
	}
	for _, tc := range []struct {
		name          string
		before, after imagesv1alpha1.ImagePinStatus
		want          string
	}{
		{"first check, in step", s0, s1, "[]"},
		{"steady state", s1, s1, "[]"},
		{"tag moved", s1, s2, "[" + corev1.EventTypeNormal + " TagMoved " + corev1.EventTypeWarning + " DriftFound]"},
		{"registry fails", s2, s3, "[Warning ResolutionFailed]"},
		{"recovered and rolled out", s3, s4, "[Normal ResolutionRecovered Normal DriftResolved]"},
	} {
		if got := reasons(tc.before, tc.after); got != tc.want {
			t.Errorf("%s: events %s, want %s", tc.name, got, tc.want)
		}
	}
}

// roundTrip returns status as the API server stores and returns it.
func roundTrip(t *testing.T, status imagesv1alpha1.ImagePinStatus) imagesv1alpha1.ImagePinStatus {
	t.Helper()
	raw, err := json.Marshal(status)
	if err != nil {
		t.Fatal(err)
	}
	var out imagesv1alpha1.ImagePinStatus
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return out
}

// views are pods as a check reads them (workload.Pod).
func views(pods ...corev1.Pod) []workload.Pod {
	out := make([]workload.Pod, len(pods))
	for i := range pods {
		out[i] = workload.Pod{Name: pods[i].Name, UID: pods[i].UID, Node: pods[i].Spec.NodeName, Shared: workload.ShareOf(&pods[i])}
	}
	return out
}

func TestFinishedPodsRunNothing(t *testing.T) {
	pod := func(phase corev1.PodPhase, node, digest string) corev1.Pod {
		return corev1.Pod{
			Spec: corev1.PodSpec{NodeName: node},
			Status: corev1.PodStatus{Phase: phase, ContainerStatuses: []corev1.ContainerStatus{
				{Name: "app", ImageID: "reg.io/app@" + digest},
			}},
		}
	}
	got := runningDigests(views(
		pod(corev1.PodRunning, "n1", dg("b")),
		pod(corev1.PodSucceeded, "n2", dg("a")),
		pod(corev1.PodFailed, "n3", dg("a")),
		pod(corev1.PodPending, "n4", dg("b")),
	))
	if want := fmt.Sprintf("[{%s 2 [n1 n4]}]", dg("b")); fmt.Sprint(got["app"]) != want {
		t.Fatalf("running = %v, want %s", got["app"], want)
	}
}

func TestStatusStaysSmallWithManyDigestsAndNodes(t *testing.T) {
	var cs []containerObs
	for i := range 600 {
		var running []imagesv1alpha1.RunningDigest
		for d := range 8 {
			var nodes []string
			for n := range 16 {
				nodes = append(nodes, fmt.Sprintf("ip-10-0-%03d-%03d.eu-west-1.compute.internal", d, n))
			}
			running = append(running, runningOn(dg(fmt.Sprintf("%x", d)), 2, nodes...))
		}
		cs = append(cs, resolvedTo("reg.io/app:v1", fmt.Sprintf("web-%03d", i), dg("f"), running...))
	}
	var status imagesv1alpha1.ImagePinStatus
	check(&status, t0, obsOf(cs...))
	raw, err := json.Marshal(status)
	if err != nil {
		t.Fatal(err)
	}
	if len(raw) > 768<<10 {
		t.Fatalf("status is %d KiB, want it well under the 1 MiB object limit", len(raw)>>10)
	}
	if status.Summary.Omitted == 0 {
		t.Fatal("nothing was left out, yet the status must have been cut")
	}
}

// A ClusterImagePin's status keeps the drifted entries of every image
// before any clean one, lists drifted images first, and counts what it
// leaves out per namespace.
func TestDriftedEntriesAreKeptFirstWhenBounded(t *testing.T) {
	var cs []containerObs
	clean := func(image, ns string, n int) {
		for i := range n {
			c := resolvedTo(image, fmt.Sprintf("clean-%03d", i), dg("a"), runningOn(dg("a"), 1, "node-a"))
			c.pinned, c.namespace = dg("a"), ns
			cs = append(cs, c)
		}
	}
	drifted := func(image, ns string) {
		c := resolvedTo(image, "drifted", dg("b"), runningOn(dg("a"), 1, "node-a"))
		c.pinned, c.namespace = dg("a"), ns
		cs = append(cs, c)
	}
	clean("reg.io/a:v1", "ns-a", 300)
	drifted("reg.io/a:v1", "ns-a")
	clean("reg.io/b:v1", "ns-b", 300)
	drifted("reg.io/b:v1", "ns-b")
	drifted("reg.io/c:v1", "ns-c")
	clean("reg.io/0-clean:v1", "ns-d", 1)
	images, summary, byNamespace := buildImages(nil, checkInput{now: t0, obs: obsOf(cs...), driftedFirst: true})
	omittedBy := map[string]int32{}
	for ns, s := range byNamespace {
		omittedBy[ns] = s.Omitted
	}
	if summary.Drifted != 3 {
		t.Fatalf("summary.drifted = %d, want 3", summary.Drifted)
	}
	listedDrift := 0
	for _, img := range images {
		for _, w := range img.Workloads {
			if w.Name == "drifted" {
				listedDrift++
			}
		}
		if len(img.Workloads) > 0 && img.Workloads[0].Name != "drifted" && img.Image != "reg.io/0-clean:v1" {
			t.Errorf("%s lists %s first, want its drifted entry first", img.Image, img.Workloads[0].Name)
		}
	}
	if listedDrift != 3 {
		t.Errorf("%d of 3 drifted entries listed: the bounds left a drifted one out for clean ones", listedDrift)
	}
	if images[len(images)-1].Image != "reg.io/0-clean:v1" {
		t.Errorf("the image without drift is listed at %v, want last", images)
	}
	var sum int32
	for _, n := range omittedBy {
		sum += n
	}
	if summary.Omitted == 0 || sum != summary.Omitted || omittedBy["ns-c"] != 0 {
		t.Errorf("omitted %d, by namespace %v: want the total split over the namespaces left out", summary.Omitted, omittedBy)
	}
}
