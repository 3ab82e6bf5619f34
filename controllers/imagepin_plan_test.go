package controllers

import (
	"context"
	"fmt"
	"net"
	"sync/atomic"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/workload"
)

// startShardManager runs, beside the suite's manager, a manager of its own
// with one worker and the resolver o makes, which reconciles only the
// ImagePins labelled for shard: started after they exist, its first round
// is a cold start's.
func startShardManager(t *testing.T, shard string, o registry.Options) {
	t.Helper()
	res, err := registry.New(o)
	if err != nil {
		t.Fatal(err)
	}
	mgr, err := ctrl.NewManager(env.Config, ctrl.Options{
		Scheme:     env.Scheme,
		Metrics:    metricsserver.Options{BindAddress: "0"},
		Cache:      workload.CacheOptions(),
		Client:     client.Options{Cache: &client.CacheOptions{Unstructured: true}},
		Controller: config.Controller{SkipNameValidation: ptr.To(true)},
	})
	if err != nil {
		t.Fatal(err)
	}
	r := &ImagePinReconciler{Client: mgr.GetClient(), Resolver: res, Workers: 1, Shard: shard}
	if err := r.SetupWithManager(mgr); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- mgr.Start(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-done; err != nil {
			t.Error(err)
		}
	})
}

// labelledFor puts p in shard.
func labelledFor(shard string, p *imagesv1alpha1.ImagePin) *imagesv1alpha1.ImagePin {
	p.Labels = map[string]string{imagesv1alpha1.ShardLabel: shard}
	return p
}

// imageDigestIs: got reports one image, resolved to digest.
func imageDigestIs(got *imagesv1alpha1.ImagePin, digest string) error {
	if len(got.Status.Images) != 1 || string(got.Status.Images[0].Digest) != digest {
		return fmt.Errorf("images %+v, want one resolved to %s", got.Status.Images, digest)
	}
	return nil
}

// Issue 19 item 1 (convergence at the budget's floor): at a cold start
// the tags are asked by a plan, and each ImagePin is checked once its
// own tags have answered, not after the ImagePins queued before it. Here
// the one worker would come to "a-slow" first (the cache lists it first,
// and no pod queues the other): without the plan, it waits there for a
// tag the registry holds back, and "b-fast" is reported only after.
func TestAColdStartChecksEachImagePinWhenItsTagsAnswer(t *testing.T) {
	t.Parallel()
	const shard = "cold-plan"
	slowDigest := reg.Push(t, "plan-slow/app:v1")
	fastDigest := reg.Push(t, "plan-fast/app:v1")
	slow := holdRepository(t, "plan-slow/app")

	// Both exist before the manager starts; no pods.
	ns := namespace(t)
	deploymentRunning(t, ns, "a-slow", reg.Image("plan-slow/app:v1"))
	deploymentRunning(t, ns, "b-fast", reg.Image("plan-fast/app:v1"))
	// An interval longer than the test: its checks all fall in the tick
	// the manager began in.
	hourly := func(p *imagesv1alpha1.ImagePin) *imagesv1alpha1.ImagePin {
		p.Spec.Interval = &metav1.Duration{Duration: time.Hour}
		return labelledFor(shard, p)
	}
	slowPin := hourly(observePin(ns, "a-slow"))
	fast := hourly(observePin(ns, "b-fast"))
	create(t, slowPin, fast)
	// A timeout longer than the test: only the answer ends the wait.
	startShardManager(t, shard, registry.Options{InsecureRegistries: []string{reg.Host}, Timeout: 5 * time.Minute})

	select {
	case <-slow.arrived: // the slow tag is asked, and held
	case <-time.After(30 * time.Second):
		t.Fatal("the slow ImagePin's tag never reached the registry")
	}
	whenChecked(t, fast, func(got *imagesv1alpha1.ImagePin) error {
		return imageDigestIs(got, fastDigest)
	})
	// Reported while the slow tag was held: and the slow ImagePin was
	// not reported without its answer.
	if got, err := getPin(slowPin); err != nil {
		t.Fatal(err)
	} else if got.Status.LastCheckTime != nil {
		t.Fatalf("the slow ImagePin was reported before its tag answered: %+v", got.Status)
	}

	slow.Release()
	whenChecked(t, slowPin, func(got *imagesv1alpha1.ImagePin) error {
		return imageDigestIs(got, slowDigest)
	})
	if n := slow.asked.Load(); n != 1 {
		t.Fatalf("the held tag was asked %d times, want once: the check takes the plan's answer", n)
	}
}

// Issue 19 item 3 at a cold start: the plan asks each registry host a
// burst at a time, apart. Here the burst is one request, and a registry
// that never answers is named by the ImagePin listed first: a plan
// asking all hosts in one line would wait on it (the resolver's timeout
// is longer than the test) before asking the other's tag.
func TestAColdStartAsksEachRegistryApart(t *testing.T) {
	t.Parallel()
	const shard = "cold-plan-hosts"
	hole, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var conns atomic.Int32
	accepted := make(chan net.Conn, 64)
	go func() {
		for {
			c, err := hole.Accept()
			if err != nil {
				return
			}
			conns.Add(1)
			accepted <- c // read nothing, answer nothing
		}
	}()
	t.Cleanup(func() {
		_ = hole.Close()
		for {
			select {
			case c := <-accepted:
				_ = c.Close()
			default:
				return
			}
		}
	})
	holeHost := hole.Addr().String()
	fastDigest := reg.Push(t, "plan-apart/app:v1")

	ns := namespace(t)
	deploymentRunning(t, ns, "a-hole", holeHost+"/never/app:v1")
	deploymentRunning(t, ns, "b-fast", reg.Image("plan-apart/app:v1"))
	holePin := labelledFor(shard, observePin(ns, "a-hole"))
	fast := labelledFor(shard, observePin(ns, "b-fast"))
	create(t, holePin, fast)
	startShardManager(t, shard, registry.Options{
		InsecureRegistries: []string{reg.Host, holeHost},
		QPS:                10, Burst: 1, Timeout: 5 * time.Minute,
	})

	whenChecked(t, fast, func(got *imagesv1alpha1.ImagePin) error {
		return imageDigestIs(got, fastDigest)
	})
	if conns.Load() == 0 {
		t.Fatal("the unanswering registry was never asked: nothing shown")
	}
	if got, err := getPin(holePin); err != nil {
		t.Fatal(err)
	} else if got.Status.LastCheckTime != nil {
		t.Fatalf("the ImagePin naming the unanswering registry was reported without an answer: %+v", got.Status)
	}
}
