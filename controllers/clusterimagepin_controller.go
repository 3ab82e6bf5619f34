package controllers

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"sort"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// ClusterImagePinReconciler checks ClusterImagePins. In each namespace one
// selects it does what an ImagePin there would, through the ImagePin
// reconciler's own steps: the shared resolver, the credentials of the
// workload's own namespace, Writer's rule (an ImagePin of the namespace
// wins), the same conflict and Follow memory. One status covers every
// namespace.
type ClusterImagePinReconciler struct {
	*ImagePinReconciler
}

// +kubebuilder:rbac:groups=images.imagepin.dev,resources=clusterimagepins,verbs=list;watch
// +kubebuilder:rbac:groups=images.imagepin.dev,resources=clusterimagepins/status,verbs=patch
// +kubebuilder:rbac:groups="",resources=namespaces,verbs=list;watch

// Reconcile computes a ClusterImagePin's status once and patches it once,
// only when it changed.
func (r *ClusterImagePinReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	var cp imagesv1alpha1.ClusterImagePin
	err := r.Get(ctx, req.NamespacedName, &cp)
	if err != nil || !r.owns(&cp) {
		if client.IgnoreNotFound(err) == nil {
			r.forgetCluster(req.Name) // gone, or another shard's now
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	before := cp.Status.DeepCopy()
	status := cp.Status.DeepCopy()
	result, err := r.reconcileCluster(ctx, &cp, status)
	if !equalClusterStatus(before, status) {
		patched := cp.DeepCopy()
		patched.Status = *status
		// Only over the status the check started from, as an ImagePin's
		// (patchStatus).
		if perr := r.Status().Patch(ctx, patched, client.MergeFromWithOptions(&cp, client.MergeFromWithOptimisticLock{})); perr != nil {
			if apierrors.IsConflict(perr) && err == nil {
				return ctrl.Result{RequeueAfter: conflictRetry}, nil
			}
			return ctrl.Result{}, fmt.Errorf("patch status of ClusterImagePin %s: %w", cp.Name, perr)
		}
	}
	if r.Recorder != nil {
		b, a := pinStatusOf(before), pinStatusOf(status)
		for _, e := range transitions(&b, &a) {
			r.Recorder.Eventf(&cp, nil, e.kind, e.reason, "Check", "%s", truncateNote(e.note))
		}
	}
	return result, err
}

// reconcileCluster fills status for cp, as reconcile does for an ImagePin.
func (r *ClusterImagePinReconciler) reconcileCluster(ctx context.Context, cp *imagesv1alpha1.ClusterImagePin, status *imagesv1alpha1.ClusterImagePinStatus) (ctrl.Result, error) {
	ps := pinStatusOf(status)
	defer func() { setFromPinStatus(status, &ps) }()
	self := types.NamespacedName{Name: cp.Name}
	metricsName := selection.ClusterPinPrefix + cp.Name

	sel, err := selection.Compile(&cp.Spec.ImagePinSpec)
	if err == nil {
		_, err = selection.NamespaceSelector(&cp.Spec)
	}
	if err != nil {
		log.FromContext(ctx).Info("ClusterImagePin spec cannot be honoured", "reason", err.Error())
		setInvalidSpec(&ps, cp.Generation, err)
		forgetMetrics("", metricsName)
		r.tags.forget(self)
		r.ticks.forgetWhere(func(k types.NamespacedName) bool { return k.Name == metricsName })
		return ctrl.Result{}, nil
	}
	if cp.Spec.Suspend {
		setSuspended(&ps, cp.Generation)
		forgetMetrics("", metricsName)
		r.tags.forget(self)
		r.ticks.forgetWhere(func(k types.NamespacedName) bool { return k.Name == metricsName })
		return ctrl.Result{}, nil
	}
	namespaces, err := r.selectedNamespaces(ctx, cp)
	if err != nil {
		return ctrl.Result{}, err
	}

	// spec.verify: the Verified condition, even where nothing is selected.
	all := observation{verifying: cp.Spec.Verify != nil}
	var blocked []string
	var listed []nsCheck // namespaces where it selects something
	var followDue time.Time
	for _, ns := range namespaces {
		pin := selection.AsImagePin(cp, ns)
		res, err := r.checkNamespace(ctx, &pin, sel, &ps, r.Clock.Now())
		if err != nil {
			return ctrl.Result{}, err
		}
		all.workloads += res.obs.workloads
		all.containers = append(all.containers, res.obs.containers...)
		if all.available == nil {
			all.available = availability{}
		}
		maps.Copy(all.available, res.obs.available)
		if all.verifyErr == nil {
			all.verifyErr = res.obs.verifyErr
		}
		for _, b := range res.blocked {
			blocked = append(blocked, ns+"/"+b)
		}
		// Namespaces where it selects nothing are counted, not listed.
		if res.obs.workloads > 0 || len(res.yieldedTo) > 0 {
			listed = append(listed, res)
		}
		if !res.followDue.IsZero() && (followDue.IsZero() || res.followDue.Before(followDue)) {
			followDue = res.followDue
		}
	}
	r.tags.set(self, all.tagRefs())
	r.forgetNamespacesLeft(cp.Name, namespaces)

	now := r.Clock.Now()
	in := checkInput{
		generation:   cp.Generation,
		now:          now,
		interval:     sel.Interval,
		obs:          all,
		platforms:    r.Resolver.Platforms,
		driftedFirst: true,
		overrides:    cp.Spec.Overrides,
	}
	byNamespace := setChecked(&ps, in)
	breakdown := make([]imagesv1alpha1.NamespaceSummary, 0, len(listed))
	for _, res := range listed {
		var summary imagesv1alpha1.Summary
		if s := byNamespace[res.namespace]; s != nil {
			summary = *s
		}
		summary.Workloads = int32(res.obs.workloads)
		breakdown = append(breakdown, imagesv1alpha1.NamespaceSummary{Name: res.namespace, Summary: summary, YieldedTo: res.yieldedTo})
	}
	sort.Strings(blocked)
	setConflict(&ps, cp.Generation, cp.Spec.Mode, blocked)
	recordConflicts("", metricsName, blocked)
	metricsPin := &imagesv1alpha1.ImagePin{}
	metricsPin.Name = metricsName
	recordMetrics(metricsPin, &ps)
	recordUnavailable("", metricsName, all.available)
	status.Summary.Namespaces = int32(len(namespaces))
	status.Namespaces = boundBreakdown(breakdown)
	return ctrl.Result{RequeueAfter: nextCheck(now, sel.Interval, followDue)}, nil
}

// nsCheck is what one namespace's check found and did.
type nsCheck struct {
	namespace string
	obs       observation
	blocked   []string
	followDue time.Time
	yieldedTo []string
}

// checkNamespace does, for the ImagePin a ClusterImagePin acts as in one
// namespace, what reconcile does for an ImagePin: observe, plan the
// writes, keep those it is the writer of, write them.
func (r *ClusterImagePinReconciler) checkNamespace(ctx context.Context, pin *imagesv1alpha1.ImagePin, sel *selection.Selection, ps *imagesv1alpha1.ImagePinStatus, now time.Time) (nsCheck, error) {
	res := nsCheck{namespace: pin.Namespace}
	workloads, err := workload.List(ctx, r.Client, pin.Namespace, r.servedKinds(sel.Kinds()), sel.Labels())
	if err != nil {
		return res, err
	}
	obs, err := r.observe(ctx, pin, sel, workloads)
	if err != nil {
		return res, err
	}
	for i := range obs.containers {
		obs.containers[i].namespace = pin.Namespace
	}
	r.checkAvailability(ctx, checkKey(pin), pin.Spec.Mode, &obs, ps.Images, sel, now)
	res.obs = obs
	if res.yieldedTo, err = r.yieldedTo(ctx, pin.Namespace, obs, workloads); err != nil {
		return res, err
	}
	plan, followDue := planWrites(planInput{
		mode:      pin.Spec.Mode,
		minAge:    minAgeOf(pin),
		overrides: sel.Overrides(),
		now:       now,
		obs:       obs,
		firstSeen: r.firstSeen(pin, ps, obs, now),
		platforms: r.Resolver.Platforms,
	})
	res.followDue = followDue
	plan, err = r.ownWrites(ctx, pin, plan, workloads)
	if err != nil {
		return res, err
	}
	res.blocked = r.applyWrites(ctx, pin, plan, obs)
	r.releaseStaleFields(ctx, pin.Namespace, obs, plan)
	return res, nil
}

// yieldedTo names the ImagePins of ns that select some observed container:
// they, not the ClusterImagePin, decide who writes it.
func (r *ClusterImagePinReconciler) yieldedTo(ctx context.Context, ns string, obs observation, workloads []workload.Workload) ([]string, error) {
	var pins imagesv1alpha1.ImagePinList
	if err := r.List(ctx, &pins, client.InNamespace(ns)); err != nil {
		return nil, fmt.Errorf("list ImagePins in %s: %w", ns, err)
	}
	if len(pins.Items) == 0 {
		return nil, nil
	}
	as := selectedAsOf(workloads)
	writing := selection.WritingOf(pins.Items)
	seen := map[string]bool{}
	var out []string
	for _, c := range obs.containers {
		a := as[string(c.kind)+"/"+c.workload]
		for _, name := range writing.Of(a.kind, a.labels).YieldsTo(c.raw) {
			if !seen[name] {
				seen[name] = true
				out = append(out, name)
			}
		}
	}
	sort.Strings(out)
	if len(out) > maxYieldedTo {
		out = out[:maxYieldedTo]
	}
	return out, nil
}

// Bounds of the per-namespace breakdown: the CRD's maxItems.
const (
	maxNamespaces = 256
	maxYieldedTo  = 16
)

// boundBreakdown orders namespaces drifted first, then by name, within the
// CRD's bounds (the summary still counts every namespace).
func boundBreakdown(b []imagesv1alpha1.NamespaceSummary) []imagesv1alpha1.NamespaceSummary {
	sort.Slice(b, func(i, j int) bool {
		if (b[i].Drifted > 0) != (b[j].Drifted > 0) {
			return b[i].Drifted > 0
		}
		return b[i].Name < b[j].Name
	})
	if len(b) > maxNamespaces {
		b = b[:maxNamespaces]
	}
	return b
}

// selectedNamespaces lists, from the cache, the namespaces cp selects.
func (r *ClusterImagePinReconciler) selectedNamespaces(ctx context.Context, cp *imagesv1alpha1.ClusterImagePin) ([]string, error) {
	var list corev1.NamespaceList
	if err := r.List(ctx, &list); err != nil {
		return nil, fmt.Errorf("list namespaces: %w", err)
	}
	var out []string
	for i := range list.Items {
		ns := &list.Items[i]
		if ns.DeletionTimestamp == nil && selection.SelectsNamespace(cp, ns) {
			out = append(out, ns.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}

// pinStatusOf is the ImagePin-shaped part of a ClusterImagePin's status,
// which the ImagePin's status functions compute.
func pinStatusOf(s *imagesv1alpha1.ClusterImagePinStatus) imagesv1alpha1.ImagePinStatus {
	ps := imagesv1alpha1.ImagePinStatus{
		ObservedGeneration: s.ObservedGeneration,
		LastCheckTime:      s.LastCheckTime,
		Summary:            s.Summary.Summary,
		Conditions:         s.Conditions,
		Images:             s.Images,
	}
	return *ps.DeepCopy()
}

func setFromPinStatus(s *imagesv1alpha1.ClusterImagePinStatus, ps *imagesv1alpha1.ImagePinStatus) {
	s.ObservedGeneration = ps.ObservedGeneration
	s.LastCheckTime = ps.LastCheckTime
	s.Summary.Summary = ps.Summary
	s.Conditions = ps.Conditions
	s.Images = ps.Images
}

func equalClusterStatus(a, b *imagesv1alpha1.ClusterImagePinStatus) bool {
	x, y := pinStatusOf(a), pinStatusOf(b)
	return equalStatus(&x, &y) && a.Summary.Namespaces == b.Summary.Namespaces && equalBreakdown(a.Namespaces, b.Namespaces)
}

func equalBreakdown(a, b []imagesv1alpha1.NamespaceSummary) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i].Name != b[i].Name || a[i].Summary != b[i].Summary || strings.Join(a[i].YieldedTo, ",") != strings.Join(b[i].YieldedTo, ",") {
			return false
		}
	}
	return true
}

// forgetCluster drops what is remembered of a ClusterImagePin that is
// gone: per namespace its conflict and Follow memory, its metrics, its
// tags.
func (r *ClusterImagePinReconciler) forgetCluster(name string) {
	r.forgetNamespacesLeft(name, nil)
	forgetMetrics("", selection.ClusterPinPrefix+name)
	r.tags.forget(types.NamespacedName{Name: name})
}

// forgetNamespacesLeft drops the conflict, Follow and tick memory a
// ClusterImagePin keeps for namespaces it no longer selects.
func (r *ClusterImagePinReconciler) forgetNamespacesLeft(name string, selected []string) {
	vname := selection.ClusterPinPrefix + name
	keep := map[string]bool{}
	for _, ns := range selected {
		keep[ns] = true
	}
	r.conflictMu.Lock()
	for k := range r.conflicts {
		if k.Name == vname && !keep[k.Namespace] {
			delete(r.conflicts, k)
		}
	}
	r.conflictMu.Unlock()
	r.seenMu.Lock()
	for k := range r.seen {
		if k.Name == vname && !keep[k.Namespace] {
			delete(r.seen, k)
		}
	}
	r.seenMu.Unlock()
	r.ticks.forgetWhere(func(k types.NamespacedName) bool { return k.Name == vname && !keep[k.Namespace] })
}

// SetupWithManager registers the ClusterImagePin controller: it runs on
// every spec change of a ClusterImagePin, on every namespace created,
// deleted or relabelled, on every change of a workload or pod in a
// namespace it selects that can change what it selects or what runs, and
// when a push event names one of its tags. Set up the ImagePin
// reconciler first: this one shares its state.
func (r *ClusterImagePinReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.served == nil || r.Pods == nil {
		return errors.New("set up the ImagePin controller first: the ClusterImagePin controller shares its pod store and served kinds")
	}
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("clusterimagepin").
		WithOptions(controller.Options{MaxConcurrentReconciles: max(1, r.Workers)}).
		For(&imagesv1alpha1.ClusterImagePin{}, builder.WithPredicates(specOrShardChanged())).
		Watches(&corev1.Namespace{}, handler.EnqueueRequestsFromMapFunc(r.allClusterPins),
			builder.WithPredicates(namespaceLabelsChanged()))
	for _, k := range workload.Kinds() {
		if !k.Workload || !r.served[k.Name] {
			continue
		}
		b = b.Watches(k.New(), handler.EnqueueRequestsFromMapFunc(r.clusterPinsSelecting(k.Name)),
			builder.WithPredicates(workloadChanged))
	}
	b = b.WatchesRawSource(r.Pods.Source(r.clusterPinsOfOwner))
	// An ImagePin created or deleted changes who writes in its namespace.
	b = b.Watches(&imagesv1alpha1.ImagePin{}, handler.EnqueueRequestsFromMapFunc(r.clusterPinsOfNamespace),
		builder.WithPredicates(predicate.GenerationChangedPredicate{}))
	r.clusterHinted = make(chan event.GenericEvent, hintQueue)
	b = b.WatchesRawSource(source.Channel(r.clusterHinted, &handler.EnqueueRequestForObject{}))
	return b.Complete(r)
}

// namespaceLabelsChanged passes namespaces created, deleted, or whose
// labels changed: what a namespaceSelector reads.
func namespaceLabelsChanged() predicate.Funcs {
	return predicate.Funcs{
		UpdateFunc: func(e event.UpdateEvent) bool {
			return !mapsEqual(e.ObjectOld.GetLabels(), e.ObjectNew.GetLabels()) ||
				(e.ObjectOld.GetDeletionTimestamp() == nil) != (e.ObjectNew.GetDeletionTimestamp() == nil)
		},
		GenericFunc: func(event.GenericEvent) bool { return false },
	}
}

func mapsEqual(a, b map[string]string) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if w, ok := b[k]; !ok || w != v {
			return false
		}
	}
	return true
}

