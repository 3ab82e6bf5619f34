package nodesim

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-logr/logr"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
)

// Options configure a Simulator.
type Options struct {
	// Nodes are the names of the nodes to register and run; default
	// node-a, node-b and node-c.
	Nodes []string
	// Transport reaches registries, e.g. one trusting a test CA; nil is
	// go-containerregistry's remote.DefaultTransport. Registries on
	// localhost, loopback or private addresses may serve plain HTTP:
	// go-containerregistry falls back to it for them.
	Transport http.RoundTripper
	// TerminationDelay is how long a deleted pod keeps running on its node
	// before the simulator removes it, as a graceful shutdown; never longer
	// than the pod's grace period. Zero means one second; negative means
	// at once.
	TerminationDelay time.Duration
	// Log receives what the simulator does and the errors it meets; none
	// is logged when it is unset.
	Log logr.Logger
}

// Simulator schedules pods to its nodes and runs them, as the scheduler and
// kubelets would. Make one with New and start it with Run.
type Simulator struct {
	client kubernetes.Interface
	opts   Options
	log    logr.Logger
	nodes  map[string]*simNode // by name; fixed after New

	mu      sync.Mutex
	gone    map[string]bool       // nodes deleted by the API: no longer run
	pods    map[string]*podState  // by namespace/name, pods on our nodes
	assumed map[types.UID]assumed // pods bound but maybe not yet seen bound

	running atomic.Bool

	// Set by Run before any worker or event handler starts.
	podLister  corelisters.PodLister
	nodeLister corelisters.NodeLister
	schedQ     workqueue.TypedRateLimitingInterface[string]
	kubeletQ   workqueue.TypedRateLimitingInterface[string]
	nodeQ      workqueue.TypedRateLimitingInterface[string]
}

// simNode is one simulated node.
type simNode struct {
	name  string
	index int
	ip    string
	cache *imageCache

	mu     sync.Mutex
	podIPs map[int]bool // last octets of 10.244.<index>.x in use

	// The status last written and what the API server stored of it; only
	// the node worker touches them.
	lastComputed, lastStored *corev1.NodeStatus
}

// kubeletWorkers is how many pods the simulated kubelets sync at once; the
// scheduler and the node status writer each have one worker.
const kubeletWorkers = 4

// New makes a simulator for the cluster cfg reaches. It registers nothing
// until Run.
func New(cfg *rest.Config, o Options) (*Simulator, error) {
	if cfg == nil {
		return nil, errors.New("nodesim: no rest.Config")
	}
	if len(o.Nodes) == 0 {
		o.Nodes = []string{"node-a", "node-b", "node-c"}
	}
	if len(o.Nodes) > 250 {
		return nil, fmt.Errorf("nodesim: %d nodes, at most 250", len(o.Nodes))
	}
	o.Nodes = append([]string(nil), o.Nodes...)
	switch {
	case o.TerminationDelay == 0:
		o.TerminationDelay = time.Second
	case o.TerminationDelay < 0:
		o.TerminationDelay = 0
	}
	if o.Log.GetSink() == nil {
		o.Log = logr.Discard()
	}
	client, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("nodesim: %w", err)
	}
	s := &Simulator{
		client:  client,
		opts:    o,
		log:     o.Log,
		nodes:   map[string]*simNode{},
		gone:    map[string]bool{},
		pods:    map[string]*podState{},
		assumed: map[types.UID]assumed{},
	}
	for i, n := range o.Nodes {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			return nil, fmt.Errorf("nodesim: node name %q: %v", n, errs)
		}
		if _, dup := s.nodes[n]; dup {
			return nil, fmt.Errorf("nodesim: node %q named twice", n)
		}
		s.nodes[n] = &simNode{
			name:   n,
			index:  i,
			ip:     fmt.Sprintf("127.0.0.%d", i+1),
			cache:  newImageCache(),
			podIPs: map[int]bool{},
		}
	}
	return s, nil
}

// Nodes returns the names of the nodes the simulator runs: those of
// Options.Nodes whose Node object has not been deleted.
func (s *Simulator) Nodes() []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []string
	for _, n := range s.opts.Nodes {
		if !s.gone[n] {
			out = append(out, n)
		}
	}
	return out
}

// Cached returns what node's image cache holds, most recently pulled first;
// nil for a node the simulator does not know.
func (s *Simulator) Cached(node string) []CachedImage {
	n, ok := s.nodes[node]
	if !ok {
		return nil
	}
	return n.cache.snapshot()
}

