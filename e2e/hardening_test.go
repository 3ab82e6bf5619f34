package e2e

import (
	"bufio"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/e2e/cluster"
	"github.com/imagepin/imagepin/internal/testenv"
)

// replaceManager stops the cluster's manager for the length of a test that
// runs its own, and starts a fresh one when the test ends.
func replaceManager(t *testing.T) {
	t.Helper()
	local.Manager.Stop()
	t.Cleanup(func() {
		m, err := local.StartManager(context.Background(), cluster.ManagerOptions{Name: "imagepin", Receiver: true})
		if err != nil {
			t.Errorf("restart the cluster's manager: %v", err)
			return
		}
		local.Manager = m
	})
}

// useNamespace makes namespace ns with the pull secret, and when the test
// ends deletes what the test made in it and waits until its pods are gone,
// so that the nodes are free for the next test. (No namespace controller
// runs here, so deleting the namespace would not delete its contents.)
func useNamespace(t *testing.T, ns string, pullSecret bool) {
	t.Helper()
	ctx := context.Background()
	if pullSecret {
		if err := local.AddPullSecret(ctx, ns); err != nil {
			t.Fatal(err)
		}
	} else if err := local.Client.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		background := client.PropagationPolicy(metav1.DeletePropagationBackground)
		for _, obj := range []client.Object{&imagesv1alpha1.ImagePin{}, &appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{},
			&batchv1.Job{}, &batchv1.CronJob{}, &appsv1.ReplicaSet{}, &corev1.Pod{}} {
			if err := local.Client.DeleteAllOf(ctx, obj, client.InNamespace(ns), background); err != nil {
				t.Errorf("clean up %s: %v", ns, err)
			}
		}
		poll(t, "the pods of "+ns+" to go", 60*time.Second, func() error {
			var pods corev1.PodList
			if err := local.Client.List(ctx, &pods, client.InNamespace(ns)); err != nil {
				return err
			}
			if n := len(pods.Items); n > 0 {
				return fmt.Errorf("%d pods left", n)
			}
			return nil
		})
	})
}

// apply runs kubectl apply in namespace ns with manifest on stdin.
func apply(t *testing.T, ns, manifest string) string {
	t.Helper()
	return kubectlAt(t, local.Kubeconfig, []byte(manifest), "-n", ns, "apply", "-f", "-")
}

func imagePinYAML(mode string, selector string) string {
	return fmt.Sprintf(`apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata: {name: web}
spec:
  selector: %s
  mode: %s
  interval: 10s
`, selector, mode)
}

// metric returns the value of the first sample of a metric whose line
// starts with prefix on a manager's /metrics, or "" if there is none.
func metric(t *testing.T, m *cluster.Manager, prefix string) string {
	t.Helper()
	for _, line := range metricLines(t, m) {
		if strings.HasPrefix(line, prefix) {
			return line[strings.LastIndex(line, " ")+1:]
		}
	}
	return ""
}

// metricLines reads a manager's /metrics. A manager whose /metrics does
// not answer fails the test: an absent sample must mean absent, not
// unreachable.
func metricLines(t *testing.T, m *cluster.Manager) []string {
	t.Helper()
	resp, err := http.Get(m.MetricsURL) //nolint:noctx // a test helper against 127.0.0.1
	if err != nil {
		t.Fatalf("metrics of %s: %v", m.Name, err)
	}
	defer func() { _ = resp.Body.Close() }()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	var lines []string
	seen := false
	for sc.Scan() {
		line := sc.Text()
		seen = seen || strings.HasPrefix(line, "go_goroutines ")
		lines = append(lines, line)
	}
	if err := sc.Err(); err != nil || !seen {
		t.Fatalf("metrics of %s: unreadable (%v) or without go_goroutines", m.Name, err)
	}
	return lines
}

const leaderMetric = `leader_election_master_status{name="imagepin.images.imagepin.dev"}`

