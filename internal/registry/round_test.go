package registry

import (
	"context"
	"fmt"
	"sync"
	"testing"
	"time"
)

// Issue 19 item 1 (1.00 HEAD per tag while a round outlasts a tick): when
// requests to a registry were still waiting for its budget at the start of
// a caller's tick, an answer of the previous tick serves it (Interval), so
// a tag asked for just before the tick is not asked again just after it.
// When nothing waited at the tick, the tick's rule holds: only an answer
// made since it serves.
func TestAnAnswerOfARoundThatOutlastedTheTickServesIt(t *testing.T) {
	tr := newTestRegistry(t)
	r, err := New(Options{InsecureRegistries: []string{tr.host}, QPS: 5, Burst: 1, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	images := []string{tr.image("round/a:v1"), tr.image("round/b:v1"), tr.image("round/c:v1")}
	for _, img := range []string{"round/a:v1", "round/b:v1", "round/c:v1"} {
		tr.push(img)
	}
	// A warm-up, so that the ping is not part of what is counted.
	if _, err := r.Resolve(context.Background(), Request{Image: tr.image("round/warm:v1"), TTL: time.Hour}); err == nil {
		t.Fatal("a tag never pushed resolved")
	}
	time.Sleep(time.Second) // the budget refills: nothing waits now
	// A round of three at 5 per second with a burst of 1, a first: a is
	// sent at once, the last waits about 400 ms. The tick begins while
	// they wait.
	var wg sync.WaitGroup
	for _, img := range images {
		wg.Go(func() {
			if _, err := r.Resolve(context.Background(), Request{Image: img, TTL: time.Hour}); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(20 * time.Millisecond) // in this order
	}
	time.Sleep(60 * time.Millisecond)
	tick := time.Now()
	wg.Wait()

	tr.resetCounts()
	for _, img := range images {
		if _, err := r.Resolve(context.Background(), Request{Image: img, FreshSince: tick, Interval: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	// a, and maybe b, were answered before the tick: still served.
	if n := tr.count("HEAD manifests"); n != 0 {
		t.Errorf("after a round that outlasted the tick, %d HEADs were sent for its tags, want 0", n)
	}

	// Without Interval, the tick's rule: a (answered before it) is asked.
	if _, err := r.Resolve(context.Background(), Request{Image: images[0], FreshSince: tick}); err != nil {
		t.Fatal(err)
	}
	if n := tr.count("HEAD manifests"); n != 1 {
		t.Errorf("without Interval, %d HEADs, want 1: a was answered before the tick", n)
	}

	// A tick at which nothing waited (for longer than queueGrace): only
	// answers since it serve.
	time.Sleep(queueGrace + time.Second)
	quiet := time.Now()
	tr.resetCounts()
	for _, img := range images {
		if _, err := r.Resolve(context.Background(), Request{Image: img, FreshSince: quiet, Interval: time.Minute}); err != nil {
			t.Fatal(err)
		}
	}
	if n := tr.count("HEAD manifests"); n != len(images) {
		t.Errorf("at a tick with nothing waiting, %d HEADs, want %d (one per tag)", n, len(images))
	}
}

// A resolution queued behind the budget waits its turn, then has the
// whole --registry-timeout: the deadline bounds the exchange, not the
// queue (a round of 101 tags at 10 per second used to fail every tag
// queued past the deadline at once).
func TestAQueuedResolutionDoesNotFailForItsTimeInTheQueue(t *testing.T) {
	tr := newTestRegistry(t)
	r, err := New(Options{InsecureRegistries: []string{tr.host}, QPS: 4, Burst: 1, Timeout: 800 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	var images []string
	for i := range 6 {
		tag := fmt.Sprintf("queue/app%d:v1", i)
		tr.push(tag)
		images = append(images, tr.image(tag))
	}
	// The ping, so that each resolution is one HEAD.
	if _, err := r.Resolve(context.Background(), Request{Image: images[0], TTL: time.Hour}); err != nil {
		t.Fatal(err)
	}
	time.Sleep(time.Second) // the budget refills
	start := time.Now()
	var wg sync.WaitGroup
	for _, img := range images {
		// The callers give up at the deadline; the resolutions go on.
		wg.Go(func() { _, _ = r.Resolve(context.Background(), Request{Image: img, FreshSince: start}) })
	}
	wg.Wait()
	// What each resolution ended with is in the cache: asked again for
	// this tick, every tag answers without a request.
	deadline := time.Now().Add(5 * time.Second)
	for _, img := range images {
		for {
			res, err := r.Resolve(context.Background(), Request{Image: img, FreshSince: start})
			if err == nil && res.Digest != "" {
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s, queued behind the budget: %v", img, err)
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	// The last waits 1.25 s, past the 800 ms deadline.
	if took := time.Since(start); took < time.Second {
		t.Errorf("6 resolutions at 4 per second with a burst of 1 took %s: the budget did not queue them", took)
	}
}

// A resolution still waiting for its turn in the budget when a caller's
// tick begins is that tick's answer: it is asked for after the tick. The
// caller joins it instead of sending a second request, and the answer
// counts as asked for when it was sent, so later callers of the tick reuse
// it. (Stamped when it began, the queued resolution was a tick too old, and
// a check after the tick sent the same HEAD again.)
func TestAResolutionQueuedThroughATickIsThatTicksAnswer(t *testing.T) {
	tr := newTestRegistry(t)
	r, err := New(Options{InsecureRegistries: []string{tr.host}, QPS: 2, Burst: 1, Timeout: 10 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"queued/a:v1", "queued/b:v1", "queued/c:v1"}
	for _, n := range names {
		tr.push(n)
	}
	if _, err := r.Resolve(context.Background(), Request{Image: tr.image("queued/warm:v1"), TTL: time.Hour}); err == nil {
		t.Fatal("a tag never pushed resolved")
	}
	time.Sleep(time.Second) // the budget refills
	tr.resetCounts()
	// Three at 2 per second with a burst of 1, c last: c waits about a
	// second.
	var wg sync.WaitGroup
	for _, n := range names {
		wg.Go(func() {
			if _, err := r.Resolve(context.Background(), Request{Image: tr.image(n), TTL: time.Hour}); err != nil {
				t.Error(err)
			}
		})
		time.Sleep(30 * time.Millisecond) // in this order
	}
	time.Sleep(150 * time.Millisecond)
	tick := time.Now()
	// No Interval: only the tick's own answers serve this caller.
	if _, err := r.Resolve(context.Background(), Request{Image: tr.image("queued/c:v1"), FreshSince: tick}); err != nil {
		t.Fatal(err)
	}
	wg.Wait()
	if _, err := r.Resolve(context.Background(), Request{Image: tr.image("queued/c:v1"), FreshSince: tick}); err != nil {
		t.Fatal(err)
	}
	if n := tr.count("HEAD manifests"); n != len(names) {
		t.Fatalf("%d HEADs for %d tags: the resolution queued through the tick was asked again", n, len(names))
	}
}
