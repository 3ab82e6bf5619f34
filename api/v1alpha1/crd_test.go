package v1alpha1_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/rest"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

var (
	env *testenv.Env
	k8s client.Client
)

func TestMain(m *testing.M) {
	var err error
	env, err = testenv.Start()
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	k8s, err = client.New(env.Config, client.Options{Scheme: env.Scheme})
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		os.Exit(1)
	}
	code := m.Run()
	if err := env.Stop(); err != nil {
		fmt.Fprintln(os.Stderr, "stop control plane:", err)
	}
	os.Exit(code)
}

const digestA = "sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"

// imagePin builds an ImagePin in namespace default, changed by opts.
func imagePin(name string, opts ...func(*imagesv1alpha1.ImagePin)) *imagesv1alpha1.ImagePin {
	p := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "default"}}
	for _, o := range opts {
		o(p)
	}
	return p
}

func dur(s string) *metav1.Duration {
	d, err := time.ParseDuration(s)
	if err != nil {
		panic(err)
	}
	return &metav1.Duration{Duration: d}
}

// The API server refuses each of these with a message that names the field
// and says what is wrong, as a user meets it in `kubectl apply`.
func TestAPIServerRefusesBadImagePins(t *testing.T) {
	tests := []struct {
		name  string
		pin   *imagesv1alpha1.ImagePin
		raw   string // a spec as JSON, for values the Go types cannot hold
		field string // the field path the message must name
		says  string // what the message must say about it
	}{
		{
			name:  "unknown mode",
			pin:   imagePin("bad-mode", func(p *imagesv1alpha1.ImagePin) { p.Spec.Mode = "Pinned" }),
			field: "spec.mode", says: `Unsupported value: "Pinned"`,
		},
		{
			name:  "interval below 10s",
			pin:   imagePin("bad-interval", func(p *imagesv1alpha1.ImagePin) { p.Spec.Interval = dur("1s") }),
			field: "spec.interval", says: "interval must be at least 10s",
		},
		{
			name: "keepLast above history's length",
			pin: imagePin("bad-keeplast", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: true, KeepLast: new(int32(11))}
			}),
			field: "spec.retention.keepLast", says: "less than or equal to 10",
		},
		{
			name:  "interval not a duration",
			pin:   imagePin("bad-interval-format"),
			raw:   `{"interval": "five minutes"}`,
			field: "spec.interval", says: "should match",
		},
		{
			name: "digest not sha256 hex",
			pin: imagePin("bad-digest", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: "reg.io/app:v1", Digest: "sha256:xyz"}}
			}),
			field: "spec.overrides[0].digest", says: "should match '^sha256:[a-f0-9]{64}$'",
		},
		{
			name: "override without digest",
			pin: imagePin("no-digest", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: "reg.io/app:v1"}}
			}),
			field: "spec.overrides[0]", says: "override for reg.io/app:v1 needs a digest",
		},
		{
			name: "override image carrying a digest",
			pin: imagePin("digest-in-image", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: "reg.io/app:v1@" + digestA, Digest: digestA}}
			}),
			field: "spec.overrides[0].image", says: "without a digest",
		},
		{
			name: "override of an excluded image",
			pin: imagePin("override-excluded", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Images = &imagesv1alpha1.ImageFilter{Exclude: []string{"reg.io/app:v1"}}
				p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: "reg.io/app:v1", Digest: digestA}}
			}),
			field: "spec", says: "an override names an image that spec.images.exclude excludes",
		},
		{
			name: "two overrides for one image",
			pin: imagePin("duplicate-override", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Overrides = []imagesv1alpha1.ImageOverride{{Image: "reg.io/app:v1", Digest: digestA}, {Image: "reg.io/app:v1", Digest: digestA}}
			}),
			field: "spec.overrides[1]", says: "Duplicate value",
		},
		{
			// A kind the manager does not know is Ready=False (the kinds
			// it is configured with vary); what is not a kind name at all
			// is refused here.
			name: "not a kind name",
			pin: imagePin("bad-kind", func(p *imagesv1alpha1.ImagePin) {
				p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{"Deployment", "deployments.apps"}
			}),
			field: "spec.kinds[1]", says: `should match`,
		},
		{
			name:  "unknown failure policy",
			pin:   imagePin("bad-policy", func(p *imagesv1alpha1.ImagePin) { p.Spec.FailurePolicy = "Retry" }),
			field: "spec.failurePolicy", says: `Unsupported value: "Retry"`,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var err error
			if tt.raw != "" {
				err = createRaw(t, tt.pin.Name, tt.raw)
			} else {
				err = k8s.Create(context.Background(), tt.pin)
			}
			if err == nil {
				t.Fatalf("the API server accepted %s; it must refuse it naming %s", tt.name, tt.field)
			}
			if !apierrors.IsInvalid(err) {
				t.Fatalf("want an Invalid error, got %v", err)
			}
			msg := err.Error()
			t.Logf("refused: %s", msg)
			if !strings.Contains(msg, tt.field+":") {
				t.Errorf("message does not name the field %s: %s", tt.field, msg)
			}
			if !strings.Contains(msg, tt.says) {
				t.Errorf("message does not say %q: %s", tt.says, msg)
			}
		})
	}
}

// createRaw creates an ImagePin whose spec is raw JSON, to send values the Go
// types cannot hold.
func createRaw(t *testing.T, name, spec string) error {
	t.Helper()
	body := fmt.Sprintf(`{"apiVersion":"images.imagepin.dev/v1alpha1","kind":"ImagePin","metadata":{"name":%q,"namespace":"default"},"spec":%s}`, name, spec)
	rc := restClient(t)
	return rc.Post().AbsPath("/apis/images.imagepin.dev/v1alpha1/namespaces/default/imagepins").
		Body([]byte(body)).SetHeader("Content-Type", "application/json").Do(context.Background()).Error()
}

