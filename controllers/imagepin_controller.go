package controllers

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"time"

	apiequality "k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/tools/events"
	"k8s.io/utils/clock"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/builder"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/controller"
	"sigs.k8s.io/controller-runtime/pkg/event"
	"sigs.k8s.io/controller-runtime/pkg/handler"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/manager"
	"sigs.k8s.io/controller-runtime/pkg/predicate"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"
	"sigs.k8s.io/controller-runtime/pkg/source"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/verify"
	"github.com/imagepin/imagepin/internal/workload"
)

// ImagePinReconciler keeps an ImagePin's status in step with the workloads
// it selects, what their tags resolve to and what their pods run. In mode
// Observe it never writes a workload.
type ImagePinReconciler struct {
	client.Client
	// Resolver is the process's shared tag resolver.
	Resolver *registry.Resolver
	// Keychains builds each workload's credentials from the cache.
	Keychains *registry.Keychains
	// Pods is every pod, as drift reads them; SetupWithManager makes it
	// when nil and runs it with the manager. The ClusterImagePin
	// controller shares it.
	Pods *workload.PodStore
	// Verifier verifies signatures for spec.verify, shared with the
	// webhook; VerifyLoader reads its keys. SetupWithManager makes them
	// when nil.
	Verifier     *verify.Verifier
	VerifyLoader *verify.Loader
	// Recorder emits events on transitions; nil emits none.
	Recorder events.EventRecorder
	// Clock stamps lastCheckTime and history; tests inject a fake one.
	Clock clock.PassiveClock
	// APIReader reads live objects (the cache strips managedFields), to
	// name the field manager that reverts imagepin's writes, and the
	// other ImagePins' keep tags before one is deleted.
	APIReader client.Reader

	// ConflictBackoff is how long reverts of imagepin's writes are
	// remembered and how long a first block lasts; zero means an hour.
	ConflictBackoff time.Duration
	// Workers is how many ImagePins are checked at once; zero means 8.
	Workers int
	// Shard is the value of the ShardLabel of the ImagePins and
	// ClusterImagePins this manager reconciles; empty reconciles those
	// without the label. Others are left to their shard's manager.
	Shard string

	seenMu sync.Mutex
	// seen is, per ImagePin and image, the digest its tag resolves to and
	// since when: Follow's memory for images left out of status.
	seen map[types.NamespacedName]seenImages

	// ServedPoll is how often a kind the cluster does not serve yet (a CRD
	// not installed) is looked for; zero means 30s.
	ServedPoll time.Duration

	servedMu sync.Mutex
	served   map[imagesv1alpha1.WorkloadKind]bool
	// said: the troubles of optional kinds (not served, not listable)
	// logged once.
	said    map[string]bool
	recheck chan event.GenericEvent

	conflictMu sync.Mutex
	conflicts  map[types.NamespacedName]*pinConflicts

	// ticks: the tick each ImagePin's last check counted for.
	ticks checkTicks
	// plan: the first round of registry requests after the manager
	// becomes leader, and the checks held until it answers theirs
	// (imagepin_plan.go).
	plan coldPlan

	// tags: which tags each ImagePin names, for push events
	// (imagepin_hints.go); hinted: ImagePins a push event asks to check.
	tags   tagIndex
	hinted chan event.GenericEvent
	// behind: resolutions a check went on without (imagepin_observe.go's
	// resolveAll), each watched once until its answer comes.
	behind behindWatch
	// claims: what each ImagePin wants kept (imagepin_retain.go); pending:
	// events told once the status is stored.
	claims  keepClaims
	pending pendingEvents
	// asking: the availability asks checks left running in the
	// background (checkAvailability), for tests to wait on.
	asking sync.WaitGroup
	// clusterHinted: ClusterImagePins a push event asks to check (the
	// tag index knows them with an empty namespace).
	clusterHinted chan event.GenericEvent
}

