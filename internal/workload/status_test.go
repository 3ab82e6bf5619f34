package workload

import (
	"encoding/json"
	"fmt"
	"runtime"
	"testing"
	"unsafe"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// decodedPin is an ImagePin with n workloads of one image, decoded from
// JSON as the cache decodes it: every string its own copy.
func decodedPin(t *testing.T, n int) *imagesv1alpha1.ImagePin {
	t.Helper()
	digest := imagesv1alpha1.Digest(fmt.Sprintf("sha256:%064x", 7))
	img := imagesv1alpha1.ImageStatus{Image: "reg.io/app:v1", Digest: digest,
		History: []imagesv1alpha1.DigestRecord{{Digest: digest, FirstSeen: metav1.Unix(1700000000, 0)}}}
	for i := range n {
		img.Workloads = append(img.Workloads, imagesv1alpha1.WorkloadImage{
			Kind: "Deployment", Name: fmt.Sprintf("web-%04d", i), Container: "app", PinnedDigest: digest,
			Running: []imagesv1alpha1.RunningDigest{{Digest: digest, Pods: 5, Nodes: []string{"node-a", "node-b", "node-c"}}},
			Drift:   []imagesv1alpha1.DriftReason{imagesv1alpha1.DriftUnpinned},
		})
	}
	pin := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Name: "pin", Namespace: "prod"},
		Status: imagesv1alpha1.ImagePinStatus{Images: []imagesv1alpha1.ImageStatus{img}}}
	raw, err := json.Marshal(pin)
	if err != nil {
		t.Fatal(err)
	}
	var out imagesv1alpha1.ImagePin
	if err := json.Unmarshal(raw, &out); err != nil {
		t.Fatal(err)
	}
	return &out
}

// TestTheCacheHoldsAnImagePinsRepeatedStatusOnce: the status reads the
// same, its repeated strings are one copy, and it costs less.
func TestTheCacheHoldsAnImagePinsRepeatedStatusOnce(t *testing.T) {
	const n = 2000
	want := decodedPin(t, n)
	before := liveHeap()
	loose := decodedPin(t, n)
	looseBytes := liveHeap() - before

	before = liveHeap()
	obj, err := keepStatusCompact(decodedPin(t, n))
	if err != nil {
		t.Fatal(err)
	}
	compact := obj.(*imagesv1alpha1.ImagePin)
	compactBytes := liveHeap() - before
	t.Logf("status per workload: %d bytes decoded, %d held", looseBytes/n, compactBytes/n)

	if !apiequality.Semantic.DeepEqual(want, compact) {
		t.Fatal("the compacted ImagePin reads differently")
	}
	ws := compact.Status.Images[0].Workloads
	same := func(what string, a, b string) {
		t.Helper()
		if unsafe.StringData(a) != unsafe.StringData(b) {
			t.Errorf("%s is held twice", what)
		}
	}
	same("a tag's digest", string(ws[0].PinnedDigest), string(ws[n-1].Running[0].Digest))
	same("the kind", string(ws[0].Kind), string(ws[n-1].Kind))
	same("the container", ws[0].Container, ws[n-1].Container)
	same("a node", ws[0].Running[0].Nodes[2], ws[n-1].Running[0].Nodes[2])
	same("a drift reason", string(ws[0].Drift[0]), string(ws[n-1].Drift[0]))
	// Equal lists are one list.
	if &ws[0].Running[0] != &ws[n-1].Running[0] || &ws[0].Drift[0] != &ws[n-1].Drift[0] {
		t.Error("equal lists of running digests or drift reasons are held twice")
	}
	if compactBytes > looseBytes*3/4 {
		t.Errorf("the compacted status holds %d bytes, not a quarter under the decoded %d", compactBytes, looseBytes)
	}
	runtime.KeepAlive(loose)
	runtime.KeepAlive(compact)
}
