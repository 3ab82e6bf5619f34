package driftcmd

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/envtest"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// The tests run `imagepin drift` against envtest's real API server, with
// both CRDs of config/crd/bases installed, ImagePins in namespaces shop
// and batch and a ClusterImagePin over shop and ops, whose status they
// write as the operator would. Namespace quiet has nothing.

func TestMain(m *testing.M) {
	flag.Parse()
	code := m.Run()
	if cluster.env != nil {
		if err := cluster.env.Stop(); err != nil {
			fmt.Fprintln(os.Stderr, "stop the control plane:", err)
		}
	}
	if cluster.dir != "" {
		_ = os.RemoveAll(cluster.dir)
	}
	os.Exit(code)
}

var cluster struct {
	once       sync.Once
	err        error
	env        *testenv.Env
	c          client.Client
	dir        string
	kubeconfig string // a cluster admin's
}

// needCluster starts the control plane and writes the fixtures, once per
// test binary, and returns the path of an admin kubeconfig.
func needCluster(t testing.TB) string {
	t.Helper()
	cluster.once.Do(func() { cluster.err = startCluster() })
	if cluster.err != nil {
		t.Fatalf("start the control plane: %v", cluster.err)
	}
	return cluster.kubeconfig
}

func startCluster() error {
	ctrl.SetLogger(logr.Discard())
	env, err := testenv.Start()
	if err != nil {
		return err
	}
	cluster.env = env
	if cluster.dir, err = os.MkdirTemp("", "driftcmd-"); err != nil {
		return err
	}
	if cluster.kubeconfig, err = env.Kubeconfig(cluster.dir); err != nil {
		return err
	}
	if cluster.c, err = client.New(env.Config, client.Options{Scheme: env.Scheme}); err != nil {
		return err
	}
	return writeFixtures(context.Background(), cluster.c)
}

// dg is a digest of the two hex characters hh repeated: its short form is
// sha256: and hh six times.
func dg(hh string) imagesv1alpha1.Digest {
	return imagesv1alpha1.Digest("sha256:" + strings.Repeat(hh, 32))
}

const reg = "registry.example.com/"

var (
	webOld, webNew = dg("a1"), dg("b2")
	cache          = dg("c3")
	worker, stale  = dg("d4"), dg("e5")
	models         = dg("f6")
	proxy          = dg("07")
	trainOld       = dg("18")
	trainNew       = dg("29")
)

func runs(d imagesv1alpha1.Digest, pods int32, nodes ...string) imagesv1alpha1.RunningDigest {
	return imagesv1alpha1.RunningDigest{Digest: d, Pods: pods, Nodes: nodes}
}

func drift(rs ...imagesv1alpha1.DriftReason) []imagesv1alpha1.DriftReason { return rs }

