package selection

import (
	"context"
	"fmt"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"sigs.k8s.io/controller-runtime/pkg/client"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// ClusterPinPrefix starts the name of the ImagePin a ClusterImagePin acts
// as in one namespace. A '/' is never in an object's name, so it cannot
// be mistaken for an ImagePin of that namespace.
const ClusterPinPrefix = "ClusterImagePin/"

// NamespaceSelector compiles a ClusterImagePin's namespace selection.
func NamespaceSelector(spec *imagesv1alpha1.ClusterImagePinSpec) (labels.Selector, error) {
	if spec.NamespaceSelector == nil {
		return labels.Everything(), nil
	}
	sel, err := metav1.LabelSelectorAsSelector(spec.NamespaceSelector)
	if err != nil {
		return nil, fmt.Errorf("spec.namespaceSelector: %w", err)
	}
	return sel, nil
}

// SelectsNamespace reports whether cp selects namespace ns (its labels,
// less its exclusions).
func SelectsNamespace(cp *imagesv1alpha1.ClusterImagePin, ns *corev1.Namespace) bool {
	if slices.Contains(cp.Spec.ExcludeNamespaces, ns.Name) {
		return false
	}
	sel, err := NamespaceSelector(&cp.Spec)
	return err == nil && sel.Matches(labels.Set(ns.Labels))
}

// ClusterPinName returns the name of the ClusterImagePin pin acts for
// (AsImagePin), and whether it is one's.
func ClusterPinName(pin *imagesv1alpha1.ImagePin) (string, bool) {
	return strings.CutPrefix(pin.Name, ClusterPinPrefix)
}

// AsImagePin is the ImagePin cp acts as in namespace ns: its spec, its UID,
// generation and creation time, and a name no ImagePin can have.
func AsImagePin(cp *imagesv1alpha1.ClusterImagePin, ns string) imagesv1alpha1.ImagePin {
	return imagesv1alpha1.ImagePin{
		ObjectMeta: metav1.ObjectMeta{
			Namespace: ns, Name: ClusterPinPrefix + cp.Name,
			UID: cp.UID, Generation: cp.Generation, CreationTimestamp: cp.CreationTimestamp,
		},
		Spec: cp.Spec.ImagePinSpec,
	}
}

// ClusterPinsFor is, of cps, the ImagePins those that select ns act as
// there.
func ClusterPinsFor(cps []imagesv1alpha1.ClusterImagePin, ns *corev1.Namespace) []imagesv1alpha1.ImagePin {
	var out []imagesv1alpha1.ImagePin
	for i := range cps {
		if SelectsNamespace(&cps[i], ns) {
			out = append(out, AsImagePin(&cps[i], ns.Name))
		}
	}
	return out
}

// ClusterPinsIn reads, through r (the manager's cache), the
// ClusterImagePins that select namespace ns, as the ImagePins they act as
// there.
func ClusterPinsIn(ctx context.Context, r client.Reader, ns string) ([]imagesv1alpha1.ImagePin, error) {
	var cps imagesv1alpha1.ClusterImagePinList
	if err := r.List(ctx, &cps); err != nil {
		return nil, fmt.Errorf("list ClusterImagePins: %w", err)
	}
	if len(cps.Items) == 0 {
		return nil, nil
	}
	var n corev1.Namespace
	if err := r.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
		if !apierrors.IsNotFound(err) {
			return nil, fmt.Errorf("read namespace %s: %w", ns, err)
		}
		// Created a moment ago and not in the cache yet: known by its
		// name, without labels.
		n.Name = ns
	}
	return ClusterPinsFor(cps.Items, &n), nil
}