// waitLeader waits until exactly one of managers (other than gone) leads.
func waitLeader(t *testing.T, managers []*cluster.Manager, gone *cluster.Manager) *cluster.Manager {
	t.Helper()
	var leader *cluster.Manager
	poll(t, "a leader", 60*time.Second, func() error {
		var leaders []string
		leader = nil
		for _, m := range managers {
			if m != gone && metric(t, m, leaderMetric) == "1" {
				leader = m
				leaders = append(leaders, m.Name)
			}
		}
		if len(leaders) != 1 {
			return fmt.Errorf("leaders: %v", leaders)
		}
		return nil
	})
	return leader
}

func historyOf(p *imagesv1alpha1.ImagePin, image string) []imagesv1alpha1.DigestRecord {
	for _, img := range p.Status.Images {
		if img.Image == image {
			return img.History
		}
	}
	return nil
}

// Two managers with leader election; the leader is killed (SIGKILL, no
// clean hand-over) just after Follow wrote the new digest, while the
// Deployment rolls out. The other takes over, finishes nothing twice: one
// rollout for one tag move, and the ImagePin's history intact.
func TestLeaderFailoverDuringFollow(t *testing.T) {
	ctx := context.Background()
	ns := "ha"
	useNamespace(t, ns, true)
	replaceManager(t)
	var managers []*cluster.Manager
	for _, name := range []string{"imagepin-ha-1", "imagepin-ha-2"} {
		m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: name, Args: []string{"--leader-elect"}, NoWebhook: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(m.Stop)
		managers = append(managers, m)
	}
	leader := waitLeader(t, managers, nil)

	image := local.Registry.Host + "/ha/web:v1"
	build1 := push(t, "ha/web:v1", "ha build 1")
	apply(t, ns, deploymentYAML("web", image, 2))
	apply(t, ns, imagePinYAML("Follow", "{matchLabels: {app: web}}"))
	waitImage(t, ns, "web", image+"@"+string(build1))
	waitPods(t, ns, "web", allRun(build1, 2))
	before := waitPin(t, ns, "build 1 in the history", func(p *imagesv1alpha1.ImagePin) error {
		if h := historyOf(p, image); len(h) != 1 || h[0].Digest != build1 {
			return fmt.Errorf("history %v", h)
		}
		return nil
	})
	firstSeen := historyOf(before, image)[0].FirstSeen
	rsBefore := replicaSets(t, ns, "web")

	build2 := push(t, "ha/web:v1", "ha build 2")
	waitImage(t, ns, "web", image+"@"+string(build2))
	leader.Kill()
	killedAt := time.Now()
	written := deployment(t, ns, "web")
	next := waitLeader(t, managers, leader)
	t.Logf("%s killed mid-rollout; %s leads after %s", leader.Name, next.Name, time.Since(killedAt).Round(time.Second))

	waitPods(t, ns, "web", allRun(build2, 2))
	after := waitPin(t, ns, "a check by the new leader", func(p *imagesv1alpha1.ImagePin) error {
		if p.Status.LastCheckTime == nil || !p.Status.LastCheckTime.After(killedAt) {
			return fmt.Errorf("last check %v, before the failover", p.Status.LastCheckTime)
		}
		if err := condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue); err != nil {
			return err
		}
		return workloadImage(p, image, build2, nil)
	})
	h := historyOf(after, image)
	if len(h) != 2 || h[0].Digest != build2 || h[1].Digest != build1 || !h[1].FirstSeen.Equal(&firstSeen) {
		t.Errorf("history after the failover: %v, want build 2 then build 1 first seen %s", h, firstSeen)
	}
	if got := replicaSets(t, ns, "web"); got != rsBefore+1 {
		t.Errorf("%d rollouts for one tag move across a failover, want exactly 1", got-rsBefore)
	}
	if d := deployment(t, ns, "web"); d.Generation != written.Generation {
		t.Errorf("the new leader wrote the Deployment again: generation %d -> %d", written.Generation, d.Generation)
	}
	if w := metric(t, next, "imagepin_workload_writes_total"); w != "" {
		t.Errorf("the new leader wrote a workload (imagepin_workload_writes_total %s); the old leader had already", w)
	}
}

