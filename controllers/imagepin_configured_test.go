package controllers

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// runPodOf creates a pod owned by owner whose containers (name → image)
// run the given digests, its status written as a kubelet writes it.
func runPodOf(t *testing.T, owner client.Object, name string, containers [][3]string) {
	t.Helper()
	gvk := owner.GetObjectKind().GroupVersionKind()
	pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{
		Namespace: owner.GetNamespace(), Name: name,
		OwnerReferences: []metav1.OwnerReference{{APIVersion: gvk.GroupVersion().String(), Kind: gvk.Kind, Name: owner.GetName(), UID: owner.GetUID(), Controller: new(true)}},
	}, Spec: corev1.PodSpec{NodeName: "node-a"}}
	for _, c := range containers {
		pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: c[0], Image: c[1]})
	}
	create(t, pod)
	pod.Status.Phase = corev1.PodRunning
	for _, c := range containers {
		repo := c[1][:strings.LastIndexByte(c[1], ':')]
		pod.Status.ContainerStatuses = append(pod.Status.ContainerStatuses, corev1.ContainerStatus{
			Name: c[0], Image: c[1], ImageID: repo + "@" + c[2], Ready: true,
			State: corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: metav1.Now()}},
		})
	}
	if err := k8s.Status().Update(context.Background(), pod); err != nil {
		t.Fatal(err)
	}
}

// templateEntry finds the status entry of one container of one template.
func templateEntry(p *imagesv1alpha1.ImagePin, image, workloadName, template, container string) (*imagesv1alpha1.WorkloadImage, error) {
	for _, img := range p.Status.Images {
		if img.Image != image {
			continue
		}
		for j := range img.Workloads {
			if w := &img.Workloads[j]; w.Name == workloadName && w.Template == template && w.Container == container {
				return w, nil
			}
		}
	}
	return nil, fmt.Errorf("no %s %s/%s entry for %s in %+v", workloadName, template, container, image, p.Status.Images)
}

func runningIs(w *imagesv1alpha1.WorkloadImage, digest string, pods int32) error {
	if len(w.Running) != 1 || string(w.Running[0].Digest) != digest || w.Running[0].Pods != pods {
		return fmt.Errorf("%s/%s runs %+v, want %d pods on %s", w.Template, w.Container, w.Running, pods, digest)
	}
	return nil
}

func installConfiguredKindCRDs(t *testing.T) {
	t.Helper()
	if err := env.InstallConfiguredKindCRDs(); err != nil {
		t.Fatal(err)
	}
}

// Issue 14 item 3: a configured pod-template CRD with nested replica specs
// (a map, as a PyTorchJob's) is selected once its CRD is served, without a
// restart; Pin writes every replica spec's containers at their own paths;
// status names each template, and each template's pods are told apart, so
// the Master's old digest is not reported as the Worker's.
func TestConfiguredKindWithNestedReplicaSpecsIsPinned(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image, sidecar := reg.Image("train/model:v1"), reg.Image("train/log:v1")
	old := reg.Push(t, "train/model:v1")
	a := reg.Push(t, "train/model:v1")
	l := reg.Push(t, "train/log:v1")
	installConfiguredKindCRDs(t)
	tj := testenv.TrainJob(ns, "bert",
		testenv.Replica{Name: "Master", Containers: [][2]string{{"trainer", image}}},
		testenv.Replica{Name: "Worker", Containers: [][2]string{{"trainer", image}, {"log", sidecar}}})
	eventually(t, func() error { return k8s.Create(context.Background(), tj) })
	runPodOf(t, tj, "bert-master-0", [][3]string{{"trainer", image, old}})
	runPodOf(t, tj, "bert-worker-0", [][3]string{{"trainer", image, a}, {"log", sidecar, l}})
	runPodOf(t, tj, "bert-worker-1", [][3]string{{"trainer", image, a}, {"log", sidecar, l}})

	pin := imagePin(ns, "bert", selecting("app", "bert"), func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{"TrainJob"}
		p.Spec.Mode = imagesv1alpha1.ModePin
	})
	create(t, pin)
	want := map[string]string{
		"Master/trainer": image + "@" + a,
		"Worker/trainer": image + "@" + a,
		"Worker/log":     sidecar + "@" + l,
	}
	eventually(t, func() error {
		got := &unstructured.Unstructured{}
		got.SetGroupVersionKind(tj.GroupVersionKind())
		if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(tj), got); err != nil {
			return err
		}
		for key, img := range want {
			replica, name, _ := strings.Cut(key, "/")
			cs, _, _ := unstructured.NestedSlice(got.Object, "spec", "replicaSpecs", replica, "template", "spec", "containers")
			found := false
			for _, c := range cs {
				if m := c.(map[string]any); m["name"] == name {
					found = true
					if m["image"] != img {
						return fmt.Errorf("%s image %v, want %s", key, m["image"], img)
					}
				}
			}
			if !found {
				return fmt.Errorf("%s lost", key)
			}
		}
		if r, _, _ := unstructured.NestedInt64(got.Object, "spec", "replicaSpecs", "Worker", "replicas"); r != 1 {
			return fmt.Errorf("the write changed more than images: replicas %d", r)
		}
		return nil
	})
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if got.Status.Summary.Workloads != 1 || got.Status.Summary.Pinned != 3 {
			return fmt.Errorf("summary %+v, want one TrainJob, three containers pinned", got.Status.Summary)
		}
		master, err := templateEntry(got, image, "bert", "Master", "trainer")
		if err != nil {
			return err
		}
		if master.Kind != "TrainJob" || string(master.PinnedDigest) != a {
			return fmt.Errorf("Master entry %+v", master)
		}
		if err := runningIs(master, old, 1); err != nil {
			return err
		}
		worker, err := templateEntry(got, image, "bert", "Worker", "trainer")
		if err != nil {
			return err
		}
		if err := runningIs(worker, a, 2); err != nil {
			return err
		}
		if err := driftIs(worker); err != nil {
			return err
		}
		log, err := templateEntry(got, sidecar, "bert", "Worker", "log")
		if err != nil {
			return err
		}
		return runningIs(log, l, 2)
	})
}

