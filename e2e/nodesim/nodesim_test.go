package nodesim_test

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"net/http"
	"os"
	"runtime"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imagepin/imagepin/e2e/nodesim"
	"github.com/imagepin/imagepin/internal/registry/registrytest"
	"github.com/imagepin/imagepin/internal/testenv"
)

var (
	env *testenv.Env
	// k8s talks to the API server directly, never through a cache.
	k8s client.Client
	sim *nodesim.Simulator
	// reg is an anonymous plain-HTTP registry; private a distribution
	// registry with htpasswd auth and TLS, which the simulator's transport
	// trusts.
	reg       *registrytest.Registry
	private   *testenv.Registry
	transport *http.Transport
)

// The simulator runs these nodes. node-x exists before the simulator
// starts, cordoned: it takes over the Node and keeps it unschedulable.
var (
	storyNodes = []string{"node-a", "node-b", "node-c"}
	allNodes   = append(slices.Clone(storyNodes), "node-x")
)

const terminationDelay = 2 * time.Second

func TestMain(m *testing.M) {
	flag.Parse()
	os.Exit(runTests(m))
}

func runTests(m *testing.M) int {
	fail := func(err error) int {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	var err error
	if env, err = testenv.Start(); err != nil {
		return fail(err)
	}
	defer func() {
		if err := env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop control plane:", err)
		}
	}()
	if k8s, err = client.New(env.Config, client.Options{Scheme: env.Scheme}); err != nil {
		return fail(err)
	}
	dir, err := os.MkdirTemp("", "nodesim-")
	if err != nil {
		return fail(err)
	}
	defer func() { _ = os.RemoveAll(dir) }()
	stopKCM, err := env.StartControllerManager(dir)
	if err != nil {
		return fail(err)
	}
	defer stopKCM()
	reg = registrytest.New()
	defer reg.Close()
	if private, err = testenv.StartRegistry(); err != nil {
		return fail(err)
	}
	defer func() { _ = private.Stop() }()
	transport = http.DefaultTransport.(*http.Transport).Clone()
	transport.TLSClientConfig = &tls.Config{RootCAs: private.CAPool, MinVersion: tls.VersionTLS12}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	if err := k8s.Create(ctx, &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "node-x"},
		Spec:       corev1.NodeSpec{Unschedulable: true},
	}); err != nil {
		return fail(err)
	}
	verbosity := 0
	if testing.Verbose() {
		verbosity = 1
	}
	log := funcr.New(func(prefix, args string) { fmt.Fprintln(os.Stderr, "nodesim:", prefix, args) }, funcr.Options{Verbosity: verbosity})
	if sim, err = nodesim.New(env.Config, nodesim.Options{
		Nodes:            allNodes,
		Transport:        transport,
		TerminationDelay: terminationDelay,
		Log:              log,
	}); err != nil {
		return fail(err)
	}
	done := make(chan error, 1)
	go func() { done <- sim.Run(ctx) }()

	code := m.Run()

	cancel()
	select {
	case err := <-done:
		if err != nil {
			return fail(fmt.Errorf("simulator: %w", err))
		}
	case <-time.After(15 * time.Second):
		return fail(errors.New("simulator: Run did not return within 15s of its context ending"))
	}
	if err := noLeftoverGoroutines(); err != nil {
		return fail(err)
	}
	return code
}