// A restarted manager finds everything as it left it: it writes no
// workload, rolls nothing out, and the history (the ImagePin's status is
// its memory) survives.
func TestRestartWritesNothing(t *testing.T) {
	ctx := context.Background()
	ns := "restart"
	useNamespace(t, ns, true)
	image := local.Registry.Host + "/restart/web:v1"
	build1 := push(t, "restart/web:v1", "restart build 1")
	apply(t, ns, deploymentYAML("web", image, 2))
	apply(t, ns, imagePinYAML("Pin", "{matchLabels: {app: web}}"))
	waitImage(t, ns, "web", image+"@"+string(build1))
	// The pods to compare with are the pinned rollout's, once it is done:
	// the tag's pods ran build 1 too, until the rollout replaced them.
	waitRolledOut(t, ns, "web")
	pods := waitPods(t, ns, "web", allRun(build1, 2))
	before := waitPin(t, ns, "pinned without drift", func(p *imagesv1alpha1.ImagePin) error {
		if err := condition(p, imagesv1alpha1.ConditionDrifted, metav1.ConditionFalse); err != nil {
			return err
		}
		return workloadImage(p, image, build1, nil)
	})
	dBefore := deployment(t, ns, "web")
	rsBefore := replicaSets(t, ns, "web")

	replaceManager(t) // stops it; should the restart below fail, a cleanup starts one
	m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: "imagepin-restarted"})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	restarted := time.Now()
	after := waitPin(t, ns, "a check by the restarted manager", func(p *imagesv1alpha1.ImagePin) error {
		if p.Status.LastCheckTime == nil || !p.Status.LastCheckTime.After(restarted) {
			return fmt.Errorf("last check %v, before the restart", p.Status.LastCheckTime)
		}
		return nil
	})
	if got, want := historyOf(after, image), historyOf(before, image); !slices.EqualFunc(got, want, func(a, b imagesv1alpha1.DigestRecord) bool {
		return a.Digest == b.Digest && a.FirstSeen.Equal(&b.FirstSeen)
	}) {
		t.Errorf("history after the restart %v, want %v", got, want)
	}
	if d := deployment(t, ns, "web"); d.Generation != dBefore.Generation || d.Spec.Template.Spec.Containers[0].Image != dBefore.Spec.Template.Spec.Containers[0].Image {
		t.Errorf("the restarted manager changed the Deployment: generation %d -> %d, image %s", dBefore.Generation, d.Generation, d.Spec.Template.Spec.Containers[0].Image)
	}
	if got := replicaSets(t, ns, "web"); got != rsBefore {
		t.Errorf("ReplicaSets %d -> %d after a restart", rsBefore, got)
	}
	if w := metric(t, m, "imagepin_workload_writes_total"); w != "" {
		t.Errorf("the restarted manager wrote a workload (imagepin_workload_writes_total %s)", w)
	}
	waitPods(t, ns, "web", func(ps []corev1.Pod) error {
		for i := range ps {
			if !slices.ContainsFunc(pods, func(p corev1.Pod) bool { return p.Name == ps[i].Name }) {
				return fmt.Errorf("pod %s is new: something rolled out", ps[i].Name)
			}
		}
		return allRun(build1, 2)(ps)
	})
}

// waitRolledOut waits until Deployment name's latest template runs every
// replica, and no old one is left.
func waitRolledOut(t *testing.T, ns, name string) {
	t.Helper()
	poll(t, name+" rolled out", 60*time.Second, func() error {
		d := &appsv1.Deployment{}
		if err := local.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, d); err != nil {
			return err
		}
		want := *d.Spec.Replicas
		if st := d.Status; st.ObservedGeneration != d.Generation || st.UpdatedReplicas != want || st.Replicas != want || st.AvailableReplicas != want {
			return fmt.Errorf("generation %d, status %+v", d.Generation, st)
		}
		return nil
	})
}

