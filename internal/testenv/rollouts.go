package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// ArgoRolloutsVersion is the Argo Rollouts `make` builds into
// bin/argo-rollouts-<version>; keep it in step with the Makefile's
// ARGO_ROLLOUTS_VERSION and hack/tools/argo-rollouts/go.mod.
const ArgoRolloutsVersion = "v1.10.0"

// ArgoRolloutsDir is where `make` puts Argo Rollouts' controller and CRDs.
func ArgoRolloutsDir() string {
	return filepath.Join(RepoRoot(), "bin", "argo-rollouts-"+ArgoRolloutsVersion)
}

// installCRDs serialises CRD installs of one process.
var installCRDs sync.Mutex

// InstallArgoRolloutsCRDs installs Argo Rollouts' CRDs (Rollout,
// AnalysisRun, …) of the pinned version. A missing file is an error, never a
// skip: run `make test`, which builds them.
func (e *Env) InstallArgoRolloutsCRDs() error {
	// Parallel tests install them at once: envtest reads, then creates, so
	// two calls at a time would both create.
	installCRDs.Lock()
	defer installCRDs.Unlock()
	_, err := envtest.InstallCRDs(e.Config, envtest.CRDInstallOptions{
		Paths:              []string{filepath.Join(ArgoRolloutsDir(), "crds")},
		ErrorIfPathMissing: true,
	})
	if err != nil {
		return fmt.Errorf("install Argo Rollouts' CRDs from %s (run `make test`, which copies them there): %w", ArgoRolloutsDir(), err)
	}
	return nil
}

// StartArgoRollouts runs Argo Rollouts' controller against the control
// plane, logging into dir; its CRDs must be installed. It stops with the
// returned function.
func (e *Env) StartArgoRollouts(dir string) (stop func(), err error) {
	bin := filepath.Join(ArgoRolloutsDir(), "rollouts-controller")
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("rollouts-controller not found in %s (run `make test`, which builds it): %w", ArgoRolloutsDir(), err)
	}
	kubeconfig, err := e.Kubeconfig(dir)
	if err != nil {
		return nil, err
	}
	metrics, err := FreePort()
	if err != nil {
		return nil, err
	}
	healthz, err := FreePort()
	if err != nil {
		return nil, err
	}
	return startLogged(bin, filepath.Join(dir, "rollouts-controller.log"),
		"--kubeconfig="+kubeconfig,
		"--leader-elect=false",
		"--metricsPort="+strconv.Itoa(metrics),
		"--healthzPort="+strconv.Itoa(healthz),
		"--loglevel=info",
	)
}

// Rollout is an Argo Rollout name in ns, labelled app=name, of replicas,
// whose pods (labelled app=name) run one container "app" of image, with a
// canary strategy of no steps: each new template is promoted at once.
func Rollout(ns, name, image string, replicas int64) *unstructured.Unstructured {
	ro := rollout(ns, name, name, replicas)
	ro.Object["spec"].(map[string]any)["template"] = map[string]any{
		"metadata": map[string]any{"labels": map[string]any{"app": name}},
		"spec":     map[string]any{"containers": []any{map[string]any{"name": "app", "image": image}}},
	}
	return ro
}

// RolloutOf is a Rollout that takes its template from Deployment
// deployment (spec.workloadRef), whose pods are labelled app=deployment.
func RolloutOf(ns, name, deployment string, replicas int64) *unstructured.Unstructured {
	ro := rollout(ns, name, deployment, replicas)
	ro.Object["spec"].(map[string]any)["workloadRef"] = map[string]any{"apiVersion": "apps/v1", "kind": "Deployment", "name": deployment}
	return ro
}

func rollout(ns, name, podApp string, replicas int64) *unstructured.Unstructured {
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "argoproj.io/v1alpha1", "kind": "Rollout",
		"metadata": map[string]any{"name": name, "namespace": ns, "labels": map[string]any{"app": name}},
		"spec": map[string]any{
			"replicas": replicas,
			"selector": map[string]any{"matchLabels": map[string]any{"app": podApp}},
			"strategy": map[string]any{"canary": map[string]any{}},
		},
	}}
}
