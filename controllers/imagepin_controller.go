package controllers

import (
	"context"
	"errors"
	"fmt"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// ImagePinReconciler keeps an ImagePin's status in step with the workloads
// it selects.
type ImagePinReconciler struct {
	client.Client
	// Clock stamps lastCheckTime; tests inject a fake one.
	Clock clock.PassiveClock
}

// +kubebuilder:rbac:groups=images.imagepin.dev,resources=imagepins,verbs=get;list;watch
// +kubebuilder:rbac:groups=images.imagepin.dev,resources=imagepins/status,verbs=get;patch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;list;watch
// +kubebuilder:rbac:groups=batch,resources=jobs;cronjobs,verbs=get;list;watch

// Reconcile computes an ImagePin's status once and patches it once, only
// when it changed.
func (r *ImagePinReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var pin imagesv1alpha1.ImagePin
	if err := r.Get(ctx, req.NamespacedName, &pin); err != nil {
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}

	status := pin.Status.DeepCopy()
	result, err := r.reconcile(ctx, &pin, status)
	if perr := r.patchStatus(ctx, &pin, status); perr != nil {
		return ctrl.Result{}, errors.Join(err, perr)
	}
	return result, err
}

// reconcile fills status for pin. An invalid or suspended spec ends with no
// requeue (its next change triggers a reconcile); a failure to read the
// cluster is returned for a retry with backoff; otherwise the ImagePin is
// checked again after its interval.
func (r *ImagePinReconciler) reconcile(ctx context.Context, pin *imagesv1alpha1.ImagePin, status *imagesv1alpha1.ImagePinStatus) (ctrl.Result, error) {
	sel, err := selection.Compile(&pin.Spec)
	if err != nil {
		log.FromContext(ctx).Info("ImagePin spec cannot be honoured", "reason", err.Error())
		setInvalidSpec(status, pin.Generation, err)
		return ctrl.Result{}, nil
	}
	if pin.Spec.Suspend {
		setSuspended(status, pin.Generation)
		return ctrl.Result{}, nil
	}

	workloads, err := workload.List(ctx, r.Client, pin.Namespace, sel.Kinds(), sel.Labels())
	if err != nil {
		return ctrl.Result{}, err
	}
	setSelected(status, pin.Generation, r.Clock.Now(), summarize(workloads, sel))
	return ctrl.Result{RequeueAfter: sel.Interval}, nil
}

// patchStatus writes status with a merge patch, and nothing when it is
// unchanged.
func (r *ImagePinReconciler) patchStatus(ctx context.Context, pin *imagesv1alpha1.ImagePin, status *imagesv1alpha1.ImagePinStatus) error {
	if apiequality.Semantic.DeepEqual(&pin.Status, status) {
		return nil
	}
	before := pin.DeepCopy()
	pin.Status = *status
	if err := r.Status().Patch(ctx, pin, client.MergeFrom(before)); err != nil {
		return fmt.Errorf("patch status of ImagePin %s/%s: %w", pin.Namespace, pin.Name, err)
	}
	return nil
}

// SetupWithManager registers the reconciler: it runs on every spec change of
// an ImagePin and on every workload change that can change what an ImagePin
// in the same namespace selects.
func (r *ImagePinReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("imagepin").
		// Status patches do not bump the generation; reacting to them would
		// make every status write trigger another reconcile.
		For(&imagesv1alpha1.ImagePin{}, builder.WithPredicates(predicate.GenerationChangedPredicate{}))

	workloadChanged := predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{})
	for _, kind := range imagesv1alpha1.AllWorkloadKinds {
		obj, err := workload.NewObject(kind)
		if err != nil {
			return err
		}
		b = b.Watches(obj, handler.EnqueueRequestsFromMapFunc(r.imagePinsInNamespace),
			builder.WithPredicates(workloadChanged))
	}
	return b.Complete(r)
}

// imagePinsInNamespace maps a workload to every ImagePin of its namespace.
// A label change can take a workload out of a selector as well as into one,
// and the map function sees only the new labels, so each ImagePin of the
// namespace decides for itself.
func (r *ImagePinReconciler) imagePinsInNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	var pins imagesv1alpha1.ImagePinList
	if err := r.List(ctx, &pins, client.InNamespace(obj.GetNamespace())); err != nil {
		log.FromContext(ctx).Error(err, "list ImagePins for a workload change", "namespace", obj.GetNamespace())
		return nil
	}
	reqs := make([]reconcile.Request, 0, len(pins.Items))
	for _, p := range pins.Items {
		reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}})
	}
	return reqs
}