// +kubebuilder:rbac:groups=images.imagepin.dev,resources=imagepins,verbs=list;watch;patch
// +kubebuilder:rbac:groups=images.imagepin.dev,resources=imagepins/status,verbs=patch
// +kubebuilder:rbac:groups=apps,resources=replicasets,verbs=list;watch
// +kubebuilder:rbac:groups=apps,resources=deployments;statefulsets;daemonsets,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=batch,resources=jobs,verbs=list;watch
// +kubebuilder:rbac:groups=batch,resources=cronjobs,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups=argoproj.io,resources=rollouts,verbs=get;list;watch;patch
// +kubebuilder:rbac:groups="",resources=pods;serviceaccounts,verbs=list;watch
// +kubebuilder:rbac:groups="",resources=secrets,verbs=get;list;watch
// +kubebuilder:rbac:groups="",resources=configmaps,verbs=get
// +kubebuilder:rbac:groups=events.k8s.io,resources=events,verbs=create;patch

// Reconcile computes an ImagePin's status once and patches it once, only
// when it changed.
func (r *ImagePinReconciler) Reconcile(ctx context.Context, req ctrl.Request) (ctrl.Result, error) {
	if r.plan.holds(req.NamespacedName) {
		// Queued again, ahead of the others, once the plan has the
		// answers its check needs.
		return ctrl.Result{}, nil
	}
	var pin imagesv1alpha1.ImagePin
	err := r.Get(ctx, req.NamespacedName, &pin)
	if err != nil || !r.owns(&pin) {
		if client.IgnoreNotFound(err) == nil {
			// Gone, or moved to another shard: what this manager knew
			// of it goes; the other shard starts from its status.
			forgetMetrics(req.Namespace, req.Name)
			r.forgetConflicts(req.NamespacedName)
			r.forgetSeen(req.NamespacedName)
			r.tags.forget(req.NamespacedName)
			r.ticks.forget(req.NamespacedName)
			r.claims.set(req.NamespacedName, nil)
		}
		return ctrl.Result{}, client.IgnoreNotFound(err)
	}
	r.ticks.visit(&pin, r.Clock.Now())
	if !pin.DeletionTimestamp.IsZero() {
		// Deleted, held for the keep tags it pushed: nothing else is
		// done for it.
		return r.finalize(ctx, &pin)
	}

	before := pin.Status.DeepCopy()
	status := pin.Status.DeepCopy()
	result, err := r.reconcile(ctx, &pin, status)
	if perr := r.patchStatus(ctx, &pin, status); perr != nil {
		r.flushEvents(&pin, false)
		if apierrors.IsConflict(perr) && err == nil {
			// Checked from a cache behind the stored status: again, from
			// the stored one, without an error to log.
			return ctrl.Result{RequeueAfter: conflictRetry}, nil
		}
		return ctrl.Result{}, errors.Join(err, perr)
	}
	r.flushEvents(&pin, true)
	// Events follow the status that was stored, so a failed write does
	// not announce a transition twice.
	r.emitTransitions(&pin, before, status)
	return result, err
}

