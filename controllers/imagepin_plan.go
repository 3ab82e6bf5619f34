package controllers

import (
	"context"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/util/workqueue"
	"k8s.io/utils/ptr"
	"sigs.k8s.io/controller-runtime/pkg/cache"
	"sigs.k8s.io/controller-runtime/pkg/client"
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

// planWait bounds how long the controller's workers wait for the plan to
// hold its ImagePins (well within a controller's cache sync timeout, 2 m).
const planWait = time.Minute

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
	req      registry.Request
	pins     []int
	answered bool
}

// coldRound is what the plan asks, in order, and for whom. The plan asks
// as it goes: an ImagePin's tags are asked as soon as it is planned.
type coldRound struct {
	r  *ImagePinReconciler
	mu sync.Mutex
	// byKey: every ask, by Resolver.Key; each is in its host's line.
	byKey map[string]*plannedAsk
	pins  []types.NamespacedName
	// missing: per ImagePin, how many of its asks have not answered.
	missing []int
	hosts   map[string]*hostLine
	// planned: no more asks will come; the hosts' workers end once their
	// lines are through.
	planned bool
	workers sync.WaitGroup
}

// hostLine is one registry host's asks, in order, asked a burst at a
// time; a host that failed is asked no more by the plan.
type hostLine struct {
	asks   []*plannedAsk
	next   int
	failed bool
	wake   *sync.Cond
}

// startPlanInformers starts the cache's informers of what the plan reads
// besides ImagePins and workloads (whose informers the controller starts
// with it): the pull secrets and service accounts of the workloads.
// Started on their first read, they would list only after the workloads
// had, and the first request would wait for both lists.
func startPlanInformers(ctx context.Context, c cache.Informers) {
	for _, obj := range []client.Object{&corev1.Secret{}, &corev1.ServiceAccount{}} {
		go func() {
			// Blocks until the informer has synced; an error is met
			// again, and reported, by the read that needs it.
			_, _ = c.GetInformer(ctx, obj)
		}()
	}
}

// runColdPlan plans the cold round (see coldPlan) and works through it;
// it runs once, when the manager becomes leader.
func (r *ImagePinReconciler) runColdPlan(ctx context.Context) error {
	// Whatever happens, the controller's workers do not wait for more,
	// nor longer than planWait.
	defer r.plan.done()
	stop := time.AfterFunc(planWait, r.plan.done)
	defer stop.Stop()
	logger := log.FromContext(ctx).WithName("cold-round")
	began := r.Clock.Now()
	round := &coldRound{r: r, byKey: map[string]*plannedAsk{}, hosts: map[string]*hostLine{}}
	defer r.plan.releaseAll()
	listed, err := round.plan(ctx)
	round.done()
	// Held ImagePins are held; the rest are checked as they come.
	r.plan.done()
	if err != nil {
		// What was planned is asked; the checks of the others ask for
		// their tags themselves, as they wait.
		logger.Info("the plan of the first round of registry requests stopped", "error", err.Error())
	}
	if !listed.IsZero() {
		logger.V(1).Info("planned the first round of registry requests", "imagePins", len(round.pins), "resolutions", len(round.byKey),
			"listedAfter", listed.Sub(began).String(), "plannedAfter", r.Clock.Since(began).String())
	}
	round.workers.Wait()
	logger.V(1).Info("the first round of registry requests has answered", "after", r.Clock.Since(began).String())
	return nil
}

// plan adds what the ImagePins this manager reconciles name, as the cache
// holds them now, to the round, one ImagePin after another. This manager
// begins checking once they are listed (checkTicks.begin): answers made
// since that tick serve their first checks (checkTicks.freshSince). It
// returns when the ImagePins were listed.
func (c *coldRound) plan(ctx context.Context) (listed time.Time, err error) {
	r := c.r
	var pins imagesv1alpha1.ImagePinList
	// Read only, never kept: no copy of the cache's objects.
	if err := r.List(ctx, &pins, r.shardListOptions()...); err != nil {
		return listed, err
	}
	listed = r.Clock.Now()
	r.ticks.begin(listed)
	for i := range pins.Items {
		pin := &pins.Items[i]
		if !r.owns(pin) || !pin.DeletionTimestamp.IsZero() || pin.Spec.Suspend {
			continue
		}
		sel, err := selection.Compile(&pin.Spec)
		if err != nil {
			continue // its check says why
		}
		if ctx.Err() != nil {
			return listed, ctx.Err()
		}
		// A read that fails leaves the ImagePin out of the plan: its
		// check reads again, and reports.
		workloads, err := workload.List(ctx, r.Client, pin.Namespace, r.servedKinds(sel.Kinds()), sel.Labels())
		if err != nil {
			continue
		}
		var obs observation
		for _, w := range workloads {
			if err = r.addWorkload(ctx, &obs, pin.Namespace, sel, w, nil); err != nil {
				break
			}
		}
		if err != nil {
			continue
		}
		since := tickStart(listed, sel.Interval)
		var asks []keyedAsk
		for _, ct := range obs.containers {
			if !ct.hasTag {
				continue
			}
			req := registry.Request{Image: ct.image, Keychain: ct.keychain, FreshSince: since}
			key, host, err := r.Resolver.Key(ctx, req)
			if err != nil {
				continue // nothing to ask: its check says why
			}
			asks = append(asks, keyedAsk{key, host, req})
		}
		c.add(ctx, types.NamespacedName{Namespace: pin.Namespace, Name: pin.Name}, asks)
	}
	return listed, nil
}