// allClusterPins maps a namespace change to every ClusterImagePin: one
// that selected it may not any more, and the other way round.
func (r *ClusterImagePinReconciler) allClusterPins(ctx context.Context, _ client.Object) []reconcile.Request {
	var list imagesv1alpha1.ClusterImagePinList
	if err := r.List(ctx, &list); err != nil {
		log.FromContext(ctx).Error(err, "list ClusterImagePins for a namespace change")
		return nil
	}
	out := make([]reconcile.Request, 0, len(list.Items))
	for _, cp := range list.Items {
		if r.owns(&cp) {
			out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: cp.Name}})
		}
	}
	return out
}

// clusterPinsOfNamespace maps an object to the ClusterImagePins that select
// its namespace.
func (r *ClusterImagePinReconciler) clusterPinsOfNamespace(ctx context.Context, obj client.Object) []reconcile.Request {
	return r.clusterPinsFor(ctx, obj.GetNamespace(), nil)
}

// clusterPinsSelecting maps a workload to the ClusterImagePins that select
// it (its namespace, kind and labels): a change of a workload none selects
// costs no check of every namespace.
func (r *ClusterImagePinReconciler) clusterPinsSelecting(kind imagesv1alpha1.WorkloadKind) handler.MapFunc {
	return func(ctx context.Context, obj client.Object) []reconcile.Request {
		return r.clusterPinsFor(ctx, obj.GetNamespace(), func(s *selection.Selection) bool {
			return s.SelectsKind(kind) && s.SelectsLabels(obj.GetLabels())
		})
	}
}

