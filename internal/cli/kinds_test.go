package cli

import (
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// testWorkloadKinds are the --workload-kind values of every test that
// configures kinds. The kind table is process-global: each test passes all
// of them, the same (ConfigureFlags is a no-op for a value it has seen),
// and no test configures one of these names otherwise.
var testWorkloadKinds = []string{
	"kubeflow.org/v1/PyTorchJob,spec=spec.pytorchReplicaSpecs.*.template.spec,immutable",
	"jobset.x-k8s.io/v1alpha2/JobSet,spec=spec.replicatedJobs.*.template.spec.template.spec,via=batch/v1/Job,immutable",
	"leaderworkerset.x-k8s.io/v1/LeaderWorkerSet,spec=leader:spec.leaderWorkerTemplate.leaderTemplate.spec,spec=worker:spec.leaderWorkerTemplate.workerTemplate.spec",
	"serving.knative.dev/v1/Service,spec=spec.template.spec",
}

// runKinds is run with every testWorkloadKinds value as a --workload-kind.
func runKinds(t *testing.T, reg *registrytest.Registry, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	for _, k := range testWorkloadKinds {
		args = append(args, "--workload-kind", k)
	}
	return run(t, reg, stdin, args...)
}

// Issue 14 item 5: a configured kind's every template is pinned: the
// replica specs of a PyTorchJob (a map: Master, Worker; containers and
// init containers), those of a JobSet (a list, named or not) and the
// named templates of a LeaderWorkerSet, byte for byte but the image
// scalars; --check names each template's container by its key.
func TestPinPinsEveryTemplateOfConfiguredKinds(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	trainer := reg.Push(t, "ml/trainer:v1")
	fetch := reg.Push(t, "ml/fetch:v2")
	metrics := reg.Push(t, "ml/metrics:v9")
	driver := reg.Push(t, "batch/driver:v4")
	worker := reg.Push(t, "batch/worker:v3")
	server := reg.Push(t, "lws/server:v5")
	dir := fixture(t, reg, "customkinds.yaml")
	path := filepath.Join(dir, "customkinds.yaml")
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	code, out, _ := runKinds(t, reg, "", "--check", "-f", path)
	if code != 1 {
		t.Fatalf("--check exit %d, want 1:\n%s", code, out)
	}
	var want strings.Builder
	for _, l := range []struct {
		line, where, image string
	}{
		{"16", "PyTorchJob/train container Master/fetch", "ml/fetch:v2"},
		{"19", "PyTorchJob/train container Master/pytorch", "ml/trainer:v1"},
		{"27", "PyTorchJob/train container Worker/pytorch", "ml/trainer:v1"},
		{"28", "PyTorchJob/train container Worker/metrics", "ml/metrics:v9"},
		{"43", "JobSet/js container 0/main", "batch/driver:v4"},
		{"51", "JobSet/js container 1/main", "batch/worker:v3"},
		{"64", "LeaderWorkerSet/serve container leader/leader", "lws/server:v5"},
		{"69", "LeaderWorkerSet/serve container worker/worker", "lws/server:v5"},
	} {
		want.WriteString(path + ":" + l.line + ": " + l.where + ": " + reg.Image(l.image) + " is not pinned to a digest\n")
	}
	if out != want.String() {
		t.Fatalf("--check output:\n%s\nwant:\n%s", out, want.String())
	}

	heads0, _ := reg.ManifestRequests()
	code, out, errs := runKinds(t, reg, "", "-f", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	h := reg.Host
	expected := withPins(t, string(raw), []pinned{
		{`"` + h + `/ml/fetch:v2"`, `"` + h + `/ml/fetch:v2@` + fetch + `"`, 1},
		{h + "/ml/trainer:v1\n", h + "/ml/trainer:v1@" + trainer + "\n", 1},
		{h + "/ml/trainer:v1   #", h + "/ml/trainer:v1@" + trainer + "   #", 1},
		{h + "/ml/metrics:v9}", h + "/ml/metrics:v9@" + metrics + "}", 1},
		{h + "/batch/driver:v4\n", h + "/batch/driver:v4@" + driver + "\n", 1},
		{"'" + h + "/batch/worker:v3'", "'" + h + "/batch/worker:v3@" + worker + "'", 1},
		{h + "/lws/server:v5\n", h + "/lws/server:v5@" + server + "\n", 2},
	})
	if out != expected {
		t.Fatalf("output differs from the input with the images pinned, %s", diffLine(out, expected))
	}
	if heads, _ := reg.ManifestRequests(); heads-heads0 != 6 {
		t.Errorf("%d registry HEADs, want one per distinct tag (6)", heads-heads0)
	}
}

// A wildcard over a map follows what lookup follows: a replica spec that
// is an alias of another, and those a merge key brings, in document order
// (the map's own keys first); the anchored scalar is edited once.
func TestConfiguredWildcardsFollowAliasesAndMergeKeys(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	trainer := reg.Push(t, "ml/trainer:v1")
	chief := reg.Push(t, "ml/chief:v1")
	in := "apiVersion: kubeflow.org/v1\nkind: PyTorchJob\nmetadata: {name: aliased}\nspec:\n  pytorchReplicaSpecs:\n" +
		"    <<: {Chief: {template: {spec: {containers: [{name: c, image: " + reg.Image("ml/chief:v1") + "}]}}}}\n" +
		"    Master: &master\n      template:\n        spec:\n          containers:\n          - name: pytorch\n" +
		"            image: " + reg.Image("ml/trainer:v1") + "\n" +
		"    Worker: *master\n"

	code, out, _ := runKinds(t, reg, in, "--check")
	want := "<stdin>:12: PyTorchJob/aliased container Master/pytorch: " + reg.Image("ml/trainer:v1") + " is not pinned to a digest\n" +
		"<stdin>:12: PyTorchJob/aliased container Worker/pytorch: " + reg.Image("ml/trainer:v1") + " is not pinned to a digest\n" +
		"<stdin>:6: PyTorchJob/aliased container Chief/c: " + reg.Image("ml/chief:v1") + " is not pinned to a digest\n"
	if code != 1 || out != want {
		t.Fatalf("--check exit %d, output:\n%s\nwant:\n%s", code, out, want)
	}

	code, out, errs := runKinds(t, reg, in)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	expected := strings.NewReplacer(
		reg.Image("ml/trainer:v1"), reg.Image("ml/trainer:v1")+"@"+trainer,
		reg.Image("ml/chief:v1"), reg.Image("ml/chief:v1")+"@"+chief,
	).Replace(in)
	if out != expected {
		t.Fatalf("output:\n%s\nwant:\n%s", out, expected)
	}
}

// A configured kind is matched by its apiVersion's group as well as its
// name: with serving.knative.dev/v1 Service configured, a Knative Service
// is pinned, alone or in a List, while a core v1 Service and another
// group's Service, with an image at the very same path, are left alone.
func TestConfiguredKindMatchesItsGroupNotJustItsName(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	d := reg.Push(t, "web/app:v1")
	image := reg.Image("web/app:v1")
	doc := func(apiVersion, name string) string {
		return "apiVersion: " + apiVersion + "\nkind: Service\nmetadata:\n  name: " + name +
			"\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: " + image + "\n"
	}
	core, knative, other := doc("v1", "core"), doc("serving.knative.dev/v1", "kn"), doc("example.com/v1", "other")
	list := "apiVersion: v1\nkind: List\nitems:\n" +
		"- {apiVersion: v1, kind: Service, metadata: {name: core-item}, spec: {template: {spec: {containers: [{name: app, image: " + image + "}]}}}}\n" +
		"- {apiVersion: serving.knative.dev/v1, kind: Service, metadata: {name: kn-item}, spec: {template: {spec: {containers: [{name: app, image: " + image + "}]}}}}\n"
	in := core + "---\n" + knative + "---\n" + other + "---\n" + list

	code, out, _ := runKinds(t, reg, in, "--check")
	want := "<stdin>:21: Service/kn container app: " + image + " is not pinned to a digest\n" +
		"<stdin>:38: Service/kn-item container app: " + image + " is not pinned to a digest\n"
	if code != 1 || out != want {
		t.Fatalf("--check exit %d, output:\n%s\nwant:\n%s", code, out, want)
	}

	code, out, errs := runKinds(t, reg, in)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	pinnedList := strings.Replace(list, "kn-item}, spec: {template: {spec: {containers: [{name: app, image: "+image+"}",
		"kn-item}, spec: {template: {spec: {containers: [{name: app, image: "+image+"@"+d+"}", 1)
	expected := core + "---\n" + strings.Replace(knative, image, image+"@"+d, 1) + "---\n" + other + "---\n" + pinnedList
	if pinnedList == list {
		t.Fatal("the test's List has no Knative item to pin")
	}
	if out != expected {
		t.Fatalf("output differs, %s", diffLine(out, expected))
	}
}

// A --workload-kind value that does not parse, or that names a kind
// imagepin knows, is a flag error (exit 2) naming it, and nothing is
// read or written.
func TestBadWorkloadKindIsAFlagError(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	for _, tc := range []struct{ value, names, reason string }{
		{"example.com/v1/Widget", "", "no spec=<path>"},
		{"example.com/v1/widget,spec=spec.template.spec", "", "is not <group>/<version>/<Kind>"},
		{"example.com/v1/Widget,spec=spec..spec", "", `field ""`},
		{"example.com/v1/Widget,spec=spec.template.spec,replicas=3", "", `unknown option "replicas"`},
		{"apps/v1/Deployment,spec=spec.template.spec", `--workload-kind "apps/v1/Deployment,spec=spec.template.spec"`, "the kind Deployment is already imagepin's"},
	} {
		if tc.names == "" {
			tc.names = "--workload-kind " + strconv.Quote(tc.value)
		}
		code, out, errs := run(t, reg, "kind: Pod\nspec: {containers: [{name: a, image: "+reg.Image("x/y:z")+"}]}\n", "--workload-kind", tc.value)
		if code != 2 || out != "" {
			t.Errorf("--workload-kind %q: exit %d, stdout %q; want 2 and nothing written", tc.value, code, out)
		}
		if !strings.Contains(errs, tc.names) || !strings.Contains(errs, tc.reason) {
			t.Errorf("--workload-kind %q: stderr %q does not say %q and %q", tc.value, errs, tc.names, tc.reason)
		}
	}
}