// authCapture is a registry host that asks for credentials (401 with a
// Basic challenge) and records every Authorization header it is offered.
type authCapture struct {
	srv  *httptest.Server
	mu   sync.Mutex
	auth []string
	reqs int
}

func newAuthCapture() *authCapture {
	c := &authCapture{}
	c.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		c.mu.Lock()
		c.reqs++
		if a := r.Header.Get("Authorization"); a != "" {
			c.auth = append(c.auth, a)
		}
		c.mu.Unlock()
		w.Header().Set("WWW-Authenticate", `Basic realm="capture"`)
		w.WriteHeader(http.StatusUnauthorized)
	}))
	return c
}

func (c *authCapture) host() string { return strings.TrimPrefix(c.srv.URL, "http://") }

// A pull secret of one namespace is never used for a workload of another;
// credentials go only to the registry host they name; and no credential
// appears in the manager's log (at debug level), in events or in status.
func TestCredentialsStayScoped(t *testing.T) {
	ctx := context.Background()
	capture := newAuthCapture()
	defer capture.srv.Close()
	replaceManager(t)
	m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: "imagepin-creds", Args: []string{
		"--insecure-registry=" + capture.host(), "--zap-log-level=debug",
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)

	withSecret, without := "cred-a", "cred-b"
	useNamespace(t, withSecret, true)
	useNamespace(t, without, false)
	private := local.Registry.Host + "/cred/app:v1"
	other := capture.host() + "/cred/app:v1"
	digest := push(t, "cred/app:v1", "private build")

	selectAll := "{matchLabels: {app: web}}"
	apply(t, withSecret, deploymentYAML("web", private, 1))
	apply(t, withSecret, deploymentYAML("elsewhere", other, 1))
	apply(t, withSecret, imagePinYAML("Observe", selectAll))
	apply(t, without, deploymentYAML("web", private, 1))
	apply(t, without, imagePinYAML("Observe", selectAll))

	waitPin(t, withSecret, "the private image resolved with the namespace's secret, the other host refusing", func(p *imagesv1alpha1.ImagePin) error {
		got := map[string]imagesv1alpha1.ImageStatus{}
		for _, img := range p.Status.Images {
			got[img.Image] = img
		}
		if img := got[private]; img.Digest != digest || img.Error != "" {
			return fmt.Errorf("%s: digest %q error %q", private, img.Digest, img.Error)
		}
		if img := got[other]; img.Error == "" {
			return fmt.Errorf("%s: no error yet", other)
		}
		return nil
	})
	waitPin(t, without, "the private image refused without a secret", func(p *imagesv1alpha1.ImagePin) error {
		for _, img := range p.Status.Images {
			if img.Image == private {
				if img.Digest != "" {
					return fmt.Errorf("%s resolved to %s without credentials: another namespace's secret was used", private, img.Digest)
				}
				if !strings.Contains(strings.ToLower(img.Error), "unauthorized") {
					return fmt.Errorf("%s: error %q, want unauthorized", private, img.Error)
				}
				return nil
			}
		}
		return fmt.Errorf("no status for %s", private)
	})

	capture.mu.Lock()
	reqs, offered := capture.reqs, slices.Clone(capture.auth)
	capture.mu.Unlock()
	if reqs == 0 {
		t.Fatal("the other registry host was never asked: the test proves nothing")
	}
	for _, a := range offered {
		t.Errorf("credentials offered to %s, which no pull secret names: %q", capture.host(), a)
	}

	// Nothing anywhere carries the secret: the password, or user:password
	// as Basic auth and docker config files encode it.
	r := local.Registry
	secrets := []string{r.Password, base64.StdEncoding.EncodeToString([]byte(r.User + ":" + r.Password))}
	leaks := func(where, text string) {
		for _, s := range secrets {
			if strings.Contains(text, s) {
				t.Errorf("a credential appears in %s", where)
			}
		}
	}
	for _, f := range []string{m.LogFile, local.Manager.LogFile} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) == 0 {
			t.Errorf("%s is empty: nothing was checked", f)
		}
		leaks(filepath.Base(f), string(b))
	}
	for _, ns := range []string{withSecret, without} {
		var pins imagesv1alpha1.ImagePinList
		if err := local.Client.List(ctx, &pins, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		b, _ := json.Marshal(pins)
		leaks("ImagePin status in "+ns, string(b))
		var events eventsv1.EventList
		if err := local.Client.List(ctx, &events, client.InNamespace(ns)); err != nil {
			t.Fatal(err)
		}
		if len(events.Items) == 0 {
			t.Errorf("no events in %s: nothing was checked", ns)
		}
		b, _ = json.Marshal(events)
		leaks("events in "+ns, string(b))
	}
}

