package controllers

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// heldRepository holds every request for one repository of the test
// registry until Release (or the request's own end), then serves it.
type heldRepository struct {
	// asked counts the requests, waiting those held now; arrived has a
	// value once one came.
	asked, waiting atomic.Int32
	arrived        chan struct{}
	release        chan struct{}
	once           sync.Once
}

// holdRepository holds repo's requests until Release or the test's end.
func holdRepository(t *testing.T, repo string) *heldRepository {
	t.Helper()
	h := &heldRepository{arrived: make(chan struct{}, 1), release: make(chan struct{})}
	remove := reg.Route(repo, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.asked.Add(1)
		h.waiting.Add(1)
		defer h.waiting.Add(-1)
		select {
		case h.arrived <- struct{}{}:
		default:
		}
		select {
		case <-h.release:
		case <-r.Context().Done():
			return
		}
		reg.Backend().ServeHTTP(w, r)
	}))
	t.Cleanup(func() {
		h.Release()
		remove()
	})
	return h
}

// Release serves the requests held, and every one after.
func (h *heldRepository) Release() { h.once.Do(func() { close(h.release) }) }

// Issue 19 item 5: a tag whose answer the registry holds back does not
// hold back the report of another tag that moved. On a tick, the check
// waits for this tick's answers only answerWithin; it reports the moved
// tag with the held one's last good answer, and when the held answer comes
// and differs, the ImagePin is checked again at once, not a tick later.
func TestAHeldTagDoesNotHoldBackAnotherTagsMove(t *testing.T) {
	ns := namespace(t)
	imageA, imageB := reg.Image("behind/a:v1"), reg.Image("behind/b:v1")
	a1, b1 := reg.Push(t, "behind/a:v1"), reg.Push(t, "behind/b:v1")
	create(t,
		deployment(ns, "a", withLabels("app", "pair"), withImage("app", imageA)),
		deployment(ns, "b", withLabels("app", "pair"), withImage("app", imageB)))
	pin := observePin(ns, "pair")
	create(t, pin)
	digests := func() (a, b string, err error) {
		got, err := checked(pin)
		if err != nil {
			return "", "", err
		}
		for _, img := range got.Status.Images {
			switch img.Image {
			case imageA:
				a = string(img.Digest)
			case imageB:
				b = string(img.Digest)
			}
		}
		return a, b, nil
	}
	eventually(t, func() error {
		a, b, err := digests()
		if err == nil && (a != a1 || b != b1) {
			err = fmt.Errorf("digests %s, %s; want %s, %s", a, b, a1, b1)
		}
		return err
	})

	// Both tags move; the registry then holds every request for b until
	// released (within the resolver's 3 s timeout).
	a2, b2 := reg.Push(t, "behind/a:v1"), reg.Push(t, "behind/b:v1")
	held := holdRepository(t, "behind/b")

	// The next tick: a's move is reported while b's request is held.
	eventually(t, func() error {
		a, b, err := digests()
		if err != nil {
			return err
		}
		if a != a2 {
			return fmt.Errorf("a reported as %s, want %s", a, a2)
		}
		if held.waiting.Load() == 0 {
			t.Fatalf("a's move (%s) was reported only once b's request had ended", a2)
		}
		if b != b1 {
			t.Fatalf("b reported as %s while its request is held, want its last answer %s", b, b1)
		}
		return nil
	})
	releasedAt := time.Now()
	held.Release()

	// b's answer comes and differs: checked again before the next tick.
	eventually(t, func() error {
		_, b, err := digests()
		if err == nil && b != b2 {
			err = fmt.Errorf("b reported as %s, want %s", b, b2)
		}
		return err
	})
	interval := pin.Spec.Interval.Duration
	if next := releasedAt.Truncate(interval).Add(interval); !time.Now().Before(next) {
		t.Errorf("b's move was reported at %s, not before the next tick at %s: the check that had gone on without it did not come back for it", time.Now().Format(time.RFC3339Nano), next.Format(time.RFC3339Nano))
	}
}