// node returns the simulated node name, if the simulator runs it.
func (s *Simulator) node(name string) *simNode {
	n, ok := s.nodes[name]
	if !ok {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gone[name] {
		return nil
	}
	return n
}

// Run registers the nodes, then schedules and runs pods until ctx is done.
// It returns nil once ctx is done and everything it started has stopped;
// an error if the nodes cannot be registered. Run may be called once.
func (s *Simulator) Run(ctx context.Context) error {
	if !s.running.CompareAndSwap(false, true) {
		return errors.New("nodesim: Run called twice")
	}
	if err := s.registerNodes(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}

	// runCtx stops the informers on every way out, ctx done or not.
	runCtx, cancel := context.WithCancel(ctx)
	factory := informers.NewSharedInformerFactory(s.client, 0)
	podInformer := factory.Core().V1().Pods()
	nodeInformer := factory.Core().V1().Nodes()
	s.podLister, s.nodeLister = podInformer.Lister(), nodeInformer.Lister()
	newQueue := func(base, limit time.Duration) workqueue.TypedRateLimitingInterface[string] {
		return workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](base, limit))
	}
	s.schedQ = newQueue(50*time.Millisecond, 5*time.Second)
	s.kubeletQ = newQueue(50*time.Millisecond, 5*time.Second)
	s.nodeQ = newQueue(100*time.Millisecond, 10*time.Second)
	defer func() {
		cancel()
		factory.Shutdown()
	}()
	defer s.schedQ.ShutDown()
	defer s.kubeletQ.ShutDown()
	defer s.nodeQ.ShutDown()

	if _, err := podInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.podEvent(obj) },
		UpdateFunc: func(_, obj any) { s.podEvent(obj) },
		DeleteFunc: func(obj any) { s.podEvent(obj) },
	}); err != nil {
		return fmt.Errorf("nodesim: watch pods: %w", err)
	}
	if _, err := nodeInformer.Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(obj any) { s.nodeEvent(nil, obj) },
		UpdateFunc: func(old, obj any) { s.nodeEvent(old, obj) },
		DeleteFunc: func(obj any) { s.nodeEvent(nil, obj) },
	}); err != nil {
		return fmt.Errorf("nodesim: watch nodes: %w", err)
	}
	factory.Start(runCtx.Done())
	for typ, ok := range factory.WaitForCacheSync(runCtx.Done()) {
		if !ok {
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("nodesim: cache of %v did not sync", typ)
		}
	}
	for _, n := range s.opts.Nodes {
		s.nodeQ.Add(n)
	}

	var wg sync.WaitGroup
	work := func(q workqueue.TypedRateLimitingInterface[string], sync func(context.Context, string) (time.Duration, error), what string) {
		wg.Go(func() {
			for s.processNext(ctx, q, sync, what) {
			}
		})
	}
	work(s.schedQ, s.schedule, "schedule pod")
	work(s.nodeQ, s.syncNode, "sync node")
	for range kubeletWorkers {
		work(s.kubeletQ, s.syncPod, "sync pod")
	}
	s.log.Info("node simulator running", "nodes", s.opts.Nodes)

	<-ctx.Done()
	s.schedQ.ShutDown()
	s.kubeletQ.ShutDown()
	s.nodeQ.ShutDown()
	wg.Wait()
	return nil
}

// processNext runs sync for the next key of q; false once q is shut down.
// A sync that fails is retried with backoff; one that succeeds may ask to
// run again after a while.
func (s *Simulator) processNext(ctx context.Context, q workqueue.TypedRateLimitingInterface[string], sync func(context.Context, string) (time.Duration, error), what string) bool {
	key, quit := q.Get()
	if quit {
		return false
	}
	defer q.Done(key)
	after, err := func() (after time.Duration, err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("panic: %v", r)
			}
		}()
		return sync(ctx, key)
	}()
	switch {
	case err != nil:
		switch {
		case ctx.Err() != nil:
		case apierrors.IsConflict(err):
			// A stale cache: the retry reads the newer object.
			s.log.V(1).Info(what+": conflict, retrying", "key", key)
		default:
			s.log.Error(err, what, "key", key)
		}
		q.AddRateLimited(key)
	case after > 0:
		q.Forget(key)
		q.AddAfter(key, after)
	default:
		q.Forget(key)
	}
	return true
}

// podEvent queues a pod for the scheduler if it is unbound and for the
// kubelet if it is on one of our nodes.
func (s *Simulator) podEvent(obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	pod, ok := obj.(*corev1.Pod)
	if !ok {
		return
	}
	key, err := cache.MetaNamespaceKeyFunc(pod)
	if err != nil {
		return
	}
	if pod.Spec.NodeName == "" {
		s.schedQ.Add(key)
	} else if _, ours := s.nodes[pod.Spec.NodeName]; ours {
		s.kubeletQ.Add(key)
	}
}

// nodeEvent queues our nodes for a status sync and, when a node appears or
// what scheduling looks at changes, the pending pods for the scheduler.
func (s *Simulator) nodeEvent(oldObj, obj any) {
	if t, ok := obj.(cache.DeletedFinalStateUnknown); ok {
		obj = t.Obj
	}
	node, ok := obj.(*corev1.Node)
	if !ok {
		return
	}
	if _, ours := s.nodes[node.Name]; !ours {
		return
	}
	s.nodeQ.Add(node.Name)
	if old, ok := oldObj.(*corev1.Node); ok && schedulingUnchanged(old, node) {
		return
	}
	s.requeuePending()
}

func schedulingUnchanged(old, node *corev1.Node) bool {
	if old.Spec.Unschedulable != node.Spec.Unschedulable || len(old.Spec.Taints) != len(node.Spec.Taints) {
		return false
	}
	for i := range old.Spec.Taints {
		if !old.Spec.Taints[i].MatchTaint(&node.Spec.Taints[i]) || old.Spec.Taints[i].Value != node.Spec.Taints[i].Value {
			return false
		}
	}
	return labels.Equals(old.Labels, node.Labels)
}

// requeuePending queues every unbound pod for the scheduler.
func (s *Simulator) requeuePending() {
	pods, err := s.podLister.List(labels.Everything())
	if err != nil {
		return
	}
	for _, p := range pods {
		if p.Spec.NodeName == "" {
			if key, err := cache.MetaNamespaceKeyFunc(p); err == nil {
				s.schedQ.Add(key)
			}
		}
	}
}

// nodeImagesChanged queues node for a status sync after its cache changed.
func (s *Simulator) nodeImagesChanged(node string) {
	s.nodeQ.Add(node)
}