// noLeftoverGoroutines checks that nothing the simulator started outlives
// Run: its workers, queues and informers.
func noLeftoverGoroutines() error {
	deadline := time.Now().Add(5 * time.Second)
	for {
		buf := make([]byte, 1<<22)
		stacks := string(buf[:runtime.Stack(buf, true)])
		var left []string
		for _, g := range strings.Split(stacks, "\n\n") {
			for _, marker := range []string{"e2e/nodesim.(*Simulator)", "client-go/tools/cache.", "client-go/util/workqueue."} {
				if strings.Contains(g, marker) {
					left = append(left, g)
					break
				}
			}
		}
		if len(left) == 0 {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("goroutines left after Run returned:\n%s", strings.Join(left, "\n\n"))
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// --- helpers ---

// eventually polls check until it returns nil, and fails the test with the
// last error once within has passed.
func eventually(t *testing.T, within time.Duration, check func() error) {
	t.Helper()
	deadline := time.Now().Add(within)
	for {
		err := check()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("condition not met within %v: %v", within, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// consistently checks that check holds for the whole of within: for what
// must not happen, given the time it would take to happen.
func consistently(t *testing.T, within time.Duration, check func() error) {
	t.Helper()
	for end := time.Now().Add(within); ; time.Sleep(50 * time.Millisecond) {
		if err := check(); err != nil {
			t.Fatal(err)
		}
		if time.Now().After(end) {
			return
		}
	}
}

// namespace creates a namespace for one test, and deletes what the test
// made in it at the end, waiting for its pods to be gone so that the next
// test starts with empty nodes.
func namespace(t *testing.T) string {
	t.Helper()
	ns := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{GenerateName: "nodesim-"}}
	if err := k8s.Create(context.Background(), ns); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx := context.Background()
		bg := client.PropagationPolicy(metav1.DeletePropagationBackground)
		_ = k8s.DeleteAllOf(ctx, &appsv1.Deployment{}, client.InNamespace(ns.Name), bg)
		_ = k8s.DeleteAllOf(ctx, &appsv1.DaemonSet{}, client.InNamespace(ns.Name), bg)
		_ = k8s.DeleteAllOf(ctx, &corev1.Pod{}, client.InNamespace(ns.Name))
		eventually(t, 30*time.Second, func() error {
			var pods corev1.PodList
			if err := k8s.List(ctx, &pods, client.InNamespace(ns.Name)); err != nil {
				return err
			}
			for i := range pods.Items {
				p := &pods.Items[i]
				if p.DeletionTimestamp == nil {
					_ = k8s.Delete(ctx, p)
				} else if !slices.Contains(sim.Nodes(), p.Spec.NodeName) {
					// No kubelet will finish it.
					_ = k8s.Delete(ctx, p, client.GracePeriodSeconds(0))
				}
			}
			if n := len(pods.Items); n > 0 {
				return fmt.Errorf("%d pods left in %s", n, ns.Name)
			}
			return nil
		})
	})
	return ns.Name
}

type podOpt func(*corev1.Pod)

func newPod(ns, name, image string, opts ...podOpt) *corev1.Pod {
	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "app", Image: image}}},
	}
	for _, o := range opts {
		o(p)
	}
	return p
}

func pullPolicy(policy corev1.PullPolicy) podOpt {
	return func(p *corev1.Pod) { p.Spec.Containers[0].ImagePullPolicy = policy }
}

func onNode(node string) podOpt {
	return func(p *corev1.Pod) { p.Spec.NodeSelector = map[string]string{corev1.LabelHostname: node} }
}

func pullSecret(name string) podOpt {
	return func(p *corev1.Pod) {
		p.Spec.ImagePullSecrets = append(p.Spec.ImagePullSecrets, corev1.LocalObjectReference{Name: name})
	}
}

func create(t *testing.T, objs ...client.Object) {
	t.Helper()
	for _, o := range objs {
		if err := k8s.Create(context.Background(), o); err != nil {
			t.Fatalf("create %T %s: %v", o, o.GetName(), err)
		}
	}
}

func getPod(ns, name string) (*corev1.Pod, error) {
	var p corev1.Pod
	err := k8s.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, &p)
	return &p, err
}

// gone says whether the pod no longer exists.
func gone(ns, name string) error {
	_, err := getPod(ns, name)
	switch {
	case apierrors.IsNotFound(err):
		return nil
	case err != nil:
		return err
	}
	return fmt.Errorf("pod %s/%s is still there", ns, name)
}

func podCondition(p *corev1.Pod, typ corev1.PodConditionType) *corev1.PodCondition {
	for i := range p.Status.Conditions {
		if p.Status.Conditions[i].Type == typ {
			return &p.Status.Conditions[i]
		}
	}
	return nil
}

// running checks that p is Running and Ready with every container running
// and ready, and that its first container runs imageID.
func running(p *corev1.Pod, imageID string) error {
	if p.Status.Phase != corev1.PodRunning {
		return fmt.Errorf("pod %s is %q, not Running: %+v", p.Name, p.Status.Phase, p.Status.ContainerStatuses)
	}
	for _, typ := range []corev1.PodConditionType{corev1.PodScheduled, corev1.PodInitialized, corev1.ContainersReady, corev1.PodReady} {
		if c := podCondition(p, typ); c == nil || c.Status != corev1.ConditionTrue {
			return fmt.Errorf("pod %s: condition %s is %+v", p.Name, typ, c)
		}
	}
	if len(p.Status.ContainerStatuses) != len(p.Spec.Containers) {
		return fmt.Errorf("pod %s: %d container statuses for %d containers", p.Name, len(p.Status.ContainerStatuses), len(p.Spec.Containers))
	}
	for _, cs := range p.Status.ContainerStatuses {
		if cs.State.Running == nil || !cs.Ready || cs.Started == nil || !*cs.Started {
			return fmt.Errorf("pod %s: container %s is not running and ready: %+v", p.Name, cs.Name, cs)
		}
		if !strings.HasPrefix(cs.ContainerID, "nodesim://") {
			return fmt.Errorf("pod %s: container %s has container ID %q", p.Name, cs.Name, cs.ContainerID)
		}
	}
	if got := p.Status.ContainerStatuses[0].ImageID; got != imageID {
		return fmt.Errorf("pod %s on %s runs %s, want %s", p.Name, p.Spec.NodeName, got, imageID)
	}
	if p.Status.HostIP == "" || p.Status.PodIP == "" || p.Status.StartTime == nil {
		return fmt.Errorf("pod %s: hostIP %q podIP %q startTime %v", p.Name, p.Status.HostIP, p.Status.PodIP, p.Status.StartTime)
	}
	return nil
}

