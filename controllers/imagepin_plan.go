package controllers

import (
	"context"
	"sync"
	"time"

	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/controller/priorityqueue"
	"sigs.k8s.io/controller-runtime/pkg/log"
	"sigs.k8s.io/controller-runtime/pkg/reconcile"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// The cold round's plan. When a manager becomes leader, every tag its
// ImagePins name waits its turn in the registry budget: 500 tags at 10
// requests a second take 48 s. A check that waits for its own tags holds
// a worker meanwhile, so with a few workers the checks of ImagePins whose
// tags have all answered wait behind checks waiting for tags, and most
// ImagePins were checked only after the last answer (at 10,000
// Deployments, 900 of 1,000 ImagePins in the 10 s after it). And nothing
// was asked before the pods had been listed, the longest part of the
// cache's first sync.
//
// The plan starts as soon as the cache holds the ImagePins and their
// workloads, without waiting for the pods (resolving a tag needs none).
// It asks once for every tag and credential its ImagePins name, in the
// order the ImagePins first name them, so that one ImagePin's tags are
// asked together and it is complete early. It holds each ImagePin's
// check until the ImagePin's tags have answered (well or not), and then
// queues it ahead of the rest: the checks follow the answers through the
// round instead of piling up at its end, and no worker waits for the
// budget. Each registry host is asked a few requests at a time (its
// burst), so that a request never waits long for its turn, and a host
// that fails is asked no more by the plan: the checks of its ImagePins
// ask it themselves, and one slow registry holds only the ImagePins that
// name it.
type coldPlan struct {
	mu sync.Mutex
	// held: the ImagePins whose checks wait for the plan's answers.
	held map[types.NamespacedName]bool
	// queue is the controller's, once its source has started; early
	// holds what was released before.
	queue workqueue.TypedRateLimitingInterface[reconcile.Request]
	early []types.NamespacedName
	// planned is closed once the ImagePins to hold are held (or there is
	// no plan): the controller's workers start after it, so that none
	// comes to an ImagePin before the plan could hold it.
	planned     chan struct{}
	plannedOnce sync.Once
}

// done says the plan holds what it will hold.
func (p *coldPlan) done() {
	p.plannedOnce.Do(func() {
		if p.planned != nil {
			close(p.planned)
		}
	})
}

// planPriority puts the checks the plan releases ahead of the queue's
// others: those were queued by the cache's first lists, and their checks
// would wait for tags.
const planPriority = 10

// holds says whether pin's check waits for the plan.
func (p *coldPlan) holds(pin types.NamespacedName) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.held[pin]
}

// hold has the checks of pins wait for the plan.
func (p *coldPlan) hold(pins []types.NamespacedName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.held == nil {
		p.held = make(map[types.NamespacedName]bool, len(pins))
	}
	for _, k := range pins {
		p.held[k] = true
	}
}

// release queues the checks of pins, ahead of the others, and holds them
// no more.
func (p *coldPlan) release(pins ...types.NamespacedName) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, k := range pins {
		if !p.held[k] {
			continue
		}
		delete(p.held, k)
		if p.queue == nil {
			p.early = append(p.early, k)
			continue
		}
		enqueueFirst(p.queue, k)
	}
}

// releaseAll releases every ImagePin still held.
func (p *coldPlan) releaseAll() {
	p.mu.Lock()
	keys := make([]types.NamespacedName, 0, len(p.held))
	for k := range p.held {
		keys = append(keys, k)
	}
	p.mu.Unlock()
	p.release(keys...)
}

// enqueueFirst adds pin to q ahead of what the cache's lists queued.
func enqueueFirst(q workqueue.TypedRateLimitingInterface[reconcile.Request], pin types.NamespacedName) {
	req := reconcile.Request{NamespacedName: pin}
	if pq, ok := q.(priorityqueue.PriorityQueue[reconcile.Request]); ok {
		pq.AddWithOpts(priorityqueue.AddOpts{Priority: ptr.To(planPriority)}, req)
		return
	}
	q.Add(req)
}

// planSource is how released checks reach the controller's queue.
type planSource struct{ plan *coldPlan }

// Start takes the controller's queue, and queues what was released
// before.
func (s planSource) Start(_ context.Context, q workqueue.TypedRateLimitingInterface[reconcile.Request]) error {
	s.plan.mu.Lock()
	defer s.plan.mu.Unlock()
	s.plan.queue = q
	for _, k := range s.plan.early {
		enqueueFirst(q, k)
	}
	s.plan.early = nil
	return nil
}