// reconcile fills status for pin. An invalid or suspended spec ends with no
// requeue (its next change triggers a reconcile); a failure to read the
// cluster is returned for a retry with backoff; otherwise the ImagePin is
// checked again after its interval. A registry failure is not an error
// here: it is reported in status and retried at the interval.
func (r *ImagePinReconciler) reconcile(ctx context.Context, pin *imagesv1alpha1.ImagePin, status *imagesv1alpha1.ImagePinStatus) (ctrl.Result, error) {
	sel, err := selection.Compile(&pin.Spec)
	if err != nil {
		log.FromContext(ctx).Info("ImagePin spec cannot be honoured", "reason", err.Error())
		setInvalidSpec(status, pin.Generation, err)
		forgetMetrics(pin.Namespace, pin.Name)
		r.tags.forget(client.ObjectKeyFromObject(pin))
		r.ticks.forget(client.ObjectKeyFromObject(pin))
		return ctrl.Result{}, nil
	}
	if pin.Spec.Suspend {
		setSuspended(status, pin.Generation)
		forgetMetrics(pin.Namespace, pin.Name)
		r.tags.forget(client.ObjectKeyFromObject(pin))
		r.ticks.forget(client.ObjectKeyFromObject(pin))
		return ctrl.Result{}, nil
	}

	workloads, err := workload.List(ctx, r.Client, pin.Namespace, r.servedKinds(sel.Kinds()), sel.Labels())
	if err != nil {
		return ctrl.Result{}, err
	}
	obs, err := r.observe(ctx, pin, sel, workloads)
	if err != nil {
		return ctrl.Result{}, err
	}
	r.tags.set(client.ObjectKeyFromObject(pin), obs.tagRefs())
	now := r.Clock.Now()
	r.checkAvailability(ctx, client.ObjectKeyFromObject(pin), pin.Spec.Mode, &obs, pin.Status.Images, sel, now)
	setChecked(status, checkInput{
		generation: pin.Generation,
		now:        now,
		interval:   sel.Interval,
		obs:        obs,
		platforms:  r.Resolver.Platforms,
		overrides:  pin.Spec.Overrides,
	})
	recordMetrics(pin, status)
	recordUnavailable(pin.Namespace, pin.Name, obs.available)
	r.retain(ctx, pin, sel, obs, status, now, false)

	// Pin and Follow: write what the status says should run.
	plan, followDue := planWrites(planInput{
		mode:      pin.Spec.Mode,
		minAge:    minAgeOf(pin),
		overrides: sel.Overrides(),
		now:       now,
		obs:       obs,
		firstSeen: r.firstSeen(pin, status, obs, now),
		platforms: r.Resolver.Platforms,
	})
	plan, err = r.ownWrites(ctx, pin, plan, workloads)
	if err != nil {
		return ctrl.Result{}, err
	}
	blocked := r.applyWrites(ctx, pin, plan, obs)
	r.releaseStaleFields(ctx, pin.Namespace, obs, plan)
	setConflict(status, pin.Generation, pin.Spec.Mode, blocked)
	recordConflicts(pin.Namespace, pin.Name, blocked)
	return ctrl.Result{RequeueAfter: nextCheck(now, sel.Interval, followDue)}, nil
}

// nextCheck is the next tick of interval, or earlier the time a Follow
// write waiting for minAge falls due.
func nextCheck(now time.Time, interval time.Duration, followDue time.Time) time.Duration {
	next := untilNextTick(now, interval)
	if !followDue.IsZero() {
		if due := max(followDue.Sub(now), 0) + tickSlack; due < next {
			return due
		}
	}
	return next
}

// Every ImagePin checks on one grid: the multiples of its interval (since
// the zero time), the same in every manager. ImagePins that share a tag
// and an interval therefore check it at the same instants, and one
// registry request per tick serves them all: a tag that moves is seen
// within one interval by each of them, however their reconciles are
// phased. (Requeueing an interval after each reconcile, ImagePins out of
// phase would reuse each other's answers up to an interval old, and see a
// move up to two intervals late.)

// defaultWorkers is how many ImagePins are checked at once by default.
const defaultWorkers = 8

// conflictRetry is how soon a check whose status write conflicted (it
// read a cache behind the stored status) runs again.
const conflictRetry = 200 * time.Millisecond

// tickSlack keeps a requeue clear of the tick it aims at.
const tickSlack = 10 * time.Millisecond

// untilNextTick is how long from now until the next tick of interval.
func untilNextTick(now time.Time, interval time.Duration) time.Duration {
	return now.Truncate(interval).Add(interval).Sub(now) + tickSlack
}

// tickStart is when the current tick of interval began. A check reuses
// only resolutions made since then, so that a check on a tick never
// reuses the previous tick's answer, while every lookup within a tick
// (other workloads naming the tag, other ImagePins, watch events) shares
// one, however long the registry budget stretches the check.
func tickStart(now time.Time, interval time.Duration) time.Time {
	return now.Truncate(interval)
}