// auditEvent is what the RBAC test reads of an audit log line.
type auditEvent struct {
	User      struct{ Username string } `json:"user"`
	Verb      string                    `json:"verb"`
	ObjectRef *struct {
		Resource    string `json:"resource"`
		Subresource string `json:"subresource"`
		APIGroup    string `json:"apiGroup"`
		Namespace   string `json:"namespace"`
	} `json:"objectRef"`
	ResponseStatus *struct {
		Code int `json:"code"`
	} `json:"responseStatus"`
	StageTimestamp time.Time `json:"stageTimestamp"`
}

// grant is one verb on one resource of one API group.
type grant struct{ group, resource, verb string }

func (g grant) String() string {
	if g.group == "" {
		return g.verb + " " + g.resource
	}
	return g.verb + " " + g.resource + "." + g.group
}

// grantsIn expands the rules of the RBAC objects in a YAML file.
func grantsIn(t *testing.T, path string) map[grant]bool {
	t.Helper()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var role rbacv1.ClusterRole
	if err := yaml.Unmarshal([]byte(strings.TrimPrefix(string(raw), "---\n")), &role); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	out := map[grant]bool{}
	for _, r := range role.Rules {
		for _, g := range r.APIGroups {
			for _, res := range r.Resources {
				for _, v := range r.Verbs {
					out[grant{g, res, v}] = true
				}
			}
		}
	}
	return out
}

// The manager runs as its service account with config/rbac's roles (the
// cluster installs them from config/default). Exercised on every workload
// kind, through Pin, the webhook and leader election, every request it
// makes is allowed, and every verb config/rbac grants is one it made: the
// API server's audit log of its requests is compared with the roles.
func TestRBACGrantsWhatTheManagerUses(t *testing.T) {
	ctx := context.Background()
	ns := "rbac"
	useNamespace(t, ns, true)
	replaceManager(t)
	// Its manager creates the Lease afresh (an earlier test's may be left).
	lease := &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: cluster.ManagerNamespace, Name: "imagepin.images.imagepin.dev"}}
	if err := local.Client.Delete(ctx, lease); err != nil && !apierrors.IsNotFound(err) {
		t.Fatal(err)
	}
	since := time.Now() // only this test's manager is audited
	m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: "imagepin-rbac", Args: []string{"--leader-elect"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)
	waitLeader(t, []*cluster.Manager{m}, nil)

	image := local.Registry.Host + "/rbac/app:v1"
	digest := push(t, "rbac/app:v1", "rbac build")
	pinned := image + "@" + string(digest)
	// The workloads arrive by tag, before any ImagePin, so that the
	// controller (not the webhook) pins each kind it can write.
	apply(t, ns, workloadsYAML(image))
	apply(t, ns, imagePinYAML("Pin", "{}"))
	poll(t, "every writable workload pinned", 60*time.Second, func() error {
		for _, obj := range []client.Object{&appsv1.Deployment{}, &appsv1.StatefulSet{}, &appsv1.DaemonSet{}, &batchv1.CronJob{}} {
			if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "app"}, obj); err != nil {
				return err
			}
			if got := imageOf(obj); got != pinned {
				return fmt.Errorf("%T names %s", obj, got)
			}
		}
		return nil
	})
	// A bare Pod applied now is pinned by the webhook.
	apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: bare, labels: {app: web}}
