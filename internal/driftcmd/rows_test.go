package driftcmd

import (
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// A suspended ImagePin takes no part in Writer's rule: where a
// ClusterImagePin reports the same container, its row is the one shown;
// elsewhere the suspended ImagePin's last check still is.
func TestSuspendedImagePinGivesWayToAClusterImagePin(t *testing.T) {
	web := imagesv1alpha1.WorkloadImage{Kind: imagesv1alpha1.KindDeployment, Name: "web", Container: "app", Drift: []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftTagMoved}}
	cache := imagesv1alpha1.WorkloadImage{Kind: imagesv1alpha1.KindStatefulSet, Name: "cache", Container: "redis", Drift: []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftTagMoved}}
	pin := imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "held"}}
	pin.Spec.Suspend = true
	pin.Status.Images = []imagesv1alpha1.ImageStatus{{Image: "reg.io/web:v1", Workloads: []imagesv1alpha1.WorkloadImage{web, cache}}}
	cp := imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "platform"}}
	inShop := web
	inShop.Namespace = "shop"
	cp.Status.Images = []imagesv1alpha1.ImageStatus{{Image: "reg.io/web:v1", Workloads: []imagesv1alpha1.WorkloadImage{inShop}}}
	cp.Status.Summary.Namespaces = 3
	cp.Status.Namespaces = []imagesv1alpha1.NamespaceSummary{{Name: "shop"}}

	rep := collect([]imagesv1alpha1.ImagePin{pin}, []imagesv1alpha1.ClusterImagePin{cp}, "shop")
	got := map[string]string{}
	for _, r := range rep.rows {
		got[r.w.Name] = r.source.Kind + "/" + r.source.Name
	}
	if len(rep.rows) != 2 || got["web"] != "ClusterImagePin/platform" || got["cache"] != "ImagePin/held" {
		t.Errorf("rows from %v, want web from the ClusterImagePin and cache from the suspended ImagePin", got)
	}
	// The breakdown is whole: a selected namespace it does not name has
	// nothing left out.
	cp.Status.Summary.Omitted = 7
	if n := clusterOmitted(&cp, "quiet"); n != 0 {
		t.Errorf("omitted in a namespace the whole breakdown does not name = %d, want 0", n)
	}
}