// waiting checks that p's first container waits for one of reasons, and
// the pod is Pending and not Ready.
func waiting(p *corev1.Pod, reasons ...string) error {
	if len(p.Status.ContainerStatuses) == 0 {
		return fmt.Errorf("pod %s has no container statuses yet", p.Name)
	}
	cs := p.Status.ContainerStatuses[0]
	if cs.State.Waiting == nil || !slices.Contains(reasons, cs.State.Waiting.Reason) {
		return fmt.Errorf("pod %s: container %s state %+v, want waiting for %v", p.Name, cs.Name, cs.State, reasons)
	}
	if p.Status.Phase != corev1.PodPending {
		return fmt.Errorf("pod %s is %q, want Pending", p.Name, p.Status.Phase)
	}
	if c := podCondition(p, corev1.PodReady); c == nil || c.Status != corev1.ConditionFalse {
		return fmt.Errorf("pod %s: Ready is %+v, want False", p.Name, c)
	}
	return nil
}

func waitPod(t *testing.T, ns, name string, check func(*corev1.Pod) error) *corev1.Pod {
	t.Helper()
	var p *corev1.Pod
	eventually(t, 30*time.Second, func() error {
		var err error
		if p, err = getPod(ns, name); err != nil {
			return err
		}
		return check(p)
	})
	return p
}

// waitNodesEmpty waits until no pod is on the story's nodes, terminating
// ones included, so that the scheduler's choices are the story's.
func waitNodesEmpty(t *testing.T) {
	t.Helper()
	eventually(t, 30*time.Second, func() error {
		var pods corev1.PodList
		if err := k8s.List(context.Background(), &pods); err != nil {
			return err
		}
		for _, p := range pods.Items {
			if slices.Contains(storyNodes, p.Spec.NodeName) {
				return fmt.Errorf("pod %s/%s is still on %s", p.Namespace, p.Name, p.Spec.NodeName)
			}
		}
		return nil
	})
}