// patchStatus writes status with a merge patch, and nothing when it is
// unchanged.
func (r *ImagePinReconciler) patchStatus(ctx context.Context, pin *imagesv1alpha1.ImagePin, status *imagesv1alpha1.ImagePinStatus) error {
	if equalStatus(&pin.Status, status) {
		return nil
	}
	before := pin.DeepCopy()
	pin.Status = *status
	// Only over the status the check started from: a check that read a
	// cache not yet showing the last write (a workload's event can come
	// first) would otherwise write history entries anew, with new
	// firstSeen times. It fails with a conflict and is retried.
	if err := r.Status().Patch(ctx, pin, client.MergeFromWithOptions(before, client.MergeFromWithOptimisticLock{})); err != nil {
		return fmt.Errorf("patch status of ImagePin %s/%s: %w", pin.Namespace, pin.Name, err)
	}
	return nil
}

func equalStatus(a, b *imagesv1alpha1.ImagePinStatus) bool {
	return apiequality.Semantic.DeepEqual(a, b)
}

// SetupWithManager registers the reconciler: it runs on every spec change of
// an ImagePin, on every workload change that can change what an ImagePin
// selects or names, and on every pod change of a selected workload that
// changes what runs where.
func (r *ImagePinReconciler) SetupWithManager(mgr ctrl.Manager) error {
	if r.Clock == nil {
		r.Clock = clock.RealClock{}
	}
	if r.Keychains == nil {
		r.Keychains = &registry.Keychains{Reader: mgr.GetClient()}
	}
	if r.Verifier == nil {
		r.Verifier = verify.New(r.Resolver, r.Clock, nil)
	}
	if r.VerifyLoader == nil {
		r.VerifyLoader = &verify.Loader{Reader: mgr.GetAPIReader(), Clock: r.Clock}
	}
	if err := workload.IndexOwners(context.Background(), mgr.GetFieldIndexer()); err != nil {
		return err
	}
	// Pods are held in a store of their own, not the manager's cache: a
	// cached pod would cost more than all imagepin reads of it.
	if r.Pods == nil {
		pods, err := workload.NewPodStoreFor(mgr.GetConfig())
		if err != nil {
			return err
		}
		if err := mgr.Add(pods); err != nil {
			return err
		}
		r.Pods = pods
	}
	r.ticks.firstPending = r.firstChecksPendingMemo()
	workers := r.Workers
	if workers <= 0 {
		workers = defaultWorkers
	}
	b := ctrl.NewControllerManagedBy(mgr).
		Named("imagepin").
		// Several workers, so that one ImagePin waiting on a slow or
		// blackholed registry does not delay every other; one ImagePin is
		// never checked by two at once.
		WithOptions(controller.Options{MaxConcurrentReconciles: workers}).
		// Status patches do not bump the generation; reacting to them would
		// make every status write trigger another reconcile. A label
		// change may move it between shards.
		For(&imagesv1alpha1.ImagePin{}, builder.WithPredicates(specOrShardChanged()))

	r.served = map[imagesv1alpha1.WorkloadKind]bool{}
	var pending []*workload.Kind
	for _, k := range workload.Kinds() {
		if !k.Workload {
			continue
		}
		if k.Optional && !r.usable(context.Background(), mgr, k) {
			// Said once (usable); watched as soon as it is usable (below).
			pending = append(pending, k)
			continue
		}
		r.served[k.Name] = true
		// The map function runs for the old and the new object of an
		// update, so an ImagePin a relabelled workload leaves is told too.
		b = b.Watches(k.New(), handler.EnqueueRequestsFromMapFunc(r.imagePinsSelecting(k.Name)),
			builder.WithPredicates(workloadChanged))
	}
	// A pod added or gone, or running other images or on another node:
	// the inputs of drift.
	b = b.WatchesRawSource(r.Pods.Source(r.imagePinsOfOwner))
	// ImagePins to check again at once, when a kind appears.
	r.recheck = make(chan event.GenericEvent)
	b = b.WatchesRawSource(source.Channel(r.recheck, &handler.EnqueueRequestForObject{}))
	r.hinted = make(chan event.GenericEvent, hintQueue)
	b = b.WatchesRawSource(source.Channel(r.hinted, &handler.EnqueueRequestForObject{}))
	// The cold round's plan, run as soon as the manager is leader, before
	// the pods have synced; its checks queued ahead.
	r.plan.planned = make(chan struct{})
	b = b.WatchesRawSource(planSource{plan: &r.plan})
	if err := mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		startPlanInformers(ctx, mgr.GetCache())
		return r.runColdPlan(ctx)
	})); err != nil {
		return err
	}
	c, err := b.Build(r)
	if err != nil {
		return err
	}
	if len(pending) == 0 {
		return nil
	}
	return mgr.Add(manager.RunnableFunc(func(ctx context.Context) error {
		r.watchWhenServed(ctx, mgr, c, pending)
		return nil
	}))
}