// clusterPinsOfOwner maps a pod to the ClusterImagePins that select its
// workload.
func (r *ClusterImagePinReconciler) clusterPinsOfOwner(ctx context.Context, obj client.Object) []reconcile.Request {
	owner, kind, err := workload.OwningWorkload(ctx, r.Client, r.Pods, obj)
	if err != nil || owner == nil {
		return nil
	}
	return r.clusterPinsSelecting(kind)(ctx, owner)
}

// clusterPinsFor lists the ClusterImagePins that select namespace ns and,
// if selects is set, whose selection it accepts.
func (r *ClusterImagePinReconciler) clusterPinsFor(ctx context.Context, ns string, selects func(*selection.Selection) bool) []reconcile.Request {
	var list imagesv1alpha1.ClusterImagePinList
	if err := r.List(ctx, &list); err != nil || len(list.Items) == 0 {
		return nil
	}
	var n corev1.Namespace
	if err := r.Get(ctx, client.ObjectKey{Name: ns}, &n); err != nil {
		return nil
	}
	var out []reconcile.Request
	for i := range list.Items {
		cp := &list.Items[i]
		if !r.owns(cp) || !selection.SelectsNamespace(cp, &n) {
			continue
		}
		if selects != nil {
			sel, err := selection.Compile(&cp.Spec.ImagePinSpec)
			if err != nil || !selects(sel) {
				continue
			}
		}
		out = append(out, reconcile.Request{NamespacedName: types.NamespacedName{Name: cp.Name}})
	}
	return out
}
