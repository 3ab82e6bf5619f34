package selection

import (
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

func TestCompileRefusesWhatItCannotHonour(t *testing.T) {
	tests := []struct {
		name    string
		spec    imagesv1alpha1.ImagePinSpec
		wantErr string // substring; empty means valid
	}{
		{name: "empty spec selects everything", spec: imagesv1alpha1.ImagePinSpec{}},
		{
			name:    "bad selector operator",
			spec:    imagesv1alpha1.ImagePinSpec{Selector: &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "app", Operator: "Near"}}}},
			wantErr: "spec.selector:",
		},
		{
			name:    "bad label value",
			spec:    imagesv1alpha1.ImagePinSpec{Selector: &metav1.LabelSelector{MatchLabels: map[string]string{"app": "not a value"}}},
			wantErr: "spec.selector:",
		},
		{name: "unknown kind", spec: imagesv1alpha1.ImagePinSpec{Kinds: []imagesv1alpha1.WorkloadKind{"Deployment", "Pod"}}, wantErr: `spec.kinds[1]: "Pod"`},
		{name: "unterminated class", spec: imagesv1alpha1.ImagePinSpec{Images: &imagesv1alpha1.ImageFilter{Include: []string{"reg.io/[abc"}}}, wantErr: `spec.images.include[0]: "reg.io/[abc" is not a valid glob`},
		{name: "stray bracket in exclude", spec: imagesv1alpha1.ImagePinSpec{Images: &imagesv1alpha1.ImageFilter{Exclude: []string{"ok/*", "x]"}}}, wantErr: "spec.images.exclude[1]"},
		{name: "empty glob", spec: imagesv1alpha1.ImagePinSpec{Images: &imagesv1alpha1.ImageFilter{Include: []string{""}}}, wantErr: "empty pattern"},
		{name: "unknown mode", spec: imagesv1alpha1.ImagePinSpec{Mode: "Pinned"}, wantErr: `spec.mode: "Pinned"`},
		{name: "interval too short", spec: imagesv1alpha1.ImagePinSpec{Interval: &metav1.Duration{Duration: time.Second}}, wantErr: "spec.interval: 1s is shorter than the minimum of 10s"},
		{name: "retention check too short", spec: imagesv1alpha1.ImagePinSpec{Retention: &imagesv1alpha1.RetentionSpec{CheckInterval: &metav1.Duration{Duration: time.Second}}}, wantErr: "spec.retention.checkInterval: 1s is shorter than the minimum of 1m0s"},
		{name: "negative minAge", spec: imagesv1alpha1.ImagePinSpec{Follow: &imagesv1alpha1.FollowSpec{MinAge: &metav1.Duration{Duration: -time.Second}}}, wantErr: "spec.follow.minAge"},
		{name: "override without digest", spec: imagesv1alpha1.ImagePinSpec{Overrides: []imagesv1alpha1.ImageOverride{{Image: "reg.io/app:v1"}}}, wantErr: "spec.overrides[0]: override for reg.io/app:v1 needs a digest"},
		// repo and repo:latest are one image: the controller and the
		// webhook must not each pick one of two overrides.
		{name: "two overrides of one image", spec: imagesv1alpha1.ImagePinSpec{Overrides: []imagesv1alpha1.ImageOverride{
			{Image: "reg.io/app", Digest: imagesv1alpha1.Digest("sha256:" + strings.Repeat("a", 64))},
			{Image: "reg.io/app:latest", Digest: imagesv1alpha1.Digest("sha256:" + strings.Repeat("b", 64))},
		}}, wantErr: "spec.overrides[1]: reg.io/app:latest is the image spec.overrides[0] (reg.io/app) already holds"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Compile(&tt.spec)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Compile: unexpected error %v", err)
				}
				if sel == nil {
					t.Fatal("Compile returned neither a selection nor an error")
				}
				return
			}
			if err == nil {
				t.Fatalf("Compile accepted a spec it should refuse with %q", tt.wantErr)
			}
			if !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("error %q does not say %q", err, tt.wantErr)
			}
		})
	}
}