// firstChecksPendingMemo is firstChecksPending, read at most once a
// second (real time) while it says yes.
func (r *ImagePinReconciler) firstChecksPendingMemo() func(time.Time) (pending, known bool) {
	var (
		mu     sync.Mutex
		readAt time.Time
	)
	return func(started time.Time) (bool, bool) {
		mu.Lock()
		defer mu.Unlock()
		if !readAt.IsZero() && time.Since(readAt) < time.Second {
			return true, true
		}
		pending, err := r.firstChecksPending(context.Background(), started)
		if err != nil {
			return false, false // asks anew; tried again at the next check
		}
		if pending {
			readAt = time.Now()
		}
		return pending, true
	}
}

// firstChecksPending says whether an ImagePin this manager reconciles,
// there before it began checking (started), has not been come to yet by
// its reconcile: the cold start's round of checks is still under way. It
// reads the cache without copying, and only in the tick after the one
// the manager began in (checkTicks.freshSince).
func (r *ImagePinReconciler) firstChecksPending(ctx context.Context, started time.Time) (bool, error) {
	var pins imagesv1alpha1.ImagePinList
	if err := r.List(ctx, &pins, r.shardListOptions()...); err != nil {
		return false, err
	}
	var before []*imagesv1alpha1.ImagePin
	for i := range pins.Items {
		p := &pins.Items[i]
		if r.owns(p) && !p.Spec.Suspend && p.DeletionTimestamp.IsZero() && p.CreationTimestamp.Time.Before(started) {
			before = append(before, p)
		}
	}
	return r.ticks.unvisited(before) > 0, nil
}

// shardListOptions list, from the cache and without copying its
// objects (they are only read), the ImagePins of this manager's shard,
// and some others that owns tells apart (without a shard, every one).
func (r *ImagePinReconciler) shardListOptions() []client.ListOption {
	opts := []client.ListOption{client.UnsafeDisableDeepCopy}
	if r.Shard != "" {
		opts = append(opts, client.MatchingLabels{imagesv1alpha1.ShardLabel: r.Shard})
	}
	return opts
}

// owns says whether this manager's shard reconciles obj (an ImagePin or a
// ClusterImagePin).
func (r *ImagePinReconciler) owns(obj client.Object) bool {
	return obj.GetLabels()[imagesv1alpha1.ShardLabel] == r.Shard
}

// specOrShardChanged passes a new spec, and a label change (which may move
// the object between shards), not a status write.
func specOrShardChanged() predicate.Predicate {
	return predicate.Or(predicate.GenerationChangedPredicate{}, predicate.LabelChangedPredicate{})
}

// imagePinsSelecting maps a workload to the ImagePins of its namespace that
// select it. The cache indexes ImagePins by namespace, so this reads only
// that namespace's.
func (r *ImagePinReconciler) imagePinsSelecting(kind imagesv1alpha1.WorkloadKind) handler.MapFunc {
	return func(ctx context.Context, obj client.Object) []reconcile.Request {
		return r.selectingPins(ctx, obj, kind)
	}
}

