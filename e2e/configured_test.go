package e2e

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	"github.com/imagepin/imagepin/e2e/cluster"
	"github.com/imagepin/imagepin/internal/testenv"
)

// Issue 14 item 3, through the binary: the manager started with
// --workload-kind for a CRD it is not granted yet says so once and keeps
// the other kinds going; once the admin applies the RBAC the README shows,
// the kind is picked up without a restart and its nested replica specs
// are pinned.
func TestConfiguredKindThroughTheBinary(t *testing.T) {
	ctx := context.Background()
	ns := "configured"
	useNamespace(t, ns, true)
	kubectlAt(t, local.Kubeconfig, nil, "apply", "-f", filepath.Join(testenv.RepoRoot(), "internal", "testenv", "crds"))
	replaceManager(t)
	m, err := local.StartManager(ctx, cluster.ManagerOptions{Name: "imagepin-configured", Args: []string{"--workload-kind=" + testenv.TrainJobKind}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(m.Stop)

	image := local.Registry.Host + "/configured/train:v1"
	digest := push(t, "configured/train:v1", "configured build")
	pinned := image + "@" + string(digest)
	apply(t, ns, fmt.Sprintf(`apiVersion: training.example.com/v1
kind: TrainJob
metadata: {name: bert, labels: {app: web}}
spec:
  replicaSpecs:
    Master:
      template: {spec: {containers: [{name: trainer, image: %[1]s}]}}
    Worker:
      replicas: 2
      template: {spec: {containers: [{name: trainer, image: %[1]s}]}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: app, labels: {app: web}}
spec:
  selector: {matchLabels: {run: app}}
  template:
    metadata: {labels: {run: app}}
    spec:
      containers:
      - {name: app, image: %[1]s}
`, image))
	apply(t, ns, imagePinYAML("Pin", "{}"))
	poll(t, "the Deployment pinned while the TrainJob is not granted", 60*time.Second, func() error {
		var d appsv1.Deployment
		if err := local.Client.Get(ctx, client.ObjectKey{Namespace: ns, Name: "app"}, &d); err != nil {
			return err
		}
		if got := d.Spec.Template.Spec.Containers[0].Image; got != pinned {
			return fmt.Errorf("Deployment names %s", got)
		}
		return nil
	})
	log, err := os.ReadFile(m.LogFile)
	if err != nil {
		t.Fatal(err)
	}
	if n := strings.Count(string(log), "configured kind cannot be listed"); n != 1 {
		t.Fatalf("the manager said %d times that it cannot list TrainJobs, want once:\n%s", n, log)
	}
	if img := trainJobImages(t, ns, "bert"); img["Master"] != image {
		t.Fatalf("TrainJob written without its RBAC: %v", img)
	}

	// The admin's RBAC, as the README shows it.
	apply(t, ns, fmt.Sprintf(`apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: imagepin-trainjobs}
rules:
- apiGroups: [training.example.com]
  resources: [trainjobs]
  verbs: [get, list, watch, patch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: imagepin-trainjobs}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: imagepin-trainjobs}
subjects:
- {kind: ServiceAccount, name: %s, namespace: %s}
`, cluster.ManagerServiceAccount, cluster.ManagerNamespace))
	t.Cleanup(func() {
		kubectlAt(t, local.Kubeconfig, nil, "delete", "clusterrole,clusterrolebinding", "imagepin-trainjobs", "--ignore-not-found")
	})
	poll(t, "the TrainJob pinned, every replica spec, without a restart", 90*time.Second, func() error {
		img := trainJobImages(t, ns, "bert")
		if img["Master"] != pinned || img["Worker"] != pinned {
			return fmt.Errorf("TrainJob names %v", img)
		}
		return nil
	})
	if !m.Running() {
		t.Fatal("the manager stopped")
	}
}

// trainJobImages reads the first container's image of each replica spec.
func trainJobImages(t *testing.T, ns, name string) map[string]string {
	t.Helper()
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("training.example.com/v1")
	u.SetKind("TrainJob")
	if err := local.Client.Get(context.Background(), client.ObjectKey{Namespace: ns, Name: name}, u); err != nil {
		t.Fatal(err)
	}
	out := map[string]string{}
	specs, _, _ := unstructured.NestedMap(u.Object, "spec", "replicaSpecs")
	for replica := range specs {
		cs, _, _ := unstructured.NestedSlice(u.Object, "spec", "replicaSpecs", replica, "template", "spec", "containers")
		if len(cs) > 0 {
			out[replica], _ = cs[0].(map[string]any)["image"].(string)
		}
	}
	return out
}