// pushPrivate pushes a random image to the private registry.
func pushPrivate(t *testing.T, repoTag string) string {
	t.Helper()
	img, err := random.Image(512, 2)
	if err != nil {
		t.Fatal(err)
	}
	ref, err := name.NewTag(private.Host + "/" + repoTag)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(ref, img, remote.WithAuth(&authn.Basic{Username: private.User, Password: private.Password}), remote.WithTransport(transport)); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

func cachedEntry(node, digestRef string) *nodesim.CachedImage {
	for _, img := range sim.Cached(node) {
		if img.Names[0] == digestRef {
			return &img
		}
	}
	return nil
}

// --- tests ---

func TestNodesRegisteredAndReady(t *testing.T) {
	for i, n := range allNodes {
		if !slices.Contains(sim.Nodes(), n) {
			continue // node-x, deleted by an earlier run of a later test
		}
		eventually(t, 10*time.Second, func() error {
			var node corev1.Node
			if err := k8s.Get(context.Background(), client.ObjectKey{Name: n}, &node); err != nil {
				return err
			}
			for k, v := range map[string]string{corev1.LabelHostname: n, corev1.LabelOSStable: "linux", corev1.LabelArchStable: "amd64"} {
				if node.Labels[k] != v {
					return fmt.Errorf("node %s: label %s=%q, want %q", n, k, node.Labels[k], v)
				}
			}
			var ready *corev1.NodeCondition
			for j := range node.Status.Conditions {
				if node.Status.Conditions[j].Type == corev1.NodeReady {
					ready = &node.Status.Conditions[j]
				}
			}
			if ready == nil || ready.Status != corev1.ConditionTrue || ready.Reason != "KubeletReady" || ready.LastHeartbeatTime.IsZero() {
				return fmt.Errorf("node %s: Ready condition %+v", n, ready)
			}
			for res, want := range map[corev1.ResourceName]string{corev1.ResourceCPU: "8", corev1.ResourceMemory: "32Gi", corev1.ResourcePods: "110"} {
				for _, list := range []corev1.ResourceList{node.Status.Capacity, node.Status.Allocatable} {
					if q, ok := list[res]; !ok || q.Cmp(resource.MustParse(want)) != 0 {
						return fmt.Errorf("node %s: %s is %v, want %s", n, res, list[res], want)
					}
				}
			}
			wantAddrs := []corev1.NodeAddress{
				{Type: corev1.NodeInternalIP, Address: fmt.Sprintf("127.0.0.%d", i+1)},
				{Type: corev1.NodeHostName, Address: n},
			}
			if !slices.Equal(node.Status.Addresses, wantAddrs) {
				return fmt.Errorf("node %s: addresses %v, want %v", n, node.Status.Addresses, wantAddrs)
			}
			info := node.Status.NodeInfo
			if info.KubeletVersion != nodesim.KubeletVersion || info.ContainerRuntimeVersion != "nodesim://1" ||
				info.OperatingSystem != "linux" || info.Architecture != "amd64" {
				return fmt.Errorf("node %s: node info %+v", n, info)
			}
			if node.Spec.Unschedulable != (n == "node-x") {
				return fmt.Errorf("node %s: unschedulable is %v", n, node.Spec.Unschedulable)
			}
			return nil
		})
	}
}

// The mutable-tag story: a Deployment of repo:v1 runs what each node
// pulled when it first needed v1, and a re-pushed v1 reaches only nodes
// that pull again.
func TestMutableTagStory(t *testing.T) {
	waitNodesEmpty(t)
	ns := namespace(t)
	ctx := context.Background()
	repo := reg.Host + "/" + ns + "/app"
	image := repo + ":v1"
	digest1 := reg.Push(t, ns+"/app:v1")

	labels := map[string]string{"app": "story"}
	dep := &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "story", Namespace: ns},
		Spec: appsv1.DeploymentSpec{
			Replicas: ptr.To[int32](2),
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{Containers: []corev1.Container{{
					Name: "app", Image: image, ImagePullPolicy: corev1.PullIfNotPresent,
				}}},
			},
		},
	}
	create(t, dep)

	// byNode lists the Deployment's pods by node, terminating ones apart.
	byNode := func() (map[string]corev1.Pod, []corev1.Pod, error) {
		var pods corev1.PodList
		if err := k8s.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(labels)); err != nil {
			return nil, nil, err
		}
		live := map[string]corev1.Pod{}
		var terminating []corev1.Pod
		for _, p := range pods.Items {
			switch {
			case p.DeletionTimestamp != nil:
				terminating = append(terminating, p)
			case p.Spec.NodeName == "":
				return nil, nil, fmt.Errorf("pod %s is not scheduled", p.Name)
			default:
				if other, dup := live[p.Spec.NodeName]; dup {
					return nil, nil, fmt.Errorf("pods %s and %s both on %s", p.Name, other.Name, p.Spec.NodeName)
				}
				live[p.Spec.NodeName] = p
			}
		}
		return live, terminating, nil
	}
	nodesOf := func(m map[string]corev1.Pod) []string {
		var out []string
		for n := range m {
			out = append(out, n)
		}
		sort.Strings(out)
		return out
	}

	// Two replicas land on node-a and node-b and run digest1.
	var first map[string]corev1.Pod
	eventually(t, 30*time.Second, func() error {
		live, _, err := byNode()
		if err != nil {
			return err
		}
		if got := nodesOf(live); !slices.Equal(got, []string{"node-a", "node-b"}) {
			return fmt.Errorf("pods on %v, want node-a and node-b", got)
		}
		for _, p := range live {
			if err := running(&p, repo+"@"+digest1); err != nil {
				return err
			}
		}
		first = live
		return nil
	})
	for n, p := range first {
		if want := map[string]string{"node-a": "127.0.0.1", "node-b": "127.0.0.2"}[n]; p.Status.HostIP != want {
			t.Errorf("pod on %s has hostIP %s, want %s", n, p.Status.HostIP, want)
		}
		if p.Spec.Containers[0].Image != image || p.Status.ContainerStatuses[0].Image != image {
			t.Errorf("pod on %s: image %q, status image %q, want %q", n, p.Spec.Containers[0].Image, p.Status.ContainerStatuses[0].Image, image)
		}
	}
	waitDeploymentReady := func() {
		t.Helper()
		eventually(t, 30*time.Second, func() error {
			var d appsv1.Deployment
			if err := k8s.Get(ctx, client.ObjectKeyFromObject(dep), &d); err != nil {
				return err
			}
			if d.Status.ReadyReplicas != 2 || d.Status.AvailableReplicas != 2 {
				return fmt.Errorf("deployment: %d ready, %d available, want 2", d.Status.ReadyReplicas, d.Status.AvailableReplicas)
			}
			return nil
		})
	}
	waitDeploymentReady()

	// v1 is re-pushed with new content. The pod on node-a is deleted: its
	// replacement goes to node-c, the emptiest node while node-a still
	// holds the terminating pod, which pulls v1 afresh and gets digest2.
	digest2 := reg.Push(t, ns+"/app:v1")
	if digest2 == digest1 {
		t.Fatal("re-push made the same digest")
	}
	podA, podB := first["node-a"], first["node-b"]
	deleted := time.Now()
	if err := k8s.Delete(ctx, &podA); err != nil {
		t.Fatal(err)
	}
	eventually(t, 30*time.Second, func() error {
		live, _, err := byNode()
		if err != nil {
			return err
		}
		if got := nodesOf(live); !slices.Equal(got, []string{"node-b", "node-c"}) {
			return fmt.Errorf("live pods on %v, want node-b and node-c", got)
		}
		if err := running(ptr.To(live["node-c"]), repo+"@"+digest2); err != nil {
			return err
		}
		if p := live["node-b"]; p.UID != podB.UID {
			return fmt.Errorf("the pod on node-b was replaced")
		}
		return running(ptr.To(live["node-b"]), repo+"@"+digest1)
	})
	eventually(t, 30*time.Second, func() error {
		return gone(ns, podA.Name)
	})
	if took := time.Since(deleted); took < terminationDelay {
		t.Errorf("the deleted pod was removed after %v, before the termination delay %v", took, terminationDelay)
	}
	waitDeploymentReady()

	// node-a still caches v1 -> digest1: an IfNotPresent pod there runs
	// digest1 without asking the registry.
	_, getsBefore := reg.ManifestRequests()
	create(t, newPod(ns, "stale", image, onNode("node-a"), pullPolicy(corev1.PullIfNotPresent)))
	waitPod(t, ns, "stale", func(p *corev1.Pod) error { return running(p, repo+"@"+digest1) })
	if _, gets := reg.ManifestRequests(); gets != getsBefore {
		t.Errorf("an IfNotPresent pod on a node caching the tag made %d manifest requests", gets-getsBefore)
	}

	// An Always pod on node-b, whose cache has v1 -> digest1, asks the
	// registry and gets digest2; the Deployment's pod there keeps digest1.
	create(t, newPod(ns, "fresh", image, onNode("node-b"), pullPolicy(corev1.PullAlways)))
	p := waitPod(t, ns, "fresh", func(p *corev1.Pod) error { return running(p, repo+"@"+digest2) })
	if p.Spec.NodeName != "node-b" {
		t.Errorf("pod with nodeSelector node-b bound to %s", p.Spec.NodeName)
	}
	if _, gets := reg.ManifestRequests(); gets == getsBefore {
		t.Error("an Always pod did not ask the registry")
	}
	if p, err := getPod(ns, podB.Name); err != nil || running(p, repo+"@"+digest1) != nil {
		t.Errorf("the Deployment's pod on node-b no longer runs digest1: %v", err)
	}

	// node-b's cache and status.images hold both digests, the newest
	// first, v1 naming digest2. (Earlier tests' images follow.)
	want := [][]string{{repo + "@" + digest2, image}, {repo + "@" + digest1}}
	sizes := map[string]int64{}
	var gotNames [][]string
	for _, img := range sim.Cached("node-b") {
		if strings.HasPrefix(img.Names[0], repo+"@") {
			gotNames = append(gotNames, img.Names)
		}
		sizes[img.Names[0]] = img.SizeBytes
		if img.SizeBytes <= 0 {
			t.Errorf("cached %v has size %d", img.Names, img.SizeBytes)
		}
	}
	if !slices.EqualFunc(gotNames, want, slices.Equal) {
		t.Errorf("node-b caches %v, want %v", gotNames, want)
	}
	eventually(t, 10*time.Second, func() error {
		var node corev1.Node
		if err := k8s.Get(ctx, client.ObjectKey{Name: "node-b"}, &node); err != nil {
			return err
		}
		var got [][]string
		for _, img := range node.Status.Images {
			if !strings.HasPrefix(img.Names[0], repo+"@") {
				continue
			}
			got = append(got, img.Names)
			if img.SizeBytes != sizes[img.Names[0]] {
				return fmt.Errorf("status.images %v has size %d, cache says %d", img.Names, img.SizeBytes, sizes[img.Names[0]])
			}
		}
		if !slices.EqualFunc(got, want, slices.Equal) || !slices.Equal(node.Status.Images[0].Names, want[0]) {
			return fmt.Errorf("node-b status.images %v, want %v first", node.Status.Images, want)
		}
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status != corev1.ConditionTrue {
				return fmt.Errorf("node-b not Ready: %+v", c)
			}
		}
		return nil
	})
	// node-c never pulled digest1.
	if e := cachedEntry("node-c", repo+"@"+digest1); e != nil {
		t.Errorf("node-c caches %v", e.Names)
	}
}

