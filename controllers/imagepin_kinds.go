package controllers

import (
	"context"
	"time"

	"k8s.io/apimachinery/pkg/api/meta"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/source"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

// Optional workload kinds (a CRD such as Argo Rollouts') may be served
// after the manager starts: they are watched once the cluster serves them.

// workloadChanged passes the workload changes that can change what an
// ImagePin selects or what its containers name.
var workloadChanged = predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{})

// servedPoll is how often imagepin looks for an optional kind's API (a CRD
// installed after imagepin started).
const servedPoll = 30 * time.Second

// watchWhenServed watches each optional kind once the cluster serves it,
// and then checks every ImagePin again, without a restart.
func (r *ImagePinReconciler) watchWhenServed(ctx context.Context, mgr ctrl.Manager, c controller.Controller, pending []*workload.Kind) {
	ticker := time.NewTicker(r.servedPollEvery())
	defer ticker.Stop()
	for len(pending) > 0 {
		select {
		case <-ctx.Done():
			return
		case <-ticker.C:
		}
		left := pending[:0]
		for _, k := range pending {
			if !r.usable(ctx, mgr, k) {
				left = append(left, k)
				continue
			}
			err := c.Watch(source.Kind[client.Object](mgr.GetCache(), k.New(),
				handler.EnqueueRequestsFromMapFunc(r.imagePinsSelecting(k.Name)), workloadChanged))
			if err != nil {
				mgr.GetLogger().Error(err, "watch a workload kind now served", "kind", k.Name)
				left = append(left, k)
				continue
			}
			mgr.GetLogger().Info("workload kind now served: selected from now on", "kind", k.Name, "apiVersion", k.GVK.GroupVersion().String())
			r.servedMu.Lock()
			r.served[k.Name] = true
			r.servedMu.Unlock()
			r.recheckAll(ctx, mgr)
		}
		pending = left
	}
}

func (r *ImagePinReconciler) servedPollEvery() time.Duration {
	if r.ServedPoll > 0 {
		return r.ServedPoll
	}
	return servedPoll
}

// servedBy reports whether the cluster serves k's API.
func servedBy(mapper meta.RESTMapper, k *workload.Kind) bool {
	_, err := mapper.RESTMapping(k.GVK.GroupKind(), k.GVK.Version)
	return err == nil
}

// usable reports whether an optional kind can be watched: the cluster
// serves it and the custom kinds between it and its pods, and for a
// configured kind, the manager may list them. Watching a kind the manager
// may not list would hold up the controller's start (its informer never
// syncs). What is missing is said once; the kind is picked up when it
// is there.
func (r *ImagePinReconciler) usable(ctx context.Context, mgr ctrl.Manager, k *workload.Kind) bool {
	for _, c := range append([]*workload.Kind{k}, k.Via...) {
		if c.Type != nil {
			continue // a built-in kind: always served, and granted by the manager's own role
		}
		if !servedBy(mgr.GetRESTMapper(), c) {
			r.sayOnce(mgr, c, "workload kind not served by this cluster: left out until it is", nil)
			return false
		}
		if !k.Configured {
			continue // a built-in optional kind (Rollout): the manager's own role grants it
		}
		lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		err := mgr.GetAPIReader().List(lctx, c.NewList(), client.Limit(1))
		cancel()
		if err != nil {
			r.sayOnce(mgr, c, "configured kind cannot be listed: left out until it can (grant the manager get, list, watch and patch on it: README, Other pod-template kinds)", err)
			return false
		}
	}
	return true
}

// sayOnce logs one trouble of a kind once.
func (r *ImagePinReconciler) sayOnce(mgr ctrl.Manager, k *workload.Kind, msg string, err error) {
	r.servedMu.Lock()
	defer r.servedMu.Unlock()
	if r.said == nil {
		r.said = map[string]bool{}
	}
	key := k.GVK.String() + ": " + msg
	if r.said[key] {
		return
	}
	r.said[key] = true
	kv := []any{"kind", k.Name, "apiVersion", k.GVK.GroupVersion().String()}
	if err != nil {
		kv = append(kv, "reason", err.Error())
	}
	mgr.GetLogger().Info(msg, kv...)
}

// servedKinds keeps of kinds those the cluster serves.
func (r *ImagePinReconciler) servedKinds(kinds []imagesv1alpha1.WorkloadKind) []imagesv1alpha1.WorkloadKind {
	r.servedMu.Lock()
	defer r.servedMu.Unlock()
	out := make([]imagesv1alpha1.WorkloadKind, 0, len(kinds))
	for _, k := range kinds {
		// Without SetupWithManager (a reconciler called directly) only
		// the built-in kinds are known to be served.
		if r.served[k] || (r.served == nil && !workload.KindNamed(k).Optional) {
			out = append(out, k)
		}
	}
	return out
}

// recheckAll queues every ImagePin, as a kind they may select appeared.
func (r *ImagePinReconciler) recheckAll(ctx context.Context, mgr ctrl.Manager) {
	var pins imagesv1alpha1.ImagePinList
	if err := mgr.GetClient().List(ctx, &pins); err != nil {
		mgr.GetLogger().Error(err, "list ImagePins to check them again")
		return
	}
	for i := range pins.Items {
		select {
		case r.recheck <- event.GenericEvent{Object: &pins.Items[i]}:
		case <-ctx.Done():
			return
		}
	}
}
