package testenv

import (
	"fmt"
	"path/filepath"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/envtest"
)

// Two test pod-template CRDs handled by configuration (--workload-kind):
// TrainJob, a map of replica specs as Kubeflow's PyTorchJob has, whose
// pods are its own; and BatchSet, a list of replicated Jobs as JobSet has,
// whose pods are its Jobs'.
var (
	TrainJobKind = "training.example.com/v1/TrainJob,spec=spec.replicaSpecs.*.template.spec"
	BatchSetKind = "batch.example.com/v1/BatchSet,spec=spec.replicatedJobs.*.template.spec.template.spec,via=batch/v1/Job,immutable"
	// ConfiguredKinds are both, as --workload-kind values.
	ConfiguredKinds = []string{TrainJobKind, BatchSetKind}
)

// InstallConfiguredKindCRDs installs the TrainJob and BatchSet CRDs.
func (e *Env) InstallConfiguredKindCRDs() error {
	installCRDs.Lock()
	defer installCRDs.Unlock()
	_, err := envtest.InstallCRDs(e.Config, envtest.CRDInstallOptions{
		Paths:              []string{filepath.Join(RepoRoot(), "internal", "testenv", "crds")},
		ErrorIfPathMissing: true,
	})
	if err != nil {
		return fmt.Errorf("install the test CRDs: %w", err)
	}
	return nil
}

// Replica is one replica spec of a TrainJob or BatchSet: its name and its
// pod spec's containers, name → image, in order.
type Replica struct {
	Name       string
	Containers [][2]string
}

func podSpecOf(r Replica) map[string]any {
	cs := make([]any, len(r.Containers))
	for i, c := range r.Containers {
		cs[i] = map[string]any{"name": c[0], "image": c[1]}
	}
	return map[string]any{"containers": cs}
}

// TrainJob is a TrainJob with the given replica specs.
func TrainJob(ns, name string, replicas ...Replica) *unstructured.Unstructured {
	specs := map[string]any{}
	for _, r := range replicas {
		specs[r.Name] = map[string]any{"replicas": int64(1), "template": map[string]any{"spec": podSpecOf(r)}}
	}
	return object("training.example.com/v1", "TrainJob", ns, name, map[string]any{"replicaSpecs": specs})
}

// BatchSet is a BatchSet with the given replicated Jobs.
func BatchSet(ns, name string, jobs ...Replica) *unstructured.Unstructured {
	list := make([]any, len(jobs))
	for i, r := range jobs {
		list[i] = map[string]any{"name": r.Name, "template": map[string]any{"spec": map[string]any{
			"template": map[string]any{"spec": podSpecOf(r)},
		}}}
	}
	return object("batch.example.com/v1", "BatchSet", ns, name, map[string]any{"replicatedJobs": list})
}

func object(apiVersion, kind, ns, name string, spec map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": spec}}
	u.SetAPIVersion(apiVersion)
	u.SetKind(kind)
	u.SetNamespace(ns)
	u.SetName(name)
	u.SetLabels(map[string]string{"app": name})
	return u
}
