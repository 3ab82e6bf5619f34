package v1alpha1_test

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/discovery"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// A ClusterImagePin is cluster-scoped, found as cipin and in the imagepin
// category, defaults as an ImagePin does plus its namespace exclusions,
// and is refused with the field named when its spec is bad.
func TestClusterImagePinAPI(t *testing.T) {
	ctx := context.Background()
	dc, err := discovery.NewDiscoveryClientForConfig(env.Config)
	if err != nil {
		t.Fatal(err)
	}
	resources, err := dc.ServerResourcesForGroupVersion(imagesv1alpha1.GroupVersion.String())
	if err != nil {
		t.Fatal(err)
	}
	i := slices.IndexFunc(resources.APIResources, func(r metav1.APIResource) bool { return r.Name == "clusterimagepins" })
	if i < 0 {
		t.Fatal("clusterimagepins not served")
	}
	if r := resources.APIResources[i]; !slices.Contains(r.ShortNames, "cipin") || !slices.Contains(r.Categories, "imagepin") || r.Namespaced {
		t.Errorf("clusterimagepins: shortNames %v, categories %v, namespaced %v; want cipin, imagepin, false", r.ShortNames, r.Categories, r.Namespaced)
	}

	p := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "defaults"}}
	if err := k8s.Create(ctx, p); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k8s.Delete(ctx, p) })
	var got imagesv1alpha1.ClusterImagePin
	if err := k8s.Get(ctx, client.ObjectKeyFromObject(p), &got); err != nil {
		t.Fatal(err)
	}
	if got.Spec.Mode != imagesv1alpha1.ModeObserve || got.Spec.Interval == nil || got.Spec.Interval.Duration != 5*time.Minute {
		t.Errorf("mode %q, interval %v; want Observe and 5m", got.Spec.Mode, got.Spec.Interval)
	}
	if !slices.Equal(got.Spec.ExcludeNamespaces, []string{"kube-system", "imagepin-system"}) {
		t.Errorf("excludeNamespaces = %v, want [kube-system imagepin-system] by default", got.Spec.ExcludeNamespaces)
	}

	bad := []struct {
		name  string
		edit  func(*imagesv1alpha1.ClusterImagePin)
		field string
	}{
		{"interval too short", func(p *imagesv1alpha1.ClusterImagePin) { p.Spec.Interval = dur("1s") }, "spec.interval"},
		{"unknown mode", func(p *imagesv1alpha1.ClusterImagePin) { p.Spec.Mode = "Always" }, "spec.mode"},
		{"bad namespace selector", func(p *imagesv1alpha1.ClusterImagePin) {
			p.Spec.NamespaceSelector = &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "team", Operator: "Near"}}}
		}, "spec.namespaceSelector"},
		{"empty excluded name", func(p *imagesv1alpha1.ClusterImagePin) { p.Spec.ExcludeNamespaces = []string{""} }, "spec.excludeNamespaces"},
		{"retention.protect, an ImagePin's", func(p *imagesv1alpha1.ClusterImagePin) {
			p.Spec.Retention = &imagesv1alpha1.RetentionSpec{Protect: true}
		}, "retention.protect and retention.pushSecretRef are set on an ImagePin"},
	}
	for _, tt := range bad {
		t.Run(tt.name, func(t *testing.T) {
			p := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "bad"}}
			tt.edit(p)
			err := k8s.Create(ctx, p, client.DryRunAll)
			if err == nil {
				t.Fatal("accepted")
			}
			if !strings.Contains(err.Error(), tt.field) {
				t.Errorf("refused without naming %s: %v", tt.field, err)
			}
		})
	}

	files, err := filepath.Glob(filepath.Join(testenv.RepoRoot(), "config", "samples", "images_v1alpha1_clusterimagepin_*.yaml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no sample ClusterImagePin in config/samples (%v)", err)
	}
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		var s imagesv1alpha1.ClusterImagePin
		if err := yaml.UnmarshalStrict(raw, &s); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		if err := k8s.Create(ctx, &s, client.DryRunAll); err != nil {
			t.Errorf("%s refused: %v", filepath.Base(f), err)
		}
	}
}