func TestCompileDefaults(t *testing.T) {
	sel, err := Compile(&imagesv1alpha1.ImagePinSpec{})
	if err != nil {
		t.Fatal(err)
	}
	if sel.Interval != DefaultInterval {
		t.Errorf("interval = %s, want %s", sel.Interval, DefaultInterval)
	}
	if got := sel.Kinds(); len(got) != len(workload.SelectableKinds()) {
		t.Errorf("kinds = %v, want all five", got)
	}
	if !sel.SelectsLabels(map[string]string{"anything": "goes"}) || !sel.SelectsLabels(nil) {
		t.Error("an empty selector must select every workload")
	}
}

func TestKindsKeepCanonicalOrder(t *testing.T) {
	sel, err := Compile(&imagesv1alpha1.ImagePinSpec{Kinds: []imagesv1alpha1.WorkloadKind{"CronJob", "Deployment"}})
	if err != nil {
		t.Fatal(err)
	}
	got := sel.Kinds()
	if len(got) != 2 || got[0] != imagesv1alpha1.KindDeployment || got[1] != imagesv1alpha1.KindCronJob {
		t.Fatalf("kinds = %v, want [Deployment CronJob]", got)
	}
	if sel.SelectsKind(imagesv1alpha1.KindJob) {
		t.Error("Job selected although spec.kinds leaves it out")
	}
}

func TestSelectsImage(t *testing.T) {
	tests := []struct {
		name             string
		include, exclude []string
		image            string
		want             bool
	}{
		{name: "no filter selects all", image: "nginx:1.27", want: true},
		{name: "star crosses slashes", include: []string{"myregistry.mycompany.com/*"}, image: "myregistry.mycompany.com/demo/myimage:v1", want: true},
		{name: "other registry not included", include: []string{"myregistry.mycompany.com/*"}, image: "docker.io/library/nginx:1.27", want: false},
		{name: "prefix is not a match", include: []string{"myregistry.mycompany.com/*"}, image: "evil.com/myregistry.mycompany.com/x:v1", want: false},
		{name: "exclude wins", include: []string{"reg.io/*"}, exclude: []string{"*/sidecars/*"}, image: "reg.io/team/sidecars/envoy:v1", want: false},
		{name: "exclude only", exclude: []string{"*/sidecars/*"}, image: "reg.io/team/app:v1", want: true},
		{name: "digest removed before matching", include: []string{"reg.io/app:v1"}, image: "reg.io/app:v1@sha256:" + strings.Repeat("a", 64), want: true},
		{name: "dots are literal", include: []string{"reg.io/app:v1.2"}, image: "reg.io/app:v1x2", want: false},
		{name: "question mark is one character", include: []string{"reg.io/app:v?"}, image: "reg.io/app:v7", want: true},
		{name: "class", include: []string{"reg.io/app:v[0-9]"}, image: "reg.io/app:vx", want: false},
		{name: "negated class", include: []string{"reg.io/app:v[!0-9]"}, image: "reg.io/app:vx", want: true},
		{name: "port in registry", include: []string{"localhost:5000/*"}, image: "localhost:5000/demo/app:v1", want: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			sel, err := Compile(&imagesv1alpha1.ImagePinSpec{Images: &imagesv1alpha1.ImageFilter{Include: tt.include, Exclude: tt.exclude}})
			if err != nil {
				t.Fatal(err)
			}
			if got := sel.SelectsImage(tt.image); got != tt.want {
				t.Errorf("SelectsImage(%q) with include %v exclude %v = %v, want %v", tt.image, tt.include, tt.exclude, got, tt.want)
			}
		})
	}
}

