package e2e

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/crane"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// TestMutableTagStory replays the story of DESIGN.md on the local cluster:
// a re-pushed tag splits a Deployment's replicas across two builds, a
// re-apply changes nothing, and imagepin reports it, pins it, follows the
// tag with one rollout per change, rolls back by override, pins at
// admission, and rides out a registry outage. Each step waits for what a
// user would see, with a deadline, and checks it.
func TestMutableTagStory(t *testing.T) {
	ctx := context.Background()
	c := local.Client
	ns := "default"
	image := local.Registry.Host + "/demo/web:v1"
	kubectl := func(stdin string, args ...string) string {
		t.Helper()
		var in []byte
		if stdin != "" {
			in = []byte(stdin)
		}
		return kubectlAt(t, local.Kubeconfig, in, append([]string{"-n", ns}, args...)...)
	}

	// The story's scheduling (the replacement pod lands on the node that
	// never pulled :v1) assumes nodes that run nothing else.
	poll(t, "empty nodes", 60*time.Second, func() error {
		var pods corev1.PodList
		if err := c.List(ctx, &pods); err != nil {
			return err
		}
		if n := len(pods.Items); n > 0 {
			return fmt.Errorf("%d pods run", n)
		}
		return nil
	})

	// 1. Deploy :v1 with two replicas, by tag, as most manifests do.
	build1 := push(t, "demo/web:v1", "build 1")
	manifest := deploymentYAML("web", image, 2)
	kubectl(manifest, "apply", "-f", "-")
	pods := waitPods(t, ns, "web", func(ps []corev1.Pod) error {
		return runningOn(ps, map[string]imagesv1alpha1.Digest{"node-a": build1, "node-b": build1})
	})
	t.Logf("step 1: %s", describe(pods))

	// imagepin watches it.
	kubectl(`apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata: {name: web}
spec:
  selector: {matchLabels: {app: web}}
  mode: Observe
  interval: 10s
`, "apply", "-f", "-")
	pin := waitPin(t, ns, "the ImagePin to resolve :v1 to build 1", func(p *imagesv1alpha1.ImagePin) error {
		if err := condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue); err != nil {
			return err
		}
		return workloadImage(p, image, build1, []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned})
	})
	t.Logf("observe: %v", pin.Status.Conditions)

	// 2. CI pushes :v1 again with new content; imagepin sees the tag move.
	build2 := push(t, "demo/web:v1", "build 2")
	waitPin(t, ns, "TagMoved", func(p *imagesv1alpha1.ImagePin) error {
		return workloadImage(p, image, build2, []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved})
	})

	// 3. node-a is drained: its pod goes, and the replacement lands on a
	// node that has never pulled :v1, pulls the new bits, and the replicas
	// now differ.
	kubectlAt(t, local.Kubeconfig, nil, "cordon", "node-a")
	onA := podOn(t, pods, "node-a")
	if err := c.Delete(ctx, &onA); err != nil {
		t.Fatal(err)
	}
	pods = waitPods(t, ns, "web", func(ps []corev1.Pod) error {
		return runningOn(ps, map[string]imagesv1alpha1.Digest{"node-b": build1, "node-c": build2})
	})
	kubectlAt(t, local.Kubeconfig, nil, "uncordon", "node-a")
	t.Logf("step 3: %s", describe(pods))
	pin = waitPin(t, ns, "MixedReplicas with both digests and nodes", func(p *imagesv1alpha1.ImagePin) error {
		if err := workloadImage(p, image, build2, []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftMixedReplicas}); err != nil {
			return err
		}
		got := running(p)
		want := []string{fmt.Sprintf("%s=1[node-b]", build1), fmt.Sprintf("%s=1[node-c]", build2)}
		sort.Strings(want)
		if got != strings.Join(want, " ") {
			return fmt.Errorf("running %s, want %s", got, want)
		}
		return condition(p, imagesv1alpha1.ConditionDrifted, metav1.ConditionTrue)
	})

	// 4. Re-applying the same manifest rolls nothing out: the spec did not
	// change. The ImagePin says why the replicas differ.
	before := deployment(t, ns, "web")
	out := kubectl(manifest, "apply", "-f", "-")
	if !strings.Contains(out, "unchanged") {
		t.Errorf("re-apply: %q, want unchanged", out)
	}
	if after := deployment(t, ns, "web"); after.Generation != before.Generation {
		t.Errorf("re-applying the same manifest changed the Deployment: generation %d -> %d", before.Generation, after.Generation)
	}
	drifted := meta.FindStatusCondition(pin.Status.Conditions, imagesv1alpha1.ConditionDrifted)
	for _, want := range []string{image, "TagMoved", "MixedReplicas"} {
		if !strings.Contains(drifted.Message, want) {
			t.Errorf("Drifted message %q does not say %q", drifted.Message, want)
		}
	}
	t.Logf("step 4: Drifted: %s", drifted.Message)

	// 5. Pin: the Deployment names the tag's digest; every replica runs it.
	kubectl("", "patch", "ipin", "web", "--type=merge", "-p", `{"spec":{"mode":"Pin"}}`)
	waitImage(t, ns, "web", image+"@"+string(build2))
	pods = waitPods(t, ns, "web", allRun(build2, 2))
	t.Logf("step 5: %s", describe(pods))
	waitPin(t, ns, "no drift once pinned", func(p *imagesv1alpha1.ImagePin) error {
		if err := workloadImage(p, image, build2, nil); err != nil {
			return err
		}
		return condition(p, imagesv1alpha1.ConditionDrifted, metav1.ConditionFalse)
	})
	rsPinned := replicaSets(t, ns, "web")

	// 6. Follow: the tag moves once, the Deployment rolls out once.
	kubectl("", "patch", "ipin", "web", "--type=merge", "-p", `{"spec":{"mode":"Follow"}}`)
	build3 := push(t, "demo/web:v1", "build 3")
	waitImage(t, ns, "web", image+"@"+string(build3))
	pods = waitPods(t, ns, "web", allRun(build3, 2))
	t.Logf("step 6: %s", describe(pods))
	followed := deployment(t, ns, "web")
	// One more check of the tag, with nothing new: nothing more rolls out.
	checked := waitPin(t, ns, "a check after the rollout", func(p *imagesv1alpha1.ImagePin) error {
		return workloadImage(p, image, build3, nil)
	}).Status.LastCheckTime
	waitPin(t, ns, "the next check", func(p *imagesv1alpha1.ImagePin) error {
		if !p.Status.LastCheckTime.After(checked.Time) {
			return fmt.Errorf("last check %s", p.Status.LastCheckTime)
		}
		return nil
	})
	if got := replicaSets(t, ns, "web"); got != rsPinned+1 {
		t.Errorf("Follow made %d ReplicaSets for one tag move, want exactly 1", got-rsPinned)
	}
	if after := deployment(t, ns, "web"); after.Generation != followed.Generation {
		t.Errorf("the Deployment changed again after the Follow rollout: generation %d -> %d", followed.Generation, after.Generation)
	}

	// 7. Roll back by override to build 1, although the tag names build 3.
	kubectl("", "patch", "ipin", "web", "--type=merge", "-p",
		fmt.Sprintf(`{"spec":{"overrides":[{"image":%q,"digest":%q}]}}`, image, build1))
	waitImage(t, ns, "web", image+"@"+string(build1))
	pods = waitPods(t, ns, "web", allRun(build1, 2))
	t.Logf("step 7: %s", describe(pods))

	// 8. A new Deployment applied through the webhook arrives pinned: to
	// the override for :v1, and to what :v2 resolves to now.
	build4 := push(t, "demo/web:v2", "build 4")
	kubectl(deploymentYAML("web-v1", image, 1), "apply", "-f", "-")
	kubectl(deploymentYAML("web-v2", local.Registry.Host+"/demo/web:v2", 1), "apply", "-f", "-")
	if got := deployment(t, ns, "web-v1").Spec.Template.Spec.Containers[0].Image; got != image+"@"+string(build1) {
		t.Errorf("web-v1 was admitted as %s, want it pinned to the override %s", got, build1)
	}
	if got := deployment(t, ns, "web-v2").Spec.Template.Spec.Containers[0].Image; got != local.Registry.Host+"/demo/web:v2@"+string(build4) {
		t.Errorf("web-v2 was admitted as %s, want it pinned to %s", got, build4)
	}
	waitPods(t, ns, "web-v2", allRun(build4, 1))

	// 9. The registry goes down: the ImagePin keeps the last digests and
	// says why; applies still succeed, unpinned, with a warning.
	if err := local.Registry.Down(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		if err := local.Registry.Up(); err != nil {
			t.Error(err)
		}
	}()
	pin = waitPin(t, ns, "Ready=False and an error on every tag while the registry is down", func(p *imagesv1alpha1.ImagePin) error {
		for _, img := range p.Status.Images {
			if img.Error == "" {
				return fmt.Errorf("%s has no error yet", img.Image)
			}
		}
		return condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionFalse)
	})
	ready := meta.FindStatusCondition(pin.Status.Conditions, imagesv1alpha1.ConditionReady)
	if !strings.Contains(ready.Message, "last digests kept") {
		t.Errorf("Ready message %q does not say the last digests are kept", ready.Message)
	}
	for _, img := range pin.Status.Images {
		want := map[string]string{image: string(build3), local.Registry.Host + "/demo/web:v2": string(build4)}[img.Image]
		if string(img.Digest) != want {
			t.Errorf("while the registry is down %s shows digest %s, want the last digest %s", img.Image, img.Digest, want)
		}
	}
	stdout, stderr, err := runKubectl(local.Kubeconfig, []byte(deploymentYAML("web-v3", local.Registry.Host+"/demo/web:v2", 1)), "-n", ns, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("apply while the registry is down failed: %v\n%s", err, stderr)
	}
	if !strings.Contains(stderr, "Warning: imagepin: admitted unpinned") {
		t.Errorf("apply while the registry is down: no admission warning on stderr:\n%s%s", stdout, stderr)
	}
	if got := deployment(t, ns, "web-v3").Spec.Template.Spec.Containers[0].Image; got != local.Registry.Host+"/demo/web:v2" {
		t.Errorf("web-v3 admitted as %s, want it unchanged", got)
	}
	t.Logf("step 9: %s", strings.TrimSpace(stderr))
}