spec:
  containers:
  - {name: app, image: %s}
`, image))
	var pod corev1.Pod
	if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "bare"}, &pod); err != nil {
		t.Fatal(err)
	}
	if pod.Spec.Containers[0].Image != pinned {
		t.Errorf("bare Pod admitted as %s, want %s", pod.Spec.Containers[0].Image, pinned)
	}
	waitPin(t, ns, "the status written", func(p *imagesv1alpha1.ImagePin) error {
		return condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue)
	})
	// A ClusterImagePin (Observe) over this namespace alone: its status.
	apply(t, ns, `apiVersion: images.imagepin.dev/v1alpha1
kind: ClusterImagePin
metadata: {name: e2e-rbac}
spec:
  namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: rbac}}
  mode: Observe
`)
	t.Cleanup(func() {
		_ = local.Client.Delete(ctx, &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "e2e-rbac"}})
	})
	poll(t, "the ClusterImagePin's status written", 60*time.Second, func() error {
		var cp imagesv1alpha1.ClusterImagePin
		if err := local.Client.Get(ctx, client.ObjectKey{Name: "e2e-rbac"}, &cp); err != nil {
			return err
		}
		if cp.Status.Summary.Namespaces != 1 {
			return fmt.Errorf("status %+v", cp.Status.Summary)
		}
		return nil
	})
	m.Stop() // a clean stop releases the Lease: one more verb used

	granted := grantsIn(t, filepath.Join(testenv.RepoRoot(), "config", "rbac", "role.yaml"))
	for g := range grantsIn(t, filepath.Join(testenv.RepoRoot(), "config", "rbac", "leader_election_role.yaml")) {
		granted[g] = true
	}
	used, forbidden := auditedRequests(t, local.AuditLog, since)
	var made []string
	for g := range used {
		made = append(made, g.String())
	}
	slices.Sort(made)
	t.Logf("the manager made: %s", strings.Join(made, ", "))
	for _, f := range forbidden {
		t.Errorf("the manager was refused %s: config/rbac grants too little", f)
	}
	for g := range used {
		if !granted[g] {
			t.Errorf("the manager made %s, which config/rbac does not grant", g)
		}
	}
	for g := range granted {
		if used[g] {
			continue
		}
		if why, ok := grantedButNotExercisedHere[g]; ok {
			t.Logf("granted, not exercised here: %s (%s)", g, why)
			continue
		}
		t.Errorf("config/rbac grants %s, which the manager never made: grant only what the code uses", g)
	}
}

// grantedButNotExercisedHere are verbs the code uses on paths this test
// does not take, each with the path.
var grantedButNotExercisedHere = func() map[grant]string {
	m := map[grant]string{
		{"", "events", "patch"}: "the event recorder of leader election patches an Event that repeats, instead of creating another",
		// spec.verify's keys and trusted root are read live (the cache
		// keeps no Secret data but pull secrets', and no ConfigMaps);
		// TestFollowOnlyWhatIsSigned and internal/verify's loader tests
		// take these paths.
		{"", "secrets", "get"}:    "spec.verify.keys[].secretKeyRef, read live",
		{"", "configmaps", "get"}: "spec.verify.keys[].configMapKeyRef and spec.verify.trustedRoot, read live",
		// spec.retention.protect's finalizer, added before the first keep
		// tag is pushed; TestBackoutAcrossGarbageCollection and
		// controllers' TestADeletedImagePinDeletesItsKeepTags take it.
		{"images.imagepin.dev", "imagepins", "patch"}: "the keep-tags finalizer of spec.retention.protect",
	}
	// Informers stream their initial state with a watch (WatchList) and
	// fall back to a list when the API server does not serve that.
	for _, r := range []struct{ group, resource string }{
		{"images.imagepin.dev", "imagepins"}, {"images.imagepin.dev", "clusterimagepins"}, {"apps", "deployments"}, {"apps", "statefulsets"}, {"apps", "daemonsets"},
		{"apps", "replicasets"}, {"batch", "jobs"}, {"batch", "cronjobs"}, {"", "pods"}, {"", "serviceaccounts"}, {"", "secrets"}, {"", "namespaces"},
	} {
		m[grant{r.group, r.resource, "list"}] = "the informer's initial list when the API server does not stream it (client-go's WatchList fallback)"
	}
	// Argo Rollouts' Rollouts, once their CRD is installed; this cluster
	// has none (controllers' TestRolloutIsSelectedOnceItsCRDAppears and
	// controllers/pinning's Rollout test take these paths).
	for _, verb := range []string{"get", "list", "watch", "patch"} {
		m[grant{"argoproj.io", "rollouts", verb}] = "Argo Rollouts' Rollouts, selected, watched and written once the cluster serves their CRD"
	}
	// The conflict path reads a workload live (the cache strips
	// managedFields) to name the manager that reverts imagepin's write;
	// controllers/pinning's TestRevertingActorIsNotFought takes it. The
	// same read releases fields imagepin still owns after a release
	// failed (or an older imagepin's apply).
	for _, r := range []struct{ group, resource string }{
		{"apps", "deployments"}, {"apps", "statefulsets"}, {"apps", "daemonsets"}, {"batch", "cronjobs"},
	} {
		m[grant{r.group, r.resource, "get"}] = "a live read naming the field manager that keeps reverting imagepin's write (Conflict), or releasing fields imagepin still owns"
	}
	return m
}()

// auditedRequests reads the manager's requests since a time from the audit
// log: what it made, and what it was refused.
func auditedRequests(t *testing.T, path string, since time.Time) (used map[grant]bool, forbidden []string) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = f.Close() }()
	used = map[grant]bool{}
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		var e auditEvent
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			t.Fatalf("audit log: %v", err)
		}
		if e.User.Username != cluster.ManagerUser || e.ObjectRef == nil || e.StageTimestamp.Before(since) {
			continue
		}
		res := e.ObjectRef.Resource
		if e.ObjectRef.Subresource != "" {
			res += "/" + e.ObjectRef.Subresource
		}
		g := grant{e.ObjectRef.APIGroup, res, e.Verb}
		if e.ResponseStatus != nil && e.ResponseStatus.Code == http.StatusForbidden {
			forbidden = append(forbidden, fmt.Sprintf("%s in %q", g, e.ObjectRef.Namespace))
			continue
		}
		used[g] = true
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	if len(used) == 0 {
		t.Fatalf("no request of %s in the audit log %s", cluster.ManagerUser, path)
	}
	return used, forbidden
}

func imageOf(obj client.Object) string {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.Spec.Template.Spec.Containers[0].Image
	case *appsv1.StatefulSet:
		return o.Spec.Template.Spec.Containers[0].Image
	case *appsv1.DaemonSet:
		return o.Spec.Template.Spec.Containers[0].Image
	case *batchv1.CronJob:
		return o.Spec.JobTemplate.Spec.Template.Spec.Containers[0].Image
	}
	return ""
}

// workloadsYAML is one workload of each kind named app, naming image.
func workloadsYAML(image string) string {
	pod := fmt.Sprintf(`metadata: {labels: {run: app}}
    spec:
      containers:
      - {name: app, image: %s}`, image)
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: app}
spec:
  selector: {matchLabels: {run: app}}
  template:
    %[1]s
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {name: app}
spec:
  serviceName: app
  selector: {matchLabels: {run: app}}
  template:
    %[1]s
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {name: app}
spec:
  selector: {matchLabels: {run: app}}
  template:
    %[1]s
---
apiVersion: batch/v1
kind: Job
metadata: {name: app}
spec:
  template:
    metadata: {labels: {job: app}}
    spec:
      restartPolicy: Never
      containers:
      - {name: app, image: %[2]s}
---
apiVersion: batch/v1
kind: CronJob
metadata: {name: app}
spec:
  schedule: "0 0 1 1 *"
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: Never
          containers:
          - {name: app, image: %[2]s}
`, pod, image)
}