func TestWriterOfIsTheFirstWritingImagePinByName(t *testing.T) {
	pin := func(name string, mode imagesv1alpha1.Mode, suspend bool) imagesv1alpha1.ImagePin {
		p := imagesv1alpha1.ImagePin{}
		p.Name, p.Spec.Mode, p.Spec.Suspend = name, mode, suspend
		return p
	}
	cluster := func(name string, mode imagesv1alpha1.Mode) imagesv1alpha1.ImagePin {
		cp := &imagesv1alpha1.ClusterImagePin{}
		cp.Name, cp.Spec.Mode = name, mode
		return AsImagePin(cp, "team")
	}
	labels := map[string]string{"app": "web"}
	for _, tc := range []struct {
		name    string
		pins    []imagesv1alpha1.ImagePin
		cluster []imagesv1alpha1.ImagePin
		want    string
	}{
		{"one", []imagesv1alpha1.ImagePin{pin("web", imagesv1alpha1.ModePin, false)}, nil, "web"},
		{"first by name", []imagesv1alpha1.ImagePin{pin("z", imagesv1alpha1.ModeFollow, false), pin("a", imagesv1alpha1.ModePin, false)}, nil, "a"},
		{"observers do not write", []imagesv1alpha1.ImagePin{pin("a", imagesv1alpha1.ModeObserve, false), pin("b", imagesv1alpha1.ModePin, false)}, nil, "b"},
		{"suspended ones do not write", []imagesv1alpha1.ImagePin{pin("a", imagesv1alpha1.ModePin, true), pin("b", imagesv1alpha1.ModeFollow, false)}, nil, "b"},
		{"nobody", []imagesv1alpha1.ImagePin{pin("a", imagesv1alpha1.ModeObserve, false)}, nil, ""},
		// Issue 16 item 2: the namespaced one wins.
		{"a ClusterImagePin writes where no ImagePin selects", nil, []imagesv1alpha1.ImagePin{cluster("platform", imagesv1alpha1.ModePin)}, ClusterPinPrefix + "platform"},
		{"the first ClusterImagePin by name", nil, []imagesv1alpha1.ImagePin{cluster("z", imagesv1alpha1.ModePin), cluster("a", imagesv1alpha1.ModeFollow)}, ClusterPinPrefix + "a"},
		{"a ClusterImagePin in Observe writes nothing", nil, []imagesv1alpha1.ImagePin{cluster("a", imagesv1alpha1.ModeObserve), cluster("b", imagesv1alpha1.ModePin)}, ClusterPinPrefix + "b"},
		{"a namespaced Observe ImagePin opts out", []imagesv1alpha1.ImagePin{pin("mine", imagesv1alpha1.ModeObserve, false)}, []imagesv1alpha1.ImagePin{cluster("platform", imagesv1alpha1.ModePin)}, ""},
		{"a namespaced Pin ImagePin holds its own digest", []imagesv1alpha1.ImagePin{pin("zz", imagesv1alpha1.ModePin, false)}, []imagesv1alpha1.ImagePin{cluster("aa", imagesv1alpha1.ModeFollow)}, "zz"},
		{"a suspended namespaced ImagePin does not", []imagesv1alpha1.ImagePin{pin("mine", imagesv1alpha1.ModeObserve, true)}, []imagesv1alpha1.ImagePin{cluster("platform", imagesv1alpha1.ModePin)}, ClusterPinPrefix + "platform"},
	} {
		got := ""
		if w, _ := WritersOf(tc.pins, tc.cluster, imagesv1alpha1.KindDeployment, labels).For("reg.io/app:v1"); w != nil {
			got = w.Name
		}
		if got != tc.want {
			t.Errorf("%s: writer = %q, want %q", tc.name, got, tc.want)
		}
	}
}