// Issue 14 item 3: a configured kind whose pods are its Jobs' (as a
// JobSet's), with a list of replica specs and an immutable template: its
// pods are found through the Jobs it owns, the Jobs are part of it and not
// workloads of their own, and it is reported, never written.
func TestConfiguredKindFoundThroughItsJobs(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	image := reg.Image("etl/run:v1")
	a := reg.Push(t, "etl/run:v1")
	installConfiguredKindCRDs(t)
	bs := testenv.BatchSet(ns, "etl",
		testenv.Replica{Name: "driver", Containers: [][2]string{{"drv", image}}},
		testenv.Replica{Name: "workers", Containers: [][2]string{{"wrk", image}}})
	eventually(t, func() error { return k8s.Create(context.Background(), bs) })
	for _, r := range []struct{ job, container string }{{"driver", "drv"}, {"workers", "wrk"}} {
		job := &batchv1.Job{
			ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "etl-" + r.job, Labels: map[string]string{"app": "etl"},
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "batch.example.com/v1", Kind: "BatchSet", Name: "etl", UID: bs.GetUID(), Controller: new(true)}}},
			Spec: batchv1.JobSpec{Suspend: new(true), Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{
				RestartPolicy: corev1.RestartPolicyNever, Containers: []corev1.Container{{Name: r.container, Image: image}},
			}}},
		}
		create(t, job)
		job.SetGroupVersionKind(batchv1.SchemeGroupVersion.WithKind("Job"))
		runPodOf(t, job, job.Name+"-0", [][3]string{{r.container, image, a}})
	}
	// Every kind: the Jobs are the BatchSet's, not workloads of their own.
	pin := imagePin(ns, "etl", selecting("app", "etl"), func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Mode = imagesv1alpha1.ModePin
		p.Spec.Interval = &metav1.Duration{Duration: 10 * time.Second}
	})
	create(t, pin)
	whenChecked(t, pin, func(got *imagesv1alpha1.ImagePin) error {
		if got.Status.Summary.Workloads != 1 {
			return fmt.Errorf("summary %+v, want the BatchSet alone", got.Status.Summary)
		}
		for _, r := range []struct{ template, container string }{{"driver", "drv"}, {"workers", "wrk"}} {
			w, err := templateEntry(got, image, "etl", r.template, r.container)
			if err != nil {
				return err
			}
			if w.Kind != "BatchSet" {
				return fmt.Errorf("entry %+v", w)
			}
			if err := runningIs(w, a, 1); err != nil {
				return err
			}
			if err := driftIs(w, imagesv1alpha1.DriftUnpinned); err != nil {
				return err
			}
		}
		return nil
	})
	checkedAfter(t, pin, time.Now())
	got := &unstructured.Unstructured{}
	got.SetGroupVersionKind(bs.GroupVersionKind())
	if err := k8s.Get(context.Background(), client.ObjectKeyFromObject(bs), got); err != nil {
		t.Fatal(err)
	}
	if got.GetGeneration() != 1 {
		t.Fatalf("an immutable kind was written: generation %d", got.GetGeneration())
	}
}

// Issue 14 item 3: a kind the manager is not configured with is a clear
// Ready=False naming the kinds it knows, not a silent empty selection.
func TestUnknownKindIsNotReady(t *testing.T) {
	t.Parallel()
	ns := namespace(t)
	pin := imagePin(ns, "nokind", func(p *imagesv1alpha1.ImagePin) {
		p.Spec.Kinds = []imagesv1alpha1.WorkloadKind{"PyTorchJob"}
	})
	create(t, pin)
	eventually(t, func() error {
		got, err := getPin(pin)
		if err != nil {
			return err
		}
		if err := conditionIs(got, imagesv1alpha1.ConditionReady, metav1.ConditionFalse, imagesv1alpha1.ReasonInvalidSpec); err != nil {
			return err
		}
		if msg := conditionMessage(got, imagesv1alpha1.ConditionReady); !strings.Contains(msg, `"PyTorchJob"`) || !strings.Contains(msg, "TrainJob") {
			return fmt.Errorf("Ready message %q does not name the kind and those known", msg)
		}
		return nil
	})
}

// checkedAfter waits until the ImagePin has been checked twice after
// since, so that a write that was going to happen has happened.
func checkedAfter(t *testing.T, p *imagesv1alpha1.ImagePin, since time.Time) {
	t.Helper()
	var first time.Time
	eventually(t, func() error {
		got, err := getPin(p)
		if err != nil {
			return err
		}
		if got.Status.LastCheckTime == nil || !got.Status.LastCheckTime.After(since) {
			return fmt.Errorf("waiting for a check after %s", since)
		}
		if first.IsZero() {
			first = got.Status.LastCheckTime.Time
		}
		if !got.Status.LastCheckTime.After(first) {
			return fmt.Errorf("waiting for a second check after %s", first)
		}
		return nil
	})
}

func conditionMessage(p *imagesv1alpha1.ImagePin, typ string) string {
	if c := meta.FindStatusCondition(p.Status.Conditions, typ); c != nil {
		return c.Message
	}
	return ""
}