// keyedAsk is a resolution an ImagePin needs, with what Resolver.Key said
// of it.
type keyedAsk struct {
	key, host string
	req       registry.Request
}

// add plans pin: each of its asks not answered yet counts, and a new one
// joins its host's line. pin is held when one counts.
func (c *coldRound) add(ctx context.Context, pin types.NamespacedName, asks []keyedAsk) {
	c.mu.Lock()
	p := len(c.pins)
	c.pins = append(c.pins, pin)
	c.missing = append(c.missing, 0)
	var fresh []*hostLine
	for _, k := range asks {
		a := c.byKey[k.key]
		if a == nil {
			a = &plannedAsk{req: k.req}
			c.byKey[k.key] = a
			h := c.hosts[k.host]
			if h == nil {
				h = &hostLine{wake: sync.NewCond(&c.mu)}
				c.hosts[k.host] = h
				fresh = append(fresh, h)
			}
			h.asks = append(h.asks, a)
			h.wake.Signal()
		}
		if a.answered || (len(a.pins) > 0 && a.pins[len(a.pins)-1] == p) {
			continue // answered already, or named twice
		}
		if k.req.FreshSince.After(a.req.FreshSince) {
			// A shorter interval's tick: an answer since then serves
			// every ImagePin naming the tag.
			a.req.FreshSince = k.req.FreshSince
		}
		a.pins = append(a.pins, p)
		c.missing[p]++
	}
	if c.missing[p] > 0 {
		c.r.plan.hold([]types.NamespacedName{pin})
	}
	c.mu.Unlock()
	for _, h := range fresh {
		for range max(1, c.r.Resolver.Burst()) {
			c.workers.Go(func() { c.ask(ctx, h) })
		}
	}
}

// done says no more asks will come.
func (c *coldRound) done() {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.planned = true
	for _, h := range c.hosts {
		h.wake.Broadcast()
	}
}

// ask works through h's line, one ask at a time; when one has answered
// (well or not), the checks of the ImagePins whose last it was are
// released. After a failure of the host's own, the rest of its line is
// released unasked: those checks ask themselves.
func (c *coldRound) ask(ctx context.Context, h *hostLine) {
	for {
		c.mu.Lock()
		for h.next == len(h.asks) && !c.planned {
			h.wake.Wait()
		}
		if h.next == len(h.asks) {
			c.mu.Unlock()
			return
		}
		a := h.asks[h.next]
		h.next++
		skip := h.failed || ctx.Err() != nil
		req := a.req
		c.mu.Unlock()
		if !skip {
			_, err := c.r.Resolver.Resolve(ctx, req)
			// Given up on while queued behind others' requests to the
			// host: the resolution goes on, and is waited for again.
			for registry.StillWaiting(err) && ctx.Err() == nil {
				_, err = c.r.Resolver.Resolve(ctx, req)
			}
			if err != nil && !registry.TagFailed(err) {
				c.mu.Lock()
				h.failed = true
				c.mu.Unlock()
			}
		}
		c.answered(a)
	}
}

// answered releases the checks of the ImagePins whose last ask a was.
func (c *coldRound) answered(a *plannedAsk) {
	c.mu.Lock()
	a.answered = true
	var ready []types.NamespacedName
	for _, p := range a.pins {
		if c.missing[p]--; c.missing[p] == 0 {
			ready = append(ready, c.pins[p])
		}
	}
	c.mu.Unlock()
	c.r.plan.release(ready...)
}
