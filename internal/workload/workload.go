package workload

import (
	"context"
	"fmt"
	"slices"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/log"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/drift"
)

// Workload is one workload of any selected kind.
type Workload struct {
	Kind   imagesv1alpha1.WorkloadKind
	Object client.Object
	// Templates are the pod specs the workload creates pods from: one for
	// a built-in kind, one per replica spec for a configured kind with
	// several (a PyTorchJob's Master and Worker).
	Templates []Template
	// Runner, when set, is the object whose pods run Templates instead of
	// Object's own: the Rollout that references a Deployment through
	// spec.workloadRef (the Deployment holds the template, the Rollout's
	// ReplicaSets run it).
	Runner     client.Object
	RunnerKind *Kind
}

// Name returns the workload's name.
func (w Workload) Name() string { return w.Object.GetName() }

// TemplateOf returns the index in w.Templates of the template pod p was
// created from. With several, a pod carries no field that says which
// (each operator labels its own way): the kind's TemplateLabel says when
// it is configured; else it is told by its containers as its status
// reports them (the cache keeps no more of a pod): the template with the
// most container names in common, and then images (tag, digest aside); the
// first of equals.
func (w Workload) TemplateOf(p *corev1.Pod) int { return w.TemplateOfShare(ShareOf(p)) }

// TemplateOfShare is TemplateOf for the pods that share p.
func (w Workload) TemplateOfShare(p *PodShare) int {
	if len(w.Templates) < 2 {
		return 0
	}
	if k := KindNamed(w.Kind); k != nil && k.TemplateLabel != "" {
		if v := p.Labels[k.TemplateLabel]; v != "" {
			for i, t := range w.Templates {
				last := t.Key[strings.LastIndex(t.Key, "/")+1:]
				if strings.EqualFold(last, v) {
					return i
				}
			}
		}
	}
	statuses := append(slices.Clone(p.Status.InitContainerStatuses), p.Status.ContainerStatuses...)
	best, bestScore := 0, -1
	for i, t := range w.Templates {
		score := 0
		for _, c := range append(slices.Clone(t.Spec.InitContainers), t.Spec.Containers...) {
			for _, pc := range statuses {
				if pc.Name != c.Name {
					continue
				}
				score += 2
				if drift.StripDigest(pc.Image) == drift.StripDigest(c.Image) {
					score++
				}
			}
		}
		if score > bestScore {
			best, bestScore = i, score
		}
	}
	return best
}

// NewObject returns an empty object of a workload kind, for watches and gets.
func NewObject(kind imagesv1alpha1.WorkloadKind) (client.Object, error) {
	k := KindNamed(kind)
	if k == nil {
		return nil, fmt.Errorf("unsupported workload kind %q", kind)
	}
	return k.New(), nil
}

// List returns the workloads of the given kinds in namespace whose labels
// match sel, sorted by kind (in the order given) and name. A workload
// controlled by another (a CronJob's Jobs) is part of that one, not a
// workload of its own: counting it would report one workload many times.
func List(ctx context.Context, c client.Reader, namespace string, kinds []imagesv1alpha1.WorkloadKind, sel labels.Selector) ([]Workload, error) {
	var out, referenced []Workload
	opts := []client.ListOption{client.InNamespace(namespace), client.MatchingLabelsSelector{Selector: sel}}
	for _, name := range kinds {
		k := KindNamed(name)
		if k == nil || !k.Workload {
			return nil, fmt.Errorf("unsupported workload kind %q", name)
		}
		list := k.NewList()
		if err := listKind(ctx, c, k, list, opts); err != nil {
			if k.Optional {
				// A custom kind whose informer cannot sync (its CRD broken,
				// its RBAC not granted) must not hold up the others.
				log.FromContext(ctx).Info("workload kind cannot be listed: left out of this check", "kind", name, "reason", err.Error())
				continue
			}
			return nil, fmt.Errorf("list %ss in %s: %w", name, namespace, err)
		}
		var ws []Workload
		err := meta.EachListItem(list, func(item runtime.Object) error {
			obj, ok := item.(client.Object)
			if !ok || partOfAnotherWorkload(obj) {
				return nil
			}
			templates := k.Templates(obj)
			if len(templates) == 0 {
				// No pod spec of its own: the one of the workload it
				// references (a Rollout's workloadRef), if any.
				w, err := referencedWorkload(ctx, c, k, obj)
				if err != nil {
					return err
				}
				if w != nil {
					referenced = append(referenced, *w)
				}
				return nil
			}
			ws = append(ws, Workload{Kind: name, Object: obj, Templates: templates})
			return nil
		})
		if err != nil {
			return nil, err
		}
		sort.Slice(ws, func(i, j int) bool { return ws[i].Name() < ws[j].Name() })
		out = append(out, ws...)
	}
	// A referenced workload is listed once: selected itself too, its pods
	// are still its runner's.
	sort.Slice(referenced, func(i, j int) bool { return referenced[i].Runner.GetName() < referenced[j].Runner.GetName() })
	for _, r := range referenced {
		// (Two Rollouts referencing one Deployment: the first by name.)
		i := slices.IndexFunc(out, func(w Workload) bool { return w.Object.GetUID() == r.Object.GetUID() })
		if i >= 0 && out[i].Runner != nil {
			continue
		}
		if i >= 0 {
			out[i].Runner, out[i].RunnerKind = r.Runner, r.RunnerKind
			continue
		}
		out = append(out, r)
	}
	return out, nil
}