// imagePinsOfOwner maps a pod to the ImagePins that select its workload.
func (r *ImagePinReconciler) imagePinsOfOwner(ctx context.Context, obj client.Object) []reconcile.Request {
	owner, kind, err := workload.OwningWorkload(ctx, r.Client, r.Pods, obj)
	if err != nil {
		log.FromContext(ctx).Error(err, "find the workload of a pod", "pod", client.ObjectKeyFromObject(obj))
		return nil
	}
	if owner == nil {
		return nil
	}
	return r.selectingPins(ctx, owner, kind)
}

func (r *ImagePinReconciler) selectingPins(ctx context.Context, obj client.Object, kind imagesv1alpha1.WorkloadKind) []reconcile.Request {
	var pins imagesv1alpha1.ImagePinList
	if err := r.List(ctx, &pins, client.InNamespace(obj.GetNamespace())); err != nil {
		log.FromContext(ctx).Error(err, "list ImagePins for a workload change", "namespace", obj.GetNamespace())
		return nil
	}
	var reqs []reconcile.Request
	for _, p := range pins.Items {
		if !r.owns(&p) {
			continue // another shard's
		}
		sel, err := selection.Compile(&p.Spec)
		if err != nil {
			continue // reported on the ImagePin itself
		}
		if sel.SelectsKind(kind) && sel.SelectsLabels(obj.GetLabels()) {
			reqs = append(reqs, reconcile.Request{NamespacedName: types.NamespacedName{Namespace: p.Namespace, Name: p.Name}})
		}
	}
	return reqs
}

// ownWrites keeps the writes to containers this ImagePin is the writer of
// (selection's Writer's rule), the rule the webhook pins by.
func (r *ImagePinReconciler) ownWrites(ctx context.Context, pin *imagesv1alpha1.ImagePin, plan []workloadWrite, workloads []workload.Workload) ([]workloadWrite, error) {
	if len(plan) == 0 {
		return plan, nil
	}
	var pins imagesv1alpha1.ImagePinList
	if err := r.List(ctx, &pins, client.InNamespace(pin.Namespace)); err != nil {
		return nil, fmt.Errorf("list ImagePins in %s: %w", pin.Namespace, err)
	}
	// The namespace's ImagePins come first in Writer's rule, so the
	// ClusterImagePins matter only to one of them.
	var clusterPins []imagesv1alpha1.ImagePin
	if strings.HasPrefix(pin.Name, selection.ClusterPinPrefix) {
		var err error
		if clusterPins, err = selection.ClusterPinsIn(ctx, r.Client, pin.Namespace); err != nil {
			return nil, err
		}
	}
	as := selectedAsOf(workloads)
	writing := selection.WritingOf(pins.Items, clusterPins...)
	out := plan[:0:0]
	for _, w := range plan {
		mine := w
		mine.writes = nil
		a := as[string(w.kind)+"/"+w.name]
		writers := writing.Of(a.kind, a.labels)
		for _, iw := range w.writes {
			writer, _ := writers.For(iw.stored)
			if writer != nil && writer.Name == pin.Name {
				mine.writes = append(mine.writes, iw)
			} else if writer != nil {
				log.FromContext(ctx).V(1).Info("container is written by another ImagePin", "kind", w.kind, "workload", w.name, "container", iw.container, "writer", writer.Name)
			}
		}
		if len(mine.writes) > 0 {
			out = append(out, mine)
		}
	}
	return out, nil
}

// selectedAs is the kind and labels a workload was selected by.
type selectedAs struct {
	kind   imagesv1alpha1.WorkloadKind
	labels map[string]string
}

// selectedAsOf gives, by "Kind/name", how each workload was selected: who
// writes it is decided so, a Deployment that a Rollout references
// (workloadRef) as that Rollout.
func selectedAsOf(workloads []workload.Workload) map[string]selectedAs {
	as := map[string]selectedAs{}
	for _, w := range workloads {
		a := selectedAs{w.Kind, w.Object.GetLabels()}
		if w.Runner != nil {
			a = selectedAs{w.RunnerKind.Name, w.Runner.GetLabels()}
		}
		as[string(w.Kind)+"/"+w.Name()] = a
	}
	return as
}