// Pulls use the pod's image pull secrets and nothing else; without them a
// private image fails with ErrImagePull, then ImagePullBackOff, and the
// message never shows credentials.
func TestPullSecrets(t *testing.T) {
	ns := namespace(t)
	digest := pushPrivate(t, ns+"/ok:v1")
	pushPrivate(t, ns+"/locked:v1")
	wrongPassword := "wrong-" + fmt.Sprint(time.Now().UnixNano())
	create(t,
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "regcred", Namespace: ns},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(private.Host, private.User, private.Password)},
		},
		&corev1.Secret{
			ObjectMeta: metav1.ObjectMeta{Name: "badcred", Namespace: ns},
			Type:       corev1.SecretTypeDockerConfigJson,
			Data:       map[string][]byte{corev1.DockerConfigJsonKey: testenv.DockerConfigJSON(private.Host, "someone", wrongPassword)},
		},
		newPod(ns, "with-secret", private.Host+"/"+ns+"/ok:v1", pullSecret("missing"), pullSecret("regcred")),
		newPod(ns, "no-secret", private.Host+"/"+ns+"/locked:v1"),
		newPod(ns, "bad-secret", private.Host+"/"+ns+"/locked:v1", pullSecret("badcred")),
	)
	waitPod(t, ns, "with-secret", func(p *corev1.Pod) error { return running(p, private.Host+"/"+ns+"/ok@"+digest) })

	for _, name := range []string{"no-secret", "bad-secret"} {
		waitPod(t, ns, name, func(p *corev1.Pod) error { return waiting(p, "ErrImagePull", "ImagePullBackOff") })
		// Retries back off: the reason moves on to ImagePullBackOff.
		p := waitPod(t, ns, name, func(p *corev1.Pod) error { return waiting(p, "ImagePullBackOff") })
		msg := p.Status.ContainerStatuses[0].State.Waiting.Message
		if !strings.Contains(strings.ToLower(msg), "unauthorized") {
			t.Errorf("%s: message %q does not say the registry refused", name, msg)
		}
		for _, secret := range []string{private.Password, wrongPassword} {
			if strings.Contains(msg, secret) {
				t.Errorf("%s: message %q shows a password", name, msg)
			}
		}
		if p.Spec.NodeName == "" || p.Status.ContainerStatuses[0].ImageID != "" {
			t.Errorf("%s: node %q, imageID %q", name, p.Spec.NodeName, p.Status.ContainerStatuses[0].ImageID)
		}
	}
}