func restClient(t *testing.T) rest.Interface {
	t.Helper()
	cfg := rest.CopyConfig(env.Config)
	cfg.GroupVersion = &imagesv1alpha1.GroupVersion
	cfg.APIPath = "/apis"
	cfg.NegotiatedSerializer = serializer.NewCodecFactory(env.Scheme).WithoutConversion()
	rc, err := rest.RESTClientFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return rc
}

func TestAPIServerDefaultsAnEmptySpec(t *testing.T) {
	ctx := context.Background()
	p := imagePin("defaults")
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, p) })
	var got imagesv1alpha1.ImagePin
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Mode != imagesv1alpha1.ModeObserve {
		t.Errorf("mode = %q, want Observe", got.Spec.Mode)
	}
	if got.Spec.Interval == nil || got.Spec.Interval.Duration != 5*time.Minute {
		t.Errorf("interval = %v, want 5m", got.Spec.Interval)
	}
	if got.Spec.FailurePolicy != imagesv1alpha1.FailurePolicyIgnore {
		t.Errorf("failurePolicy = %q, want Ignore", got.Spec.FailurePolicy)
	}
}

// Every sample ImagePin in config/samples is accepted as it stands.
func TestSamplesAreAccepted(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "images_v1alpha1_imagepin_*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if len(files) < 3 {
		t.Fatalf("want a sample ImagePin per mode in config/samples, found %d", len(files))
	}
	modes := map[imagesv1alpha1.Mode]bool{}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var p imagesv1alpha1.ImagePin
		if err := yaml.UnmarshalStrict(raw, &p); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		p.Namespace = "default"
		if err := k8s.Create(context.Background(), &p, client.DryRunAll); err != nil {
			t.Errorf("%s refused: %v", filepath.Base(f), err)
		}
		modes[p.Spec.Mode] = true
	}
	for _, m := range []imagesv1alpha1.Mode{imagesv1alpha1.ModeObserve, imagesv1alpha1.ModePin, imagesv1alpha1.ModeFollow} {
		if !modes[m] {
			t.Errorf("no sample ImagePin in mode %s", m)
		}
	}
}

// `kubectl get ipin` finds the resource by its short name and category and
// shows the printer columns of DESIGN.md, filled from the status.
func TestKubectlGetShowsPrinterColumns(t *testing.T) {
	ctx := context.Background()
	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	resources, err := dc.ServerResourcesForGroupVersion(imagesv1alpha1.GroupVersion.String())
	if err != nil {
		t.Fatal(err)
	}
	var found bool
	for _, r := range resources.APIResources {
		if r.Name != "imagepins" {
			continue
		}
		found = true
		if !slices.Contains(r.ShortNames, "ipin") || !slices.Contains(r.Categories, "imagepin") || !r.Namespaced {
			t.Errorf("imagepins: shortNames %v, categories %v, namespaced %v; want ipin, imagepin, true", r.ShortNames, r.Categories, r.Namespaced)
		}
	}
	if !found {
		t.Fatal("imagepins not served")
	}

	p := imagePin("columns", func(p *imagesv1alpha1.ImagePin) { p.Spec.Mode = imagesv1alpha1.ModePin })
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, p) })
	now := metav1.Now()
	p.Status = imagesv1alpha1.ImagePinStatus{
		LastCheckTime: &now,
		Summary:       imagesv1alpha1.Summary{Workloads: 2, Images: 3, Pinned: 1, Drifted: 2},
		Conditions: []metav1.Condition{{
			Type: imagesv1alpha1.ConditionReady, Status: metav1.ConditionTrue, Reason: imagesv1alpha1.ReasonResolved,
			Message: "ok", LastTransitionTime: now,
		}},
	}
	if err := k8s.Status().Update(ctx, p); err != nil {
		t.Fatal(err)
	}

	raw, err := restClient(t).Get().AbsPath("/apis/images.imagepin.dev/v1alpha1/namespaces/default/imagepins/columns").
		SetHeader("Accept", "application/json;as=Table;v=v1;g=meta.k8s.io").DoRaw(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var table metav1.Table
	if err := json.Unmarshal(raw, &table); err != nil {
		t.Fatal(err)
	}
	want := []struct {
		name     string
		priority int32
	}{{"Name", 0}, {"Mode", 0}, {"Workloads", 0}, {"Images", 0}, {"Pinned", 0}, {"Drifted", 0}, {"Ready", 0}, {"Age", 0}, {"Last Check", 1}}
	if len(table.ColumnDefinitions) != len(want) {
		t.Fatalf("columns = %v, want %v", table.ColumnDefinitions, want)
	}
	for i, w := range want {
		c := table.ColumnDefinitions[i]
		if c.Name != w.name || c.Priority != w.priority {
			t.Errorf("column %d = %s (priority %d), want %s (priority %d)", i, c.Name, c.Priority, w.name, w.priority)
		}
	}
	if len(table.Rows) != 1 {
		t.Fatalf("rows = %d, want 1", len(table.Rows))
	}
	cells := fmt.Sprint(table.Rows[0].Cells[:7])
	if wantCells := "[columns Pin 2 3 1 2 True]"; cells != wantCells {
		t.Errorf("cells = %s, want %s", cells, wantCells)
	}
}
