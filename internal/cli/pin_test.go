package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// fixture copies testdata/<name> into a temporary directory with REGISTRY
// replaced by the test registry's host, and returns its path.
func fixture(t *testing.T, reg *registrytest.Registry, names ...string) string {
	t.Helper()
	dir := t.TempDir()
	for _, name := range names {
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, name), bytes.ReplaceAll(raw, []byte("REGISTRY"), []byte(reg.Host)), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func run(t *testing.T, reg *registrytest.Registry, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	args = append(args, "--insecure-registry", reg.Host)
	code = Pin(context.Background(), args, strings.NewReader(stdin), &out, &errb)
	return code, out.String(), errb.String()
}

func TestPinKeepsCommentsAndPinsEveryContainer(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	app := reg.Push(t, "team/app:v1")
	migrate := reg.Push(t, "team/migrate:v3")
	dir := fixture(t, reg, "deployment.yaml")
	heads0, gets0 := reg.ManifestRequests() // the pushes' own

	code, out, errs := run(t, reg, "", "-f", filepath.Join(dir, "deployment.yaml"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	for _, want := range []string{
		"# The web tier. Comments, key order and unrelated fields survive pinning.",
		"name: web # the web app",
		"team: payments",
		"image: " + reg.Host + "/team/migrate:v3@" + migrate + " # runs first",
		"image: " + reg.Host + "/team/app:v1@" + app + "\n",
		"image: " + reg.Host + "/team/app:v1@sha256:" + strings.Repeat("a", 64), // already pinned: kept
		"- {name: MODE, value: prod}",
		"image: " + reg.Host + "/team/app:v1 # not a container: left alone",
		"        - name: app", // sequence indentation kept
	} {
		if !strings.Contains(out, want) {
			t.Errorf("output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "config.kubernetes.io/") || strings.Contains(out, "internal.config.kubernetes.io") {
		t.Errorf("output carries reader annotations:\n%s", out)
	}
	heads, gets := reg.ManifestRequests()
	if heads, gets = heads-heads0, gets-gets0; heads != 2 || gets != 0 {
		t.Errorf("registry requests: %d HEADs, %d GETs; want one HEAD per distinct tag (2)", heads, gets)
	}
}

func TestPinListsResourceListsAndStdin(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	app := reg.Push(t, "team/app:v1")
	migrate := reg.Push(t, "team/migrate:v3")
	dir := fixture(t, reg, "list.yaml", "resourcelist.yaml")

	code, out, errs := run(t, reg, "", "-f", filepath.Join(dir, "list.yaml"))
	if code != 0 || !strings.Contains(out, "image: "+reg.Host+"/team/app:v1@"+app) || !strings.Contains(out, "image: "+reg.Host+"/team/migrate:v3@"+migrate) {
		t.Fatalf("List: exit %d, stderr %s, output:\n%s", code, errs, out)
	}

	raw, err := os.ReadFile(filepath.Join(dir, "resourcelist.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	code, out, errs = run(t, reg, string(raw), "-f", "-")
	if code != 0 {
		t.Fatalf("ResourceList: exit %d: %s", code, errs)
	}
	if !strings.Contains(out, "kind: ResourceList") || !strings.Contains(out, "image: "+reg.Host+"/team/app:v1@"+app) {
		t.Fatalf("ResourceList not written back as one, pinned:\n%s", out)
	}
}

func TestCheckListsUnpinnedImagesWithFileAndLine(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	dir := fixture(t, reg, "deployment.yaml", "list.yaml")
	code, out, _ := run(t, reg, "", "--check", "-f", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1 with unpinned images", code)
	}
	for _, want := range []string{
		filepath.Join(dir, "deployment.yaml") + ":14: Deployment/web container migrate: " + reg.Host + "/team/migrate:v3 is not pinned",
		filepath.Join(dir, "deployment.yaml") + ":17: Deployment/web container app:",
		filepath.Join(dir, "list.yaml") + ":15: CronJob/nightly container task:",
		filepath.Join(dir, "list.yaml") + ":22: Pod/debug container shell:",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("--check output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "container pinned") {
		t.Errorf("an image with a digest was listed:\n%s", out)
	}
	heads, _ := reg.ManifestRequests()
	if heads != 0 {
		t.Errorf("--check sent %d requests to the registry, want none", heads)
	}
}

func TestUnresolvableAndMalformedAreClearErrors(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	dir := fixture(t, reg, "unresolvable.yaml", "malformed.yaml")

	code, out, errs := run(t, reg, "", "-f", filepath.Join(dir, "unresolvable.yaml"))
	if code != 1 || out != "" {
		t.Fatalf("unresolvable: exit %d with output %q; want 1 and nothing written", code, out)
	}
	if want := filepath.Join(dir, "unresolvable.yaml") + ":7: Pod/ghost container ghost:"; !strings.Contains(errs, want) || !strings.Contains(errs, `tag "nope" not found`) {
		t.Fatalf("unresolvable: stderr %q lacks %q and the reason", errs, want)
	}

	code, _, errs = run(t, reg, "", "-f", filepath.Join(dir, "malformed.yaml"))
	if code != 1 || !strings.Contains(errs, filepath.Join(dir, "malformed.yaml")+": not valid YAML") || !strings.Contains(errs, "line") {
		t.Fatalf("malformed: exit %d, stderr %q; want the file and line named", code, errs)
	}
}

// A tag the registry resolves but the container runtimes would refuse
// (it starts with a dash) is not written pinned: an error with the file
// and line, and nothing on stdout.
func TestResolvedButInvalidReferenceIsAnError(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	reg.Push(t, "team/app:-v1")
	pod := "apiVersion: v1\nkind: Pod\nmetadata:\n  name: odd\nspec:\n  containers:\n  - name: app\n    image: " + reg.Host + "/team/app:-v1\n"
	code, out, errs := run(t, reg, pod, "-f", "-")
	if code != 1 || out != "" {
		t.Fatalf("exit %d with output %q; want 1 and nothing written", code, out)
	}
	if !strings.Contains(errs, "<stdin>:8: Pod/odd container app:") || !strings.Contains(errs, "not a valid image reference") {
		t.Fatalf("stderr %q does not name the place and the reason", errs)
	}
}

// With --allowed-registries not naming the registry, nothing is sent to
// it and the run fails saying so; naming it, the same input pins.
func TestAllowedRegistriesLimitWhatIsContacted(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	reg.Push(t, "team/app:v1")
	in := "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\nspec:\n  containers:\n  - {name: c, image: " + reg.Image("team/app:v1") + "}\n"

	heads0, gets0 := reg.ManifestRequests() // the push's own
	code, out, errs := run(t, reg, in, "--allowed-registries", "registry.example.com")
	if code != 1 || out != "" || !strings.Contains(errs, "is not in --allowed-registries; not contacted") {
		t.Fatalf("disallowed: exit %d, stdout %q, stderr %q; want 1, nothing written, the reason", code, out, errs)
	}
	if heads, gets := reg.ManifestRequests(); heads != heads0 || gets != gets0 {
		t.Fatalf("a disallowed registry got %d HEAD and %d GET", heads-heads0, gets-gets0)
	}
	code, out, errs = run(t, reg, in, "--allowed-registries", "registry.example.com,"+reg.Host)
	if code != 0 || !strings.Contains(out, reg.Image("team/app:v1")+"@sha256:") {
		t.Fatalf("allowed: exit %d, stdout %q, stderr %q", code, out, errs)
	}
}

// Issue 14 item 4: image volumes (volumes[].image.reference) are pinned
// like containers, in place, quoting and comment kept, and listed by
// --check.
func TestPinPinsImageVolumes(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	server := reg.Push(t, "ml/server:v1")
	models := reg.Push(t, "ml/models:v7")
	dir := fixture(t, reg, "volumes.yaml")
	path := filepath.Join(dir, "volumes.yaml")
	in, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	code, out, _ := run(t, reg, "", "--check", "-f", path)
	if code != 1 || !strings.Contains(out, path+":17: Deployment/ml image volume models: "+reg.Host+"/ml/models:v7 is not pinned") {
		t.Fatalf("--check exit %d:\n%s", code, out)
	}
	code, out, errs := run(t, reg, "", "-f", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := strings.NewReplacer(
		reg.Host+"/ml/server:v1", reg.Host+"/ml/server:v1@"+server,
		reg.Host+"/ml/models:v7", reg.Host+"/ml/models:v7@"+models,
	).Replace(string(in))
	if out != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out, want)
	}
}

// Issue 14 items 2 and 5: `imagepin pin` pins an Argo Rollout's template,
// so a CI gate covers Rollouts too.
func TestPinPinsRollouts(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	d := reg.Push(t, "ro/app:v1")
	in := "apiVersion: argoproj.io/v1alpha1\nkind: Rollout\nmetadata:\n  name: ro\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: " + reg.Image("ro/app:v1") + "\n"
	code, out, errs := run(t, reg, in, "-f", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if want := strings.Replace(in, reg.Image("ro/app:v1"), reg.Image("ro/app:v1")+"@"+d, 1); out != want {
		t.Fatalf("output:\n%s\nwant:\n%s", out, want)
	}
}