func TestPullPolicyNever(t *testing.T) {
	ns := namespace(t)
	repo := reg.Host + "/" + ns + "/app"
	digest := reg.Push(t, ns+"/app:v1")
	create(t, newPod(ns, "warm", repo+":v1", onNode("node-c")))
	waitPod(t, ns, "warm", func(p *corev1.Pod) error { return running(p, repo+"@"+digest) })
	create(t,
		newPod(ns, "cached", repo+":v1", onNode("node-c"), pullPolicy(corev1.PullNever)),
		// A tag plus digest reference is a digest reference.
		newPod(ns, "by-digest", repo+":whatever@"+digest, onNode("node-c"), pullPolicy(corev1.PullNever)),
		// Bound by its spec: the kubelet of node-a runs it.
		newPod(ns, "absent", repo+":v1", pullPolicy(corev1.PullNever), func(p *corev1.Pod) { p.Spec.NodeName = "node-a" }),
	)
	waitPod(t, ns, "cached", func(p *corev1.Pod) error { return running(p, repo+"@"+digest) })
	waitPod(t, ns, "by-digest", func(p *corev1.Pod) error { return running(p, repo+"@"+digest) })
	p := waitPod(t, ns, "absent", func(p *corev1.Pod) error { return waiting(p, "ErrImageNeverPull") })
	if msg := p.Status.ContainerStatuses[0].State.Waiting.Message; !strings.Contains(msg, "not present with pull policy of Never") {
		t.Errorf("message %q", msg)
	}
	if p.Status.HostIP != "127.0.0.1" {
		t.Errorf("pod bound to node-a by its spec has hostIP %q", p.Status.HostIP)
	}
}

