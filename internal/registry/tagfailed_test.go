package registry

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"
)

// TagFailed tells a failure of the tag or its credential (the cold
// round's plan goes on asking the registry) from one of the registry
// itself (the plan asks it no more), on what Resolve returns.
func TestTagFailedTellsATagsFailureFromItsRegistrys(t *testing.T) {
	tr := newTestRegistry(t)
	tr.push("tagfailed/present:v1")
	tr.setIntercept(func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case strings.Contains(r.URL.Path, "/refused/"):
			w.WriteHeader(http.StatusForbidden)
		case strings.Contains(r.URL.Path, "/broken/"):
			w.WriteHeader(http.StatusInternalServerError)
		case strings.Contains(r.URL.Path, "/slow/"):
			<-r.Context().Done()
		default:
			return false
		}
		return true
	})
	r, err := New(Options{InsecureRegistries: []string{tr.host}, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		image string
		tags  bool
	}{
		{"tagfailed/absent:v1", true},   // 404, MANIFEST_UNKNOWN
		{"tagfailed/refused:v1", true},  // 403: this credential's
		{"tagfailed/broken:v1", false},  // 500: the registry's
		{"tagfailed/slow:v1", false},    // no answer in time
		{"tagfailed/present:v1", false}, // no failure at all
	} {
		_, err := r.Resolve(context.Background(), Request{Image: tr.image(c.image)})
		if (err == nil) != (c.image == "tagfailed/present:v1") {
			t.Fatalf("%s: error %v", c.image, err)
		}
		if got := TagFailed(err); got != c.tags {
			t.Errorf("%s: TagFailed(%v) = %v, want %v", c.image, err, got, c.tags)
		}
	}

	// A caller that stops waiting is told so (StillWaiting): the
	// resolution goes on, and a caller after it joins it and is given its
	// end, the registry's own failure.
	tr.resetCounts()
	req := Request{Image: tr.image("tagfailed/slow:v2"), FreshSince: time.Now()}
	short := req
	short.Timeout = 100 * time.Millisecond
	_, err = r.Resolve(context.Background(), short)
	if !StillWaiting(err) || TagFailed(err) {
		t.Fatalf("a caller's own timeout: %v (StillWaiting %v), want a WaitError", err, StillWaiting(err))
	}
	// Joined half-way through the resolution's deadline (1 s from its
	// turn): its end comes well before this caller's own timeout.
	time.Sleep(400 * time.Millisecond)
	_, err = r.Resolve(context.Background(), req)
	if err == nil || StillWaiting(err) || TagFailed(err) {
		t.Fatalf("the resolution's end: %v, want the registry's failure to answer in time", err)
	}
	if n := tr.count("HEAD manifests"); n != 1 {
		t.Errorf("%d HEADs for the two callers, want 1: the second joins the first's resolution", n)
	}
}