// tcpProxy forwards connections to a backend until Down cuts every one of
// them and stops listening; Up listens again on the same address. In front
// of the API server it is an API server outage, TLS and all.
type tcpProxy struct {
	addr, backend string
	mu            sync.Mutex
	ln            net.Listener
	conns         map[net.Conn]bool
}

func newTCPProxy(t *testing.T, backend string) *tcpProxy {
	t.Helper()
	p := &tcpProxy{backend: backend, conns: map[net.Conn]bool{}}
	if err := p.up("127.0.0.1:0"); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Down)
	return p
}

func (p *tcpProxy) up(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	p.mu.Lock()
	p.ln, p.addr = ln, ln.Addr().String()
	p.mu.Unlock()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.forward(c)
		}
	}()
	return nil
}

// Up listens again where the proxy listened before.
func (p *tcpProxy) Up() error { return p.up(p.addr) }

func (p *tcpProxy) forward(c net.Conn) {
	b, err := net.Dial("tcp", p.backend)
	if err != nil {
		_ = c.Close()
		return
	}
	p.mu.Lock()
	p.conns[c], p.conns[b] = true, true
	p.mu.Unlock()
	done := make(chan struct{}, 2)
	go func() { _, _ = io.Copy(b, c); done <- struct{}{} }()
	go func() { _, _ = io.Copy(c, b); done <- struct{}{} }()
	<-done
	_ = c.Close()
	_ = b.Close()
	p.mu.Lock()
	delete(p.conns, c)
	delete(p.conns, b)
	p.mu.Unlock()
}