// Init containers complete, then the containers run; a new image for a
// running container restarts it with that image. Statuses are written only
// when they change.
func TestInitContainersAndImageChange(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	repo := reg.Host + "/" + ns + "/app"
	digest1 := reg.Push(t, ns+"/app:v1")
	digest2 := reg.Push(t, ns+"/app:v2")
	create(t, newPod(ns, "app", repo+":v1", func(p *corev1.Pod) {
		p.Spec.InitContainers = []corev1.Container{
			{Name: "init", Image: repo + ":v1"},
			{Name: "sidecar", Image: repo + ":v2", RestartPolicy: ptr.To(corev1.ContainerRestartPolicyAlways)},
		}
	}))
	p := waitPod(t, ns, "app", func(p *corev1.Pod) error { return running(p, repo+"@"+digest1) })
	if len(p.Status.InitContainerStatuses) != 2 {
		t.Fatalf("init container statuses %+v", p.Status.InitContainerStatuses)
	}
	init := p.Status.InitContainerStatuses[0]
	if term := init.State.Terminated; term == nil || term.Reason != "Completed" || term.ExitCode != 0 || !init.Ready || init.ImageID != repo+"@"+digest1 {
		t.Errorf("init container status %+v", init)
	}
	sidecar := p.Status.InitContainerStatuses[1]
	if sidecar.State.Running == nil || !sidecar.Ready || sidecar.Started == nil || !*sidecar.Started || sidecar.ImageID != repo+"@"+digest2 {
		t.Errorf("sidecar status %+v", sidecar)
	}
	if p.Status.ContainerStatuses[0].RestartCount != 0 {
		t.Errorf("restart count %d", p.Status.ContainerStatuses[0].RestartCount)
	}

	// No status writes while nothing changes, even when the pod is synced.
	patch := client.MergeFrom(p.DeepCopy())
	p.Labels = map[string]string{"touched": "yes"}
	if err := k8s.Patch(ctx, p, patch); err != nil {
		t.Fatal(err)
	}
	rv := p.ResourceVersion
	consistently(t, time.Second, func() error {
		q, err := getPod(ns, "app")
		if err != nil {
			return err
		}
		if q.ResourceVersion != rv {
			return fmt.Errorf("pod written again without a change: resourceVersion %s, was %s", q.ResourceVersion, rv)
		}
		return nil
	})

	oldID := p.Status.ContainerStatuses[0].ContainerID
	patch = client.MergeFrom(p.DeepCopy())
	p.Spec.Containers[0].Image = repo + ":v2"
	if err := k8s.Patch(ctx, p, patch); err != nil {
		t.Fatal(err)
	}
	p = waitPod(t, ns, "app", func(p *corev1.Pod) error {
		if err := running(p, repo+"@"+digest2); err != nil {
			return err
		}
		if cs := p.Status.ContainerStatuses[0]; cs.RestartCount != 1 || cs.Image != repo+":v2" {
			return fmt.Errorf("container status %+v, want restart count 1 and image v2", cs)
		}
		return nil
	})
	cs := p.Status.ContainerStatuses[0]
	if cs.ContainerID == oldID || cs.LastTerminationState.Terminated == nil || cs.LastTerminationState.Terminated.ContainerID != oldID {
		t.Errorf("restarted container: ID %s (was %s), last state %+v", cs.ContainerID, oldID, cs.LastTerminationState)
	}
	if got := p.Status.InitContainerStatuses[0].ImageID; got != repo+"@"+digest1 {
		t.Errorf("completed init container now reports %s", got)
	}
}

func TestInvalidImageName(t *testing.T) {
	ns := namespace(t)
	create(t, newPod(ns, "bad", reg.Host+"/UPPER/Case:v1"))
	p := waitPod(t, ns, "bad", func(p *corev1.Pod) error { return waiting(p, "InvalidImageName") })
	if p.Spec.NodeName == "" {
		t.Error("pod with an invalid image was not scheduled")
	}
}

// DaemonSet pods carry a required node affinity for their node: each is
// bound to its node, the cordoned one included (they tolerate it).
func TestDaemonSet(t *testing.T) {
	ns := namespace(t)
	ctx := context.Background()
	repo := reg.Host + "/" + ns + "/agent"
	digest := reg.Push(t, ns+"/agent:v1")
	labels := map[string]string{"app": "agent"}
	ds := &appsv1.DaemonSet{
		ObjectMeta: metav1.ObjectMeta{Name: "agent", Namespace: ns},
		Spec: appsv1.DaemonSetSpec{
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec:       corev1.PodSpec{Containers: []corev1.Container{{Name: "agent", Image: repo + ":v1"}}},
			},
		},
	}
	create(t, ds)
	eventually(t, 30*time.Second, func() error {
		nodes := sim.Nodes()
		var got appsv1.DaemonSet
		if err := k8s.Get(ctx, client.ObjectKeyFromObject(ds), &got); err != nil {
			return err
		}
		if int(got.Status.DesiredNumberScheduled) != len(nodes) || got.Status.NumberReady != got.Status.DesiredNumberScheduled {
			return fmt.Errorf("daemonset: %d desired, %d ready, want %d", got.Status.DesiredNumberScheduled, got.Status.NumberReady, len(nodes))
		}
		var pods corev1.PodList
		if err := k8s.List(ctx, &pods, client.InNamespace(ns), client.MatchingLabels(labels)); err != nil {
			return err
		}
		var on []string
		for i := range pods.Items {
			p := &pods.Items[i]
			if err := running(p, repo+"@"+digest); err != nil {
				return err
			}
			if target := affinityNode(p); target != p.Spec.NodeName {
				return fmt.Errorf("pod %s for node %q bound to %q", p.Name, target, p.Spec.NodeName)
			}
			on = append(on, p.Spec.NodeName)
		}
		sort.Strings(on)
		if !slices.Equal(on, nodes) {
			return fmt.Errorf("daemonset pods on %v, want %v", on, nodes)
		}
		return nil
	})
}