func TestClusterImagePinsSelectNamespaces(t *testing.T) {
	ns := func(name string, labels map[string]string) *corev1.Namespace {
		n := &corev1.Namespace{}
		n.Name, n.Labels = name, labels
		return n
	}
	cp := func(sel *metav1.LabelSelector, exclude ...string) *imagesv1alpha1.ClusterImagePin {
		c := &imagesv1alpha1.ClusterImagePin{}
		c.Name, c.Spec.NamespaceSelector, c.Spec.ExcludeNamespaces = "platform", sel, exclude
		return c
	}
	opted := &metav1.LabelSelector{MatchLabels: map[string]string{"imagepin.dev/pin": "enabled"}}
	for _, tc := range []struct {
		name string
		cp   *imagesv1alpha1.ClusterImagePin
		ns   *corev1.Namespace
		want bool
	}{
		{"empty selector, every namespace", cp(nil), ns("team-a", nil), true},
		{"excluded by name", cp(nil, "kube-system"), ns("kube-system", nil), false},
		{"excluded whatever its labels", cp(opted, "kube-system"), ns("kube-system", map[string]string{"imagepin.dev/pin": "enabled"}), false},
		{"opted in by label", cp(opted), ns("team-a", map[string]string{"imagepin.dev/pin": "enabled"}), true},
		{"not opted in", cp(opted), ns("team-b", nil), false},
		{"an invalid selector selects nothing", cp(&metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "a", Operator: "Near"}}}), ns("team-a", nil), false},
	} {
		if got := SelectsNamespace(tc.cp, tc.ns); got != tc.want {
			t.Errorf("%s: SelectsNamespace = %v, want %v", tc.name, got, tc.want)
		}
	}
}

// Issue 13 item 10: the writer respects image filters, so two ImagePins
// with disjoint images.include both pin, each its own images.
func TestWriterRespectsImageFilters(t *testing.T) {
	pin := func(name string, include ...string) imagesv1alpha1.ImagePin {
		p := imagesv1alpha1.ImagePin{}
		p.Name, p.Spec.Mode = name, imagesv1alpha1.ModePin
		p.Spec.Images = &imagesv1alpha1.ImageFilter{Include: include}
		return p
	}
	pins := []imagesv1alpha1.ImagePin{pin("a-apps", "reg.io/apps/*"), pin("b-sidecars", "reg.io/sidecars/*")}
	for image, want := range map[string]string{
		"reg.io/apps/web:v1":      "a-apps",
		"reg.io/sidecars/envoy:1": "b-sidecars",
		"docker.io/nginx:1.27":    "",
	} {
		got := ""
		if w, _ := WritersOf(pins, nil, imagesv1alpha1.KindDeployment, nil).For(image); w != nil {
			got = w.Name
		}
		if got != want {
			t.Errorf("writer of %s = %q, want %q", image, got, want)
		}
	}
}

// Issue 13 item 4: an untagged image stays selected by the filter that
// selected it once it is pinned as "repo:latest@…", and stays excluded.
func TestFiltersSeeAnUntaggedImageAndItsPinAlike(t *testing.T) {
	inc, err := Compile(&imagesv1alpha1.ImagePinSpec{Images: &imagesv1alpha1.ImageFilter{Include: []string{"reg.io/app"}}})
	if err != nil {
		t.Fatal(err)
	}
	exc, err := Compile(&imagesv1alpha1.ImagePinSpec{Images: &imagesv1alpha1.ImageFilter{Exclude: []string{"reg.io/app"}}})
	if err != nil {
		t.Fatal(err)
	}
	for _, image := range []string{"reg.io/app", "reg.io/app:latest@sha256:" + strings.Repeat("a", 64), "reg.io/app:latest"} {
		if !inc.SelectsImage(image) {
			t.Errorf("include reg.io/app does not select %s", image)
		}
		if exc.SelectsImage(image) {
			t.Errorf("exclude reg.io/app selects %s", image)
		}
	}
	if inc.SelectsImage("reg.io/app:v1") {
		t.Error("include reg.io/app selects reg.io/app:v1")
	}
}
