package nodesim

import (
	"encoding/base64"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/google/go-containerregistry/pkg/name"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestImageCache(t *testing.T) {
	c := newImageCache()
	ref := func(s string) name.Reference {
		t.Helper()
		r, err := name.ParseReference(s, name.WeakValidation)
		if err != nil {
			t.Fatal(err)
		}
		return r
	}
	const repo = "reg.example:5000/team/app"
	d1 := "sha256:" + strings.Repeat("1", 64)
	d2 := "sha256:" + strings.Repeat("2", 64)
	now := time.Now()

	if _, ok := c.lookup(ref(repo+":v1"), now); ok {
		t.Fatal("empty cache has v1")
	}
	c.store(ref(repo+":v1"), d1, 100, now)
	for _, r := range []string{repo + ":v1", repo + "@" + d1, repo + ":other@" + d1} {
		if id, ok := c.lookup(ref(r), now); !ok || id != repo+"@"+d1 {
			t.Errorf("lookup %s = %q, %v; want %s@%s", r, id, ok, repo, d1)
		}
	}
	for _, r := range []string{repo + ":v2", repo + "@" + d2, "reg.example:5000/team/other:v1"} {
		if id, ok := c.lookup(ref(r), now); ok {
			t.Errorf("lookup %s = %q, want absent", r, id)
		}
	}

	// Re-pulled, v1 moves to d2; d1 stays cached.
	c.store(ref(repo+":v1"), d2, 200, now)
	if id, _ := c.lookup(ref(repo+":v1"), now); id != repo+"@"+d2 {
		t.Errorf("v1 resolves to %s after the re-pull", id)
	}
	if _, ok := c.lookup(ref(repo+"@"+d1), now); !ok {
		t.Error("d1 evicted by the re-pull")
	}
	snap := c.snapshot()
	var names [][]string
	for _, img := range snap {
		names = append(names, img.Names)
	}
	want := [][]string{{repo + "@" + d2, repo + ":v1"}, {repo + "@" + d1}}
	if !slices.EqualFunc(names, want, slices.Equal) {
		t.Errorf("snapshot %v, want %v", names, want)
	}
	if snap[0].SizeBytes != 200 || snap[0].Digest != d2 {
		t.Errorf("newest %+v", snap[0])
	}
	if imgs := nodeImages(snap); len(imgs) != 2 || imgs[0].SizeBytes != 200 || !slices.Equal(imgs[1].Names, want[1]) {
		t.Errorf("node images %+v", imgs)
	}
}

func TestDefaultPullPolicy(t *testing.T) {
	for img, want := range map[string]corev1.PullPolicy{
		"nginx":        corev1.PullAlways,
		"nginx:latest": corev1.PullAlways,
		"nginx:1.27":   corev1.PullIfNotPresent,
		"nginx@sha256:" + strings.Repeat("a", 64): corev1.PullIfNotPresent,
	} {
		r, err := name.ParseReference(img, name.WeakValidation)
		if err != nil {
			t.Fatal(err)
		}
		if got := defaultPullPolicy(r); got != want {
			t.Errorf("%s: %s, want %s", img, got, want)
		}
	}
}

func TestRedact(t *testing.T) {
	auth := base64.StdEncoding.EncodeToString([]byte("alice:hunter2-pass"))
	secrets := []corev1.Secret{{
		Type: corev1.SecretTypeDockerConfigJson,
		Data: map[string][]byte{corev1.DockerConfigJsonKey: []byte(`{"auths":{"reg.example":{"username":"alice","password":"hunter2-pass","auth":"` + auth + `"}}}`)},
	}}
	msg := redact("GET https://reg.example/v2/: token hunter2-pass for alice ("+auth+") refused", secrets)
	for _, leak := range []string{"hunter2-pass", "alice", auth} {
		if strings.Contains(msg, leak) {
			t.Errorf("%q shows %q", msg, leak)
		}
	}
	if !strings.Contains(msg, "https://reg.example/v2/") {
		t.Errorf("%q lost the registry", msg)
	}
}

