package workload

import (
	"context"
	"fmt"
	"sort"

	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Workload is one workload of any selected kind.
type Workload struct {
	Kind   imagesv1alpha1.WorkloadKind
	Object client.Object
	// Template is the pod spec the workload creates pods from.
	Template *corev1.PodSpec
}

// Name returns the workload's name.
func (w Workload) Name() string { return w.Object.GetName() }

// NewObject returns an empty object of a workload kind, for watches and gets.
func NewObject(kind imagesv1alpha1.WorkloadKind) (client.Object, error) {
	switch kind {
	case imagesv1alpha1.KindDeployment:
		return &appsv1.Deployment{}, nil
	case imagesv1alpha1.KindStatefulSet:
		return &appsv1.StatefulSet{}, nil
	case imagesv1alpha1.KindDaemonSet:
		return &appsv1.DaemonSet{}, nil
	case imagesv1alpha1.KindJob:
		return &batchv1.Job{}, nil
	case imagesv1alpha1.KindCronJob:
		return &batchv1.CronJob{}, nil
	}
	return nil, fmt.Errorf("unsupported workload kind %q", kind)
}

// List returns the workloads of the given kinds in namespace whose labels
// match sel, sorted by kind (in the order given) and name.
func List(ctx context.Context, c client.Reader, namespace string, kinds []imagesv1alpha1.WorkloadKind, sel labels.Selector) ([]Workload, error) {
	var out []Workload
	opts := []client.ListOption{client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: sel}}
	for _, kind := range kinds {
		ws, err := listKind(ctx, c, kind, opts)
		if err != nil {
			return nil, fmt.Errorf("list %ss in %s: %w", kind, namespace, err)
		}
		sort.Slice(ws, func(i, j int) bool { return ws[i].Name() < ws[j].Name() })
		out = append(out, ws...)
	}
	return out, nil
}

func listKind(ctx context.Context, c client.Reader, kind imagesv1alpha1.WorkloadKind, opts []client.ListOption) ([]Workload, error) {
	var out []Workload
	switch kind {
	case imagesv1alpha1.KindDeployment:
		var l appsv1.DeploymentList
		if err := c.List(ctx, &l, opts...); err != nil {
			return nil, err
		}
		for i := range l.Items {
			o := &l.Items[i]
			out = append(out, Workload{Kind: kind, Object: o, Template: &o.Spec.Template.Spec})
		}
	case imagesv1alpha1.KindStatefulSet:
		var l appsv1.StatefulSetList
		if err := c.List(ctx, &l, opts...); err != nil {
			return nil, err
		}
		for i := range l.Items {
			o := &l.Items[i]
			out = append(out, Workload{Kind: kind, Object: o, Template: &o.Spec.Template.Spec})
		}
	case imagesv1alpha1.KindDaemonSet:
		var l appsv1.DaemonSetList
		if err := c.List(ctx, &l, opts...); err != nil {
			return nil, err
		}
		for i := range l.Items {
			o := &l.Items[i]
			out = append(out, Workload{Kind: kind, Object: o, Template: &o.Spec.Template.Spec})
		}
	case imagesv1alpha1.KindJob:
		var l batchv1.JobList
		if err := c.List(ctx, &l, opts...); err != nil {
			return nil, err
		}
		for i := range l.Items {
			o := &l.Items[i]
			// A CronJob's Jobs are part of the CronJob, not workloads of
			// their own: counting them would report one workload many times.
			if ownedByCronJob(o) {
				continue
			}
			out = append(out, Workload{Kind: kind, Object: o, Template: &o.Spec.Template.Spec})
		}
	case imagesv1alpha1.KindCronJob:
		var l batchv1.CronJobList
		if err := c.List(ctx, &l, opts...); err != nil {
			return nil, err
		}
		for i := range l.Items {
			o := &l.Items[i]
			out = append(out, Workload{Kind: kind, Object: o, Template: &o.Spec.JobTemplate.Spec.Template.Spec})
		}
	default:
		return nil, fmt.Errorf("unsupported workload kind %q", kind)
	}
	return out, nil
}

func ownedByCronJob(job *batchv1.Job) bool {
	owner := metav1.GetControllerOf(job)
	return owner != nil && owner.Kind == "CronJob" && owner.APIVersion == batchv1.SchemeGroupVersion.String()
}

// PodSpecPath is where a kind keeps the pod spec its pods are made from,
// as the field names from the object's root.
func PodSpecPath(kind imagesv1alpha1.WorkloadKind) ([]string, error) {
	switch kind {
	case imagesv1alpha1.KindDeployment, imagesv1alpha1.KindStatefulSet, imagesv1alpha1.KindDaemonSet, imagesv1alpha1.KindJob:
		return []string{"spec", "template", "spec"}, nil
	case imagesv1alpha1.KindCronJob:
		return []string{"spec", "jobTemplate", "spec", "template", "spec"}, nil
	}
	return nil, fmt.Errorf("unsupported workload kind %q", kind)
}
