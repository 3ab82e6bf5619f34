package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/e2e/cluster"
)

// Issue 19 item 6: two shards, the cluster's manager (no --shard) and one
// started with --shard=b, split the ImagePins by their shard label: each
// is reconciled by exactly one (only its manager exports its series, and
// only its manager asks the registry for its tag: the registry's access
// log names each request's User-Agent), and the webhook of the default
// shard pins for shard b's ImagePin too. Relabelling moves an ImagePin
// to the other shard, which takes over from its status.
func TestShardsSplitTheImagePins(t *testing.T) {
	ns := "shards"
	useNamespace(t, ns, true)
	ctx := context.Background()
	m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: "imagepin-shard-b", Args: []string{"--shard=b", "--leader-elect"}, NoWebhook: true})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)

	imageA, imageB := local.Registry.Host+"/shards/a:v1", local.Registry.Host+"/shards/b:v1"
	digestA, digestB := push(t, "shards/a:v1", "shard a"), push(t, "shards/b:v1", "shard b")
	// Applied before the ImagePins: the controllers pin them, not the
	// webhook.
	apply(t, ns, shardDeploymentYAML("a", "a", imageA)+"---\n"+shardDeploymentYAML("b", "b", imageB))
	apply(t, ns, shardPinYAML("a", "")+"---\n"+shardPinYAML("b", "b"))
	t.Cleanup(func() {
		if t.Failed() {
			for _, n := range []string{"a", "b"} {
				p := &imagesv1alpha1.ImagePin{}
				_ = local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: n}, p)
				t.Logf("ImagePin %s: labels %v, status %+v", n, p.Labels, p.Status)
			}
		}
	})
	waitImage(t, ns, "a", imageA+"@"+string(digestA))
	waitImage(t, ns, "b", imageB+"@"+string(digestB))

	owner := func(pin string) (def, shardB bool) {
		series := fmt.Sprintf(`imagepin_drifted_containers{imagepin=%q,namespace=%q`, pin, ns)
		return metric(t, local.Manager, series) != "", metric(t, m, series) != ""
	}
	if def, b := owner("a"); !def || b {
		t.Errorf("ImagePin a (no shard label) reconciled by the default shard %v, by shard b %v; want the default only", def, b)
	}
	if def, b := owner("b"); def || !b {
		t.Errorf("ImagePin b (shard b) reconciled by the default shard %v, by shard b %v; want shard b only", def, b)
	}
	requests := func(repo string) (def, shardB int) {
		lines, err := local.Registry.AccessLogLines("/v2/shards/" + repo + "/manifests/v1")
		if err != nil {
			t.Fatal(err)
		}
		for _, l := range lines {
			// The User-Agent, go-containerregistry's after imagepin's.
			switch {
			case strings.Contains(l, `"imagepin shard/b `):
				shardB++
			case strings.Contains(l, `"imagepin `):
				def++
			}
		}
		return def, shardB
	}
	if def, b := requests("b"); def != 0 || b == 0 {
		t.Errorf("requests for shards/b:v1: %d by the default shard, %d by shard b; want shard b's only", def, b)
	}
	if def, b := requests("a"); def == 0 || b != 0 {
		t.Errorf("requests for shards/a:v1: %d by the default shard, %d by shard b; want the default's only", def, b)
	}

	// The webhook (the default shard's) pins for shard b's ImagePin.
	apply(t, ns, shardDeploymentYAML("b2", "b", imageB))
	if got := deployment(t, ns, "b2").Spec.Template.Spec.Containers[0].Image; got != imageB+"@"+string(digestB) {
		t.Errorf("a Deployment shard b's ImagePin selects was admitted as %s, want it pinned", got)
	}

	// Moved to the default shard by its label: the default shard takes
	// it over (a new push is followed by it), shard b lets it go.
	apply(t, ns, shardPinYAML("b", ""))
	digestB2 := push(t, "shards/b:v1", "shard b, build 2")
	poll(t, "ImagePin b to see build 2", 45*time.Second, func() error {
		p := &imagesv1alpha1.ImagePin{}
		if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "b"}, p); err != nil {
			return err
		}
		return digestOf(p, imageB, digestB2, "")
	})
	poll(t, "shard b to let ImagePin b go", 15*time.Second, func() error {
		if def, b := owner("b"); !def || b {
			return fmt.Errorf("after the move, ImagePin b reconciled by the default shard %v, by shard b %v; want the default only", def, b)
		}
		return nil
	})
}

func shardPinYAML(name, shard string) string {
	labels := "{}"
	if shard != "" {
		labels = fmt.Sprintf("{%s: %s}", imagesv1alpha1.ShardLabel, shard)
	}
	return fmt.Sprintf(`apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata: {name: %s, labels: %s}
spec:
  selector: {matchLabels: {shards-test: %s}}
  mode: Pin
  interval: 10m
`, name, labels, name)
}

// shardDeploymentYAML is deploymentYAML's Deployment labelled for the
// ImagePin of shardPinYAML(pin).
func shardDeploymentYAML(name, pin, image string) string {
	return strings.Replace(deploymentYAML(name, image, 1), "labels: {app: web}", "labels: {app: web, shards-test: "+pin+"}", 1)
}
