package controllers

import (
	"fmt"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Issue 19 item 3: a blackholed registry (here one repository that never
// answers) delays only the ImagePins that name it. While a check waits on
// it, another ImagePin is checked and reported: the controller runs
// several workers, and one ImagePin holds only one.
func TestABlackholedRegistryDelaysOnlyItsImagePins(t *testing.T) {
	var waiting atomic.Int32
	arrived := make(chan struct{}, 16)
	remove := reg.Route("blackhole/app", http.HandlerFunc(func(_ http.ResponseWriter, r *http.Request) {
		waiting.Add(1)
		defer waiting.Add(-1)
		select {
		case arrived <- struct{}{}:
		default:
		}
		<-r.Context().Done() // never answers: the resolver gives up at its deadline
	}))
	defer remove()

	slowNS, fastNS := namespace(t), namespace(t)
	reg.Push(t, "quick/app:v1")
	deploymentRunning(t, slowNS, "slow", reg.Image("blackhole/app:v1"))
	deploymentRunning(t, fastNS, "fast", reg.Image("quick/app:v1"))
	slow := observePin(slowNS, "slow")
	create(t, slow)
	select {
	case <-arrived: // the slow ImagePin's check now waits on the blackhole
	case <-time.After(30 * time.Second):
		t.Fatal("the slow ImagePin's check never reached the registry")
	}

	fast := observePin(fastNS, "fast")
	create(t, fast)
	whenChecked(t, fast, func(got *imagesv1alpha1.ImagePin) error {
		if n := waiting.Load(); n == 0 {
			t.Fatal("the blackholed request ended before the other ImagePin was checked: nothing shown")
		}
		if len(got.Status.Images) != 1 || got.Status.Images[0].Digest == "" {
			return fmt.Errorf("images %+v", got.Status.Images)
		}
		return nil
	})
	// The slow one is reported too, once the resolver gives up.
	whenChecked(t, slow, func(got *imagesv1alpha1.ImagePin) error {
		return conditionIs(got, imagesv1alpha1.ConditionReady, "False", imagesv1alpha1.ReasonResolutionFailed)
	})
}
