package controllers

import (
	"context"
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"k8s.io/utils/ptr"
	ctrl "sigs.k8s.io/controller-runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
	"sigs.k8s.io/controller-runtime/pkg/config"
	metricsserver "sigs.k8s.io/controller-runtime/pkg/metrics/server"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/workload"
)

// startOneWorker runs, beside the suite's manager, a manager of its own
// with one worker, which reconciles only the ImagePins labelled for shard.
func startOneWorker(t *testing.T, shard string) {
	t.Helper()
	res, err := registry.New(registry.Options{InsecureRegistries: []string{reg.Host}, Timeout: 30 * time.Second})
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

// Issue 19 items 1 and 3: a check whose tags have never been answered
// does not hold its worker while their requests wait (a cold start
// queues hundreds of tags in the registry budget): it stops, writes
// nothing, and is checked again once they have answered. Meanwhile the
// one worker checks other ImagePins, which queue their own tags.
func TestACheckDoesNotHoldItsWorkerWhileItsTagsAreUnanswered(t *testing.T) {
	t.Parallel()
	const shard = "one-worker"
	startOneWorker(t, shard)

	slowDigest := reg.Push(t, "unanswered/app:v1")
	fastDigest := reg.Push(t, "answered/app:v1")
	var asked atomic.Int32
	arrived := make(chan struct{}, 1)
	release := make(chan struct{})
	remove := reg.Route("unanswered/app", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		asked.Add(1)
		select {
		case arrived <- struct{}{}:
		default:
		}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		reg.Backend().ServeHTTP(w, r)
	}))
	defer remove()
	released := false
	defer func() {
		if !released {
			close(release)
		}
	}()

	slowNS, fastNS := namespace(t), namespace(t)
	deploymentRunning(t, slowNS, "slow", reg.Image("unanswered/app:v1"))
	deploymentRunning(t, fastNS, "fast", reg.Image("answered/app:v1"))
	labelled := func(p *imagesv1alpha1.ImagePin) *imagesv1alpha1.ImagePin {
		p.Labels = map[string]string{imagesv1alpha1.ShardLabel: shard}
		return p
	}
	slow := labelled(observePin(slowNS, "slow"))
	create(t, slow)
	select {
	case <-arrived: // the slow ImagePin's tag is asked for, and held
	case <-time.After(30 * time.Second):
		t.Fatal("the slow ImagePin's check never reached the registry")
	}

	fast := labelled(observePin(fastNS, "fast"))
	create(t, fast)
	whenChecked(t, fast, func(got *imagesv1alpha1.ImagePin) error {
		return imageDigestIs(got, fastDigest)
	})
	// The one worker checked the fast ImagePin while the slow one's
	// request was held: the slow one's check had stopped, unwritten.
	if got, err := getPin(slow); err != nil {
		t.Fatal(err)
	} else if got.Status.LastCheckTime != nil {
		t.Fatalf("the slow ImagePin was reported before its tag answered: %+v", got.Status)
	}

	close(release)
	released = true
	whenChecked(t, slow, func(got *imagesv1alpha1.ImagePin) error {
		return imageDigestIs(got, slowDigest)
	})
	if n := asked.Load(); n != 1 {
		t.Fatalf("the held tag was asked %d times, want once: the check again took the answer it waited for", n)
	}
}

// imageDigestIs: got reports one image, resolved to digest.
func imageDigestIs(got *imagesv1alpha1.ImagePin, digest string) error {
	if len(got.Status.Images) != 1 || string(got.Status.Images[0].Digest) != digest {
		return fmt.Errorf("images %+v, want one resolved to %s", got.Status.Images, digest)
	}
	return nil
}