// Down stops listening and cuts every open connection.
func (p *tcpProxy) Down() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.ln != nil {
		_ = p.ln.Close()
		p.ln = nil
	}
	for c := range p.conns {
		_ = c.Close()
	}
}

// The API server goes away (every connection cut, nothing listening) and
// comes back: the manager, not restarted, resumes watching and writing —
// it reports a tag that moved and a workload created while it was cut off.
func TestManagerRidesOutAPIServerOutage(t *testing.T) {
	ctx := context.Background()
	ns := "outage"
	useNamespace(t, ns, true)
	host := strings.TrimSuffix(strings.TrimPrefix(local.Env.Config.Host, "https://"), "/")
	proxy := newTCPProxy(t, host)
	replaceManager(t)
	m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: "imagepin-outage", APIServer: "https://" + proxy.addr})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)

	image := local.Registry.Host + "/outage/web:v1"
	build1 := push(t, "outage/web:v1", "outage build 1")
	apply(t, ns, deploymentYAML("web", image, 1))
	apply(t, ns, imagePinYAML("Observe", "{matchLabels: {app: web}}"))
	waitPin(t, ns, "Ready before the outage", func(p *imagesv1alpha1.ImagePin) error {
		if err := condition(p, imagesv1alpha1.ConditionReady, metav1.ConditionTrue); err != nil {
			return err
		}
		return workloadImage(p, image, build1, []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned})
	})

	failedBefore := metric(t, m, `rest_client_requests_total{code="<error>"`)
	proxy.Down()
	// While it is cut off: the tag moves and a workload arrives.
	build2 := push(t, "outage/web:v1", "outage build 2")
	apply(t, ns, deploymentYAML("web-2", image, 1))
	poll(t, "the manager to see the outage", 60*time.Second, func() error {
		if metric(t, m, `rest_client_requests_total{code="<error>"`) == failedBefore {
			return errors.New("no failed API request yet")
		}
		return nil
	})
	if err := proxy.Up(); err != nil {
		t.Fatal(err)
	}
	waitPin(t, ns, "the moved tag and the new workload after the outage", func(p *imagesv1alpha1.ImagePin) error {
		if p.Status.Summary.Workloads != 2 {
			return fmt.Errorf("%d workloads, want 2", p.Status.Summary.Workloads)
		}
		return workloadImage(p, image, build2, []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftTagMoved})
	})
	if !m.Running() {
		t.Error("the manager exited during the outage")
	}
}