// referencedWorkload returns the workload obj (of kind k) takes its pod
// template from through k.TemplateRef (a Rollout's spec.workloadRef), with
// obj as its runner; nil when it references none, or one imagepin does not
// know or cannot find.
func referencedWorkload(ctx context.Context, c client.Reader, k *Kind, obj client.Object) (*Workload, error) {
	u, ok := obj.(*unstructured.Unstructured)
	if !ok || len(k.TemplateRef) == 0 {
		return nil, nil
	}
	ref, found, err := unstructured.NestedStringMap(u.Object, k.TemplateRef...)
	if err != nil {
		// Not a reference its CRD's schema would store: one odd object
		// must not stop the ImagePin's other workloads.
		return nil, nil //nolint:nilerr // skipped, as a workload without a template is
	}
	if !found || ref["name"] == "" {
		return nil, nil
	}
	apiVersion := ref["apiVersion"]
	if apiVersion == "" {
		apiVersion = "apps/v1"
	}
	rk := kindOfRef(apiVersion, ref["kind"])
	if rk == nil || !rk.Workload || rk.Type == nil {
		return nil, nil
	}
	target := rk.New()
	if err := c.Get(ctx, client.ObjectKey{Namespace: obj.GetNamespace(), Name: ref["name"]}, target); err != nil {
		if apierrors.IsNotFound(err) {
			return nil, nil
		}
		return nil, fmt.Errorf("read %s %s/%s, which %s %s references: %w", rk.Name, obj.GetNamespace(), ref["name"], k.Name, obj.GetName(), err)
	}
	templates := rk.Templates(target)
	if len(templates) == 0 {
		return nil, nil
	}
	return &Workload{Kind: rk.Name, Object: target, Templates: templates, Runner: obj, RunnerKind: k}, nil
}

// Through the cache, a read of an optional kind waits for its informer to
// sync, which may never happen (its RBAC not granted yet): a list is
// bounded by optionalListTimeout, and a get, which the walk from a pod to
// its workload makes on every pod event, by optionalGetTimeout.
const (
	optionalListTimeout = 10 * time.Second
	optionalGetTimeout  = 2 * time.Second
)

// bounded returns ctx, with a deadline d away for an optional kind.
func bounded(ctx context.Context, k *Kind, d time.Duration) (context.Context, context.CancelFunc) {
	if k.Optional {
		return context.WithTimeout(ctx, d)
	}
	return ctx, func() {}
}

// getKind gets an object of kind k, bounded for an optional kind.
func getKind(ctx context.Context, c client.Reader, k *Kind, key client.ObjectKey, obj client.Object) error {
	ctx, cancel := bounded(ctx, k, optionalGetTimeout)
	defer cancel()
	return c.Get(ctx, key, obj)
}

// listKind lists objects of kind k, bounded for an optional kind.
func listKind(ctx context.Context, c client.Reader, k *Kind, list client.ObjectList, opts []client.ListOption) error {
	ctx, cancel := bounded(ctx, k, optionalListTimeout)
	defer cancel()
	return c.List(ctx, list, opts...)
}

// partOfAnotherWorkload reports whether obj's controller is a workload
// kind (a CronJob's Job), or a custom kind between a configured workload
// and its pods (a Knative Revision's Deployment).
func partOfAnotherWorkload(obj client.Object) bool {
	ref := metav1.GetControllerOf(obj)
	if ref == nil {
		return false
	}
	k := kindOfRef(ref.APIVersion, ref.Kind)
	return k != nil && (k.Workload || (k.Configured && k.Type == nil))
}