func TestMatchesNodeSelector(t *testing.T) {
	node := &corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "node-b", Labels: map[string]string{"zone": "z1", "gen": "3"}}}
	req := func(key string, op corev1.NodeSelectorOperator, values ...string) corev1.NodeSelectorRequirement {
		return corev1.NodeSelectorRequirement{Key: key, Operator: op, Values: values}
	}
	for _, tc := range []struct {
		name  string
		terms []corev1.NodeSelectorTerm
		want  bool
	}{
		{"no terms", nil, false},
		{"empty term", []corev1.NodeSelectorTerm{{}}, false},
		{"field in", []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{req("metadata.name", corev1.NodeSelectorOpIn, "node-b")}}}, true},
		{"field other node", []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{req("metadata.name", corev1.NodeSelectorOpIn, "node-a")}}}, false},
		{"unknown field", []corev1.NodeSelectorTerm{{MatchFields: []corev1.NodeSelectorRequirement{req("spec.x", corev1.NodeSelectorOpIn, "node-b")}}}, false},
		{"label in", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("zone", corev1.NodeSelectorOpIn, "z0", "z1")}}}, true},
		{"label not in", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("zone", corev1.NodeSelectorOpNotIn, "z1")}}}, false},
		{"exists", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("zone", corev1.NodeSelectorOpExists)}}}, true},
		{"does not exist", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("gpu", corev1.NodeSelectorOpDoesNotExist)}}}, true},
		{"gt", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("gen", corev1.NodeSelectorOpGt, "2")}}}, true},
		{"lt", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("gen", corev1.NodeSelectorOpLt, "2")}}}, false},
		{"gt not a number", []corev1.NodeSelectorTerm{{MatchExpressions: []corev1.NodeSelectorRequirement{req("zone", corev1.NodeSelectorOpGt, "2")}}}, false},
		{"AND within a term", []corev1.NodeSelectorTerm{{
			MatchExpressions: []corev1.NodeSelectorRequirement{req("zone", corev1.NodeSelectorOpIn, "z1")},
			MatchFields:      []corev1.NodeSelectorRequirement{req("metadata.name", corev1.NodeSelectorOpIn, "node-a")},
		}}, false},
		{"OR across terms", []corev1.NodeSelectorTerm{
			{MatchFields: []corev1.NodeSelectorRequirement{req("metadata.name", corev1.NodeSelectorOpIn, "node-a")}},
			{MatchExpressions: []corev1.NodeSelectorRequirement{req("zone", corev1.NodeSelectorOpIn, "z1")}},
		}, true},
	} {
		if got := matchesNodeSelector(tc.terms, node); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

func TestFits(t *testing.T) {
	s := &Simulator{log: logr.Discard()}
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: "n", Labels: map[string]string{"disk": "ssd"}},
		Spec:       corev1.NodeSpec{Taints: []corev1.Taint{{Key: "dedicated", Value: "db", Effect: corev1.TaintEffectNoSchedule}}},
	}
	pod := &corev1.Pod{}
	if why := s.fits(pod, node, 0); why == "" {
		t.Error("pod without toleration fits a tainted node")
	}
	pod.Spec.Tolerations = []corev1.Toleration{{Key: "dedicated", Operator: corev1.TolerationOpEqual, Value: "db", Effect: corev1.TaintEffectNoSchedule}}
	if why := s.fits(pod, node, 0); why != "" {
		t.Errorf("tolerating pod does not fit: %s", why)
	}
	if why := s.fits(pod, node, maxPods); why == "" {
		t.Error("pod fits a full node")
	}
	pod.Spec.NodeSelector = map[string]string{"disk": "hdd"}
	if why := s.fits(pod, node, 0); why == "" {
		t.Error("pod fits a node its selector does not match")
	}
}