func affinityNode(p *corev1.Pod) string {
	a := p.Spec.Affinity
	if a == nil || a.NodeAffinity == nil || a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution == nil {
		return ""
	}
	for _, term := range a.NodeAffinity.RequiredDuringSchedulingIgnoredDuringExecution.NodeSelectorTerms {
		for _, f := range term.MatchFields {
			if f.Key == "metadata.name" && len(f.Values) == 1 {
				return f.Values[0]
			}
		}
	}
	return ""
}

// The cordoned node takes only pods that tolerate it. Once its Node is
// deleted the simulator stops running it: its pods are no longer finished
// and the Node is not recreated.
func TestUnschedulableAndDeletedNode(t *testing.T) {
	if !slices.Contains(sim.Nodes(), "node-x") {
		t.Skip("node-x was deleted by an earlier run of this test")
	}
	ns := namespace(t)
	ctx := context.Background()
	repo := reg.Host + "/" + ns + "/app"
	image := repo + ":v1"
	digest := reg.Push(t, ns+"/app:v1")
	tolerate := func(p *corev1.Pod) {
		p.Spec.Tolerations = []corev1.Toleration{{Key: corev1.TaintNodeUnschedulable, Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule}}
	}
	create(t,
		newPod(ns, "no-fit", image, onNode("node-x")),
		newPod(ns, "tolerant", image, onNode("node-x"), tolerate),
		newPod(ns, "witness", image, onNode("node-a")),
	)
	waitPod(t, ns, "no-fit", func(p *corev1.Pod) error {
		c := podCondition(p, corev1.PodScheduled)
		if p.Spec.NodeName != "" || c == nil || c.Status != corev1.ConditionFalse || c.Reason != corev1.PodReasonUnschedulable {
			return fmt.Errorf("pod on %q with PodScheduled %+v, want unschedulable", p.Spec.NodeName, c)
		}
		return nil
	})
	tolerant := waitPod(t, ns, "tolerant", func(p *corev1.Pod) error { return running(p, repo+"@"+digest) })
	if tolerant.Spec.NodeName != "node-x" {
		t.Fatalf("tolerant pod bound to %s", tolerant.Spec.NodeName)
	}
	waitPod(t, ns, "witness", func(p *corev1.Pod) error { return running(p, repo+"@"+digest) })

	if err := k8s.Delete(ctx, &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-x"}}); err != nil {
		t.Fatal(err)
	}
	eventually(t, 10*time.Second, func() error {
		if slices.Contains(sim.Nodes(), "node-x") {
			return errors.New("the simulator still runs node-x")
		}
		return nil
	})
	for _, name := range []string{"tolerant", "witness"} {
		p, err := getPod(ns, name)
		if err != nil {
			t.Fatal(err)
		}
		if err := k8s.Delete(ctx, p); err != nil {
			t.Fatal(err)
		}
	}
	// Both were deleted together: once the witness on a running node is
	// gone, the one on the deleted node would be too if it were run.
	eventually(t, 30*time.Second, func() error {
		return gone(ns, "witness")
	})
	consistently(t, 500*time.Millisecond, func() error {
		p, err := getPod(ns, "tolerant")
		if err != nil {
			return fmt.Errorf("the pod on the deleted node was finished: %w", err)
		}
		if p.DeletionTimestamp == nil {
			return errors.New("the pod on the deleted node is not terminating")
		}
		return nil
	})
	var node corev1.Node
	if err := k8s.Get(ctx, client.ObjectKey{Name: "node-x"}, &node); !apierrors.IsNotFound(err) {
		t.Errorf("node-x is back: %v", err)
	}
}

// Run and New refuse what they cannot do.
func TestNewRejectsBadOptions(t *testing.T) {
	if _, err := nodesim.New(env.Config, nodesim.Options{Nodes: []string{"a", "a"}}); err == nil {
		t.Error("duplicate node names accepted")
	}
	if _, err := nodesim.New(env.Config, nodesim.Options{Nodes: []string{"Not_A_Name"}}); err == nil {
		t.Error("invalid node name accepted")
	}
	if _, err := nodesim.New(nil, nodesim.Options{}); err == nil {
		t.Error("nil config accepted")
	}
	if err := sim.Run(context.Background()); err == nil {
		t.Error("second Run accepted")
	}
	s, err := nodesim.New(env.Config, nodesim.Options{Log: logr.Discard()})
	if err != nil {
		t.Fatal(err)
	}
	if got := s.Nodes(); !slices.Equal(got, storyNodes) {
		t.Errorf("default nodes %v", got)
	}
	if s.Cached("node-z") != nil {
		t.Error("cache of an unknown node")
	}
}