func writeFixtures(ctx context.Context, c client.Client) error {
	for _, ns := range []string{"shop", "batch", "ops", "quiet"} {
		if err := c.Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return err
		}
	}
	shop := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "pins"}}
	shop.Status = imagesv1alpha1.ImagePinStatus{
		Summary: imagesv1alpha1.Summary{Workloads: 2, Images: 3, Pinned: 2, Drifted: 2},
		Images: []imagesv1alpha1.ImageStatus{{
			Image:  reg + "shop/web:v2",
			Digest: webNew,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Kind: imagesv1alpha1.KindDeployment, Name: "web", Container: "app", PinnedDigest: webOld,
				Running: []imagesv1alpha1.RunningDigest{runs(webOld, 3, "node-a", "node-b")},
				Drift:   drift(imagesv1alpha1.DriftTagMoved),
			}},
		}, {
			Image:  reg + "shop/cache:7",
			Digest: cache,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Kind: imagesv1alpha1.KindStatefulSet, Name: "cache", Container: "redis", PinnedDigest: cache,
				Running: []imagesv1alpha1.RunningDigest{runs(cache, 2, "node-c")},
			}},
		}, {
			Image: reg + "shop/migrate:1",
			Error: "GET https://registry.example.com/v2/shop/migrate/manifests/1: MANIFEST_UNKNOWN",
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Kind: imagesv1alpha1.KindDeployment, Name: "web", Container: "migrate", Init: true,
				Drift: drift(imagesv1alpha1.DriftUnpinned, imagesv1alpha1.DriftUnresolvable),
			}},
		}},
	}
	batch := &imagesv1alpha1.ImagePin{ObjectMeta: metav1.ObjectMeta{Namespace: "batch", Name: "pins"}}
	batch.Status = imagesv1alpha1.ImagePinStatus{
		Summary: imagesv1alpha1.Summary{Workloads: 3, Images: 4, Pinned: 4, Drifted: 1, Omitted: 2},
		Images: []imagesv1alpha1.ImageStatus{{
			Image:  reg + "batch/worker:latest",
			Digest: worker,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Kind: imagesv1alpha1.KindDeployment, Name: "worker", Container: "worker", PinnedDigest: worker,
				Running: []imagesv1alpha1.RunningDigest{runs(worker, 2, "node-a"), runs(stale, 1, "node-b")},
				Drift:   drift(imagesv1alpha1.DriftMixedReplicas),
			}},
		}, {
			Image:  reg + "batch/models:v1",
			Digest: models,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Kind: imagesv1alpha1.KindDeployment, Name: "worker", Container: "models", Volume: true, PinnedDigest: models,
				Running: []imagesv1alpha1.RunningDigest{runs(models, 3, "node-a", "node-b")},
			}},
		}},
	}
	everywhere := &imagesv1alpha1.ClusterImagePin{ObjectMeta: metav1.ObjectMeta{Name: "everywhere"}}
	everywhere.Status = imagesv1alpha1.ClusterImagePinStatus{
		Summary: imagesv1alpha1.ClusterSummary{Namespaces: 2, Summary: imagesv1alpha1.Summary{Workloads: 5, Images: 3, Drifted: 4, Omitted: 3}},
		Namespaces: []imagesv1alpha1.NamespaceSummary{
			{Name: "ops", Summary: imagesv1alpha1.Summary{Workloads: 4, Images: 2, Drifted: 2, Omitted: 3}},
			{Name: "shop", Summary: imagesv1alpha1.Summary{Workloads: 1, Images: 2, Drifted: 2}, YieldedTo: []string{"pins"}},
		},
		Images: []imagesv1alpha1.ImageStatus{{
			// The ImagePin shop/pins reports this container too: its row
			// is the one shown (this one says RolloutPending; it does not).
			Image:  reg + "shop/web:v2",
			Digest: webNew,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Namespace: "shop", Kind: imagesv1alpha1.KindDeployment, Name: "web", Container: "app", PinnedDigest: webOld,
				Running: []imagesv1alpha1.RunningDigest{runs(webOld, 3, "node-a", "node-b")},
				Drift:   drift(imagesv1alpha1.DriftTagMoved, imagesv1alpha1.DriftRolloutPending),
			}},
		}, {
			Image:  reg + "mesh/proxy:1.2",
			Digest: proxy,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Namespace: "shop", Kind: imagesv1alpha1.KindDeployment, Name: "web", Container: "proxy",
				Running: []imagesv1alpha1.RunningDigest{runs(proxy, 3, "node-a", "node-b")},
				Drift:   drift(imagesv1alpha1.DriftUnpinned),
			}, {
				Namespace: "ops", Kind: imagesv1alpha1.KindDaemonSet, Name: "agent", Container: "proxy",
				Running: []imagesv1alpha1.RunningDigest{runs(proxy, 5, "node-a", "node-b", "node-c", "node-d", "node-e")},
				Drift:   drift(imagesv1alpha1.DriftUnpinned),
			}},
		}, {
			Image:  reg + "ml/trainer:v3",
			Digest: trainNew,
			Workloads: []imagesv1alpha1.WorkloadImage{{
				Namespace: "ops", Kind: "TrainJob", Name: "train", Template: "Worker", Container: "trainer", PinnedDigest: trainOld,
				Running: []imagesv1alpha1.RunningDigest{runs(trainOld, 4, "gpu-1", "gpu-2")},
				Drift:   drift(imagesv1alpha1.DriftTagMoved),
			}},
		}},
	}
	for _, obj := range []client.Object{shop, batch, everywhere} {
		status := obj.DeepCopyObject().(client.Object)
		if err := c.Create(ctx, obj); err != nil {
			return fmt.Errorf("create %s: %w", obj.GetName(), err)
		}
		status.SetResourceVersion(obj.GetResourceVersion())
		if err := c.Status().Update(ctx, status); err != nil {
			return fmt.Errorf("write the status of %s: %w", obj.GetName(), err)
		}
	}
	return nil
}

// run runs `imagepin drift` with args and returns its exit code, stdout
// and stderr.
func run(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	var out, errs bytes.Buffer
	code := Run(context.Background(), args, &out, &errs)
	return code, out.String(), errs.String()
}

// shopViewer is a user who may read the ImagePins of namespace shop and
// nothing else; it returns the path of its kubeconfig.
func shopViewer(t *testing.T) string {
	t.Helper()
	needCluster(t)
	ctx := context.Background()
	role := &rbacv1.Role{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "imagepin-viewer"},
		Rules: []rbacv1.PolicyRule{{
			APIGroups: []string{imagesv1alpha1.GroupVersion.Group},
			Resources: []string{"imagepins"},
			Verbs:     []string{"get", "list"},
		}},
	}
	binding := &rbacv1.RoleBinding{
		ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "imagepin-viewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: rbacv1.GroupName, Kind: "Role", Name: role.Name},
		Subjects:   []rbacv1.Subject{{APIGroup: rbacv1.GroupName, Kind: rbacv1.UserKind, Name: "shop-viewer"}},
	}
	for _, obj := range []client.Object{role, binding} {
		if err := cluster.c.Create(ctx, obj); err != nil && !strings.Contains(err.Error(), "already exists") {
			t.Fatal(err)
		}
	}
	user, err := cluster.env.Env.AddUser(envtest.User{Name: "shop-viewer"}, nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := user.KubeConfig()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := os.WriteFile(path, raw, 0o600); err != nil {
		t.Fatal(err)
	}
	return path
}