// WaitForSync waits until the plan holds the ImagePins it will hold.
func (s planSource) WaitForSync(ctx context.Context) error {
	if s.plan.planned == nil {
		return nil
	}
	select {
	case <-s.plan.planned:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (planSource) String() string { return "imagepin cold-round plan" }

// plannedAsk is one resolution the plan makes, and the ImagePins (by
// index) whose checks wait for it.
type plannedAsk struct {
	req  registry.Request
	host string
	pins []int
}

// coldRound is what the plan asks, in order, and for whom.
type coldRound struct {
	asks []plannedAsk
	pins []types.NamespacedName
	// missing: per ImagePin, how many of its asks have not answered.
	missing []int
}

// runColdPlan plans the cold round (see coldPlan) and works through it;
// it runs once, when the manager becomes leader.
func (r *ImagePinReconciler) runColdPlan(ctx context.Context) error {
	logger := log.FromContext(ctx).WithName("cold-round")
	// Whatever happens, the controller's workers do not wait for more.
	defer r.plan.done()
	began := r.Clock.Now()
	r.ticks.begin(began)
	round, err := r.planColdRound(ctx, began)
	if err != nil {
		// The checks ask for their tags themselves, as they wait.
		logger.Info("no plan for the first round of registry requests", "error", err.Error())
		return nil
	}
	held := make([]types.NamespacedName, 0, len(round.pins))
	for i, k := range round.pins {
		if round.missing[i] > 0 {
			held = append(held, k)
		}
	}
	r.plan.hold(held)
	defer r.plan.releaseAll()
	r.plan.done()
	logger.V(1).Info("asking for the tags of the first round", "imagePins", len(round.pins), "held", len(held), "resolutions", len(round.asks))
	r.askColdRound(ctx, round)
	return nil
}

// planColdRound lists what the ImagePins this manager reconciles name, as
// the cache holds them now; answers made since the tick of began serve
// their first checks (checkTicks.freshSince).
func (r *ImagePinReconciler) planColdRound(ctx context.Context, began time.Time) (*coldRound, error) {
	var pins imagesv1alpha1.ImagePinList
	// Read only, never kept: no copy of the cache's objects.
	if err := r.List(ctx, &pins, r.shardListOptions()...); err != nil {
		return nil, err
	}
	round := &coldRound{}
	byKey := map[string]int{}
	for i := range pins.Items {
		pin := &pins.Items[i]
		if !r.owns(pin) || !pin.DeletionTimestamp.IsZero() || pin.Spec.Suspend {
			continue
		}
		sel, err := selection.Compile(&pin.Spec)
		if err != nil {
			continue // its check says why
		}
		workloads, err := workload.List(ctx, r.Client, pin.Namespace, r.servedKinds(sel.Kinds()), sel.Labels())
		if err != nil {
			return nil, err
		}
		var obs observation
		for _, w := range workloads {
			if err := r.addWorkload(ctx, &obs, pin.Namespace, sel, w, nil); err != nil {
				return nil, err
			}
		}
		p := len(round.pins)
		round.pins = append(round.pins, types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name})
		round.missing = append(round.missing, 0)
		since := tickStart(began, sel.Interval)
		for _, c := range obs.containers {
			if !c.hasTag {
				continue
			}
			req := registry.Request{Image: c.image, Keychain: c.keychain, FreshSince: since}
			key, host, err := r.Resolver.Key(ctx, req)
			if err != nil {
				continue // nothing to ask: its check says why
			}
			a, ok := byKey[key]
			if !ok {
				a = len(round.asks)
				byKey[key] = a
				round.asks = append(round.asks, plannedAsk{req: req, host: host})
			}
			if n := len(round.asks[a].pins); n > 0 && round.asks[a].pins[n-1] == p {
				continue // this ImagePin names it twice
			}
			if since.Before(round.asks[a].req.FreshSince) {
				round.asks[a].req.FreshSince = since // a longer interval
			}
			round.asks[a].pins = append(round.asks[a].pins, p)
			round.missing[p]++
		}
	}
	return round, nil
}

// askColdRound asks round's resolutions, host by host, a burst at a time
// and in order, and releases each ImagePin's check once its last has
// answered. A host that fails is asked no more: the ImagePins waiting for
// it are released, and their checks ask.
func (r *ImagePinReconciler) askColdRound(ctx context.Context, round *coldRound) {
	byHost := map[string][]int{}
	for i, a := range round.asks {
		byHost[a.host] = append(byHost[a.host], i)
	}
	var mu sync.Mutex
	answered := func(i int) {
		mu.Lock()
		var ready []types.NamespacedName
		for _, p := range round.asks[i].pins {
			if round.missing[p]--; round.missing[p] == 0 {
				ready = append(ready, round.pins[p])
			}
		}
		mu.Unlock()
		r.plan.release(ready...)
	}
	var wg sync.WaitGroup
	for _, asks := range byHost {
		var (
			hostMu sync.Mutex
			next   int
			failed bool
		)
		take := func() (int, bool) {
			hostMu.Lock()
			defer hostMu.Unlock()
			if next == len(asks) {
				return 0, false
			}
			next++
			return asks[next-1], true
		}
		for range min(len(asks), max(1, r.Resolver.Burst())) {
			wg.Go(func() {
				for {
					i, ok := take()
					if !ok {
						return
					}
					hostMu.Lock()
					skip := failed || ctx.Err() != nil
					hostMu.Unlock()
					if !skip {
						if _, err := r.Resolver.Resolve(ctx, round.asks[i].req); err != nil && !registry.TagFailed(err) {
							hostMu.Lock()
							failed = true
							hostMu.Unlock()
						}
					}
					answered(i)
				}
			})
		}
	}
	wg.Wait()
}