// push pushes a one-file image holding content to the registry as repoTag,
// as a CI pipeline does, and returns its digest.
func push(t *testing.T, repoTag, content string) imagesv1alpha1.Digest {
	t.Helper()
	layer, err := crane.Layer(map[string][]byte{"version.txt": []byte(content + "\n")})
	if err != nil {
		t.Fatal(err)
	}
	img, err := mutate.AppendLayers(empty.Image, layer)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.ParseReference(local.Registry.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	auth := &authn.Basic{Username: local.Registry.User, Password: local.Registry.Password}
	if err := remote.Write(ref, img, remote.WithAuth(auth), remote.WithTransport(local.Registry.Transport())); err != nil {
		t.Fatalf("push %s: %v", ref, err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return imagesv1alpha1.Digest(d.String())
}

func deploymentYAML(name, image string, replicas int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata:
  name: %[1]s
  labels: {app: web}
spec:
  replicas: %[3]d
  selector: {matchLabels: {run: %[1]s}}
  template:
    metadata: {labels: {run: %[1]s}}
    spec:
      containers:
      - name: web
        image: %[2]s
`, name, image, replicas)
}

// poll calls check until it returns nil, failing the test with its last
// error after the deadline.
func poll(t *testing.T, what string, timeout time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %v", what, err)
		}
		time.Sleep(200 * time.Millisecond)
	}
}

// waitPods waits until the live (not terminating) pods of Deployment name
// pass check, and returns them.
func waitPods(t *testing.T, ns, deploy string, check func([]corev1.Pod) error) []corev1.Pod {
	t.Helper()
	var live []corev1.Pod
	poll(t, "the pods of "+deploy, 60*time.Second, func() error {
		var list corev1.PodList
		if err := local.Client.List(context.Background(), &list, client.InNamespace(ns), client.MatchingLabels{"run": deploy}); err != nil {
			return err
		}
		live = live[:0]
		for _, p := range list.Items {
			if p.DeletionTimestamp == nil {
				live = append(live, p)
			}
		}
		if err := check(live); err != nil {
			return fmt.Errorf("%w (pods: %s)", err, describe(live))
		}
		return nil
	})
	return live
}

// runningOn checks that exactly the nodes in want run one Ready pod each,
// with the digest given as its imageID.
func runningOn(pods []corev1.Pod, want map[string]imagesv1alpha1.Digest) error {
	if len(pods) != len(want) {
		return fmt.Errorf("%d pods, want %d", len(pods), len(want))
	}
	for _, p := range pods {
		d, ok := want[p.Spec.NodeName]
		if !ok {
			return fmt.Errorf("pod %s on node %q", p.Name, p.Spec.NodeName)
		}
		if got := runningDigest(p); got != string(d) {
			return fmt.Errorf("pod %s on %s runs %q, want %s", p.Name, p.Spec.NodeName, got, d)
		}
	}
	return nil
}

// allRun checks that n Ready pods run digest.
func allRun(digest imagesv1alpha1.Digest, n int) func([]corev1.Pod) error {
	return func(pods []corev1.Pod) error {
		if len(pods) != n {
			return fmt.Errorf("%d pods, want %d", len(pods), n)
		}
		for _, p := range pods {
			if got := runningDigest(p); got != string(digest) {
				return fmt.Errorf("pod %s runs %q, want %s", p.Name, got, digest)
			}
		}
		return nil
	}
}

// runningDigest is the digest of a Ready pod's first container's imageID.
func runningDigest(p corev1.Pod) string {
	if p.Status.Phase != corev1.PodRunning || len(p.Status.ContainerStatuses) == 0 || !p.Status.ContainerStatuses[0].Ready {
		return ""
	}
	id := p.Status.ContainerStatuses[0].ImageID
	if i := strings.LastIndex(id, "@"); i >= 0 {
		return id[i+1:]
	}
	return ""
}

func podOn(t *testing.T, pods []corev1.Pod, node string) corev1.Pod {
	t.Helper()
	for _, p := range pods {
		if p.Spec.NodeName == node {
			return p
		}
	}
	t.Fatalf("no pod on %s", node)
	return corev1.Pod{}
}

func describe(pods []corev1.Pod) string {
	var out []string
	for _, p := range pods {
		var id string
		if len(p.Status.ContainerStatuses) > 0 {
			id = p.Status.ContainerStatuses[0].ImageID
		}
		out = append(out, fmt.Sprintf("%s on %q %s %s", p.Name, p.Spec.NodeName, p.Status.Phase, id))
	}
	sort.Strings(out)
	return strings.Join(out, "; ")
}

func deployment(t *testing.T, ns, name string) *appsv1.Deployment {
	t.Helper()
	d := &appsv1.Deployment{}
	if err := local.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
		t.Fatal(err)
	}
	return d
}

// waitImage waits until Deployment name's template names image.
func waitImage(t *testing.T, ns, deploy, image string) {
	t.Helper()
	poll(t, deploy+" to name "+image, 45*time.Second, func() error {
		d := &appsv1.Deployment{}
		if err := local.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: deploy}, d); err != nil {
			return err
		}
		if got := d.Spec.Template.Spec.Containers[0].Image; got != image {
			return fmt.Errorf("it names %s", got)
		}
		return nil
	})
}

// replicaSets counts Deployment name's ReplicaSets: one per rollout.
func replicaSets(t *testing.T, ns, deploy string) int {
	t.Helper()
	var list appsv1.ReplicaSetList
	if err := local.Client.List(context.Background(), &list, client.InNamespace(ns), client.MatchingLabels{"run": deploy}); err != nil {
		t.Fatal(err)
	}
	return len(list.Items)
}

// waitPin waits until ImagePin web of namespace ns passes check and
// returns it.
func waitPin(t *testing.T, ns, what string, check func(*imagesv1alpha1.ImagePin) error) *imagesv1alpha1.ImagePin {
	t.Helper()
	return waitPinWithin(t, ns, what, 45*time.Second, check)
}

// waitPinWithin is waitPin with a deadline of its own.
func waitPinWithin(t *testing.T, ns, what string, timeout time.Duration, check func(*imagesv1alpha1.ImagePin) error) *imagesv1alpha1.ImagePin {
	t.Helper()
	p := &imagesv1alpha1.ImagePin{}
	poll(t, what, timeout, func() error {
		if err := local.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: "web"}, p); err != nil {
			return err
		}
		return check(p)
	})
	return p
}

func condition(p *imagesv1alpha1.ImagePin, typ string, want metav1.ConditionStatus) error {
	c := meta.FindStatusCondition(p.Status.Conditions, typ)
	if c == nil || c.Status != want {
		return fmt.Errorf("condition %s is %v, want %s", typ, c, want)
	}
	if c.ObservedGeneration != p.Generation {
		return fmt.Errorf("condition %s is for generation %d, not %d", typ, c.ObservedGeneration, p.Generation)
	}
	return nil
}

// workloadImage checks that the ImagePin resolves image to digest and that
// Deployment web's container reports exactly the drift reasons want.
func workloadImage(p *imagesv1alpha1.ImagePin, image string, digest imagesv1alpha1.Digest, want []imagesv1alpha1.DriftReason) error {
	for _, img := range p.Status.Images {
		if img.Image != image {
			continue
		}
		if img.Digest != digest {
			return fmt.Errorf("%s resolves to %s, want %s", image, img.Digest, digest)
		}
		for _, w := range img.Workloads {
			if w.Kind == imagesv1alpha1.KindDeployment && w.Name == "web" {
				got := slices.Clone(w.Drift)
				slices.Sort(got)
				exp := slices.Clone(want)
				slices.Sort(exp)
				if !slices.Equal(got, exp) {
					return fmt.Errorf("drift %v, want %v", w.Drift, want)
				}
				return nil
			}
		}
		return fmt.Errorf("%s has no entry for Deployment web", image)
	}
	return fmt.Errorf("no status for %s", image)
}

// running renders Deployment web's running digests as digest=pods[nodes].
func running(p *imagesv1alpha1.ImagePin) string {
	var parts []string
	for _, img := range p.Status.Images {
		for _, w := range img.Workloads {
			if w.Kind != imagesv1alpha1.KindDeployment || w.Name != "web" {
				continue
			}
			for _, r := range w.Running {
				parts = append(parts, fmt.Sprintf("%s=%d%v", r.Digest, r.Pods, r.Nodes))
			}
		}
	}
	sort.Strings(parts)
	return strings.Join(parts, " ")
}
