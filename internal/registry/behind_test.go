package registry

import (
	"context"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
)

// Issue 19 item 5: a caller that holds an earlier good answer waits for a
// fresh one only until its AnswerBy. Past it, Resolve returns the last
// good answer marked Behind, the resolution goes on, Pending is closed when
// it ends, and the next Resolve answers from it without another request.
func TestAnswerByGivesTheLastGoodAnswerWhileTheFreshOneIsQueued(t *testing.T) {
	f := newFixture(t)
	image := f.reg.image("behind/app:v1")
	first := f.reg.push("behind/app:v1")
	if got := f.mustResolve(t, image, time.Minute); got.Digest != first {
		t.Fatalf("first answer %s, want %s", got.Digest, first)
	}
	second := f.reg.push("behind/app:v1")

	release := make(chan struct{})
	held := make(chan struct{}, 1)
	f.reg.setIntercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/behind/app/manifests/") {
			select {
			case held <- struct{}{}:
			default:
			}
			<-release // then served as usual
		}
		return false
	})
	f.clock.Step(2 * time.Minute)
	req := Request{Image: image, FreshSince: f.clock.Now(), AnswerBy: time.Now().Add(200 * time.Millisecond)}
	got, err := f.resolver.Resolve(context.Background(), req)
	if err != nil {
		t.Fatal(err)
	}
	if !got.Behind || got.Digest != first || got.Pending == nil {
		t.Fatalf("while the registry holds the request: %+v, want the last good answer %s, Behind, with Pending", got, first)
	}
	select {
	case <-held:
	default:
		t.Fatal("the fresh resolution was not under way")
	}
	select {
	case <-got.Pending:
		t.Fatal("Pending closed while the request is held")
	default:
	}
	if n := testutil.ToFloat64(f.metrics.CacheResults.WithLabelValues(resultBehind)); n != 1 {
		t.Errorf("behind answers counted %v, want 1", n)
	}

	close(release)
	select {
	case <-got.Pending:
	case <-time.After(10 * time.Second):
		t.Fatal("Pending not closed after the registry answered")
	}
	before := f.reg.count("HEAD manifests")
	req.AnswerBy = time.Time{}
	fresh, err := f.resolver.Resolve(context.Background(), req)
	if err != nil || fresh.Digest != second || fresh.Behind {
		t.Fatalf("after Pending: %+v, %v; want %s, not behind", fresh, err, second)
	}
	if n := f.reg.count("HEAD manifests") - before; n != 0 {
		t.Errorf("the answer after Pending sent %d HEADs, want 0 (from the resolution that ended)", n)
	}

	// Without an earlier answer there is nothing to give: the caller waits.
	other := f.reg.image("behind/new:v1")
	want := f.reg.push("behind/new:v1")
	res, err := f.resolver.Resolve(context.Background(), Request{Image: other, FreshSince: f.clock.Now(), AnswerBy: time.Now().Add(-time.Second)})
	if err != nil || res.Behind || res.Digest != want {
		t.Errorf("a first resolution past AnswerBy: %+v, %v; want it waited for %s", res, err, want)
	}
}

// The last good answer is not given once a push event said the tag moved
// after it was asked for: the caller waits for the fresh one.
func TestAnswerByWaitsAfterAHint(t *testing.T) {
	f := newFixture(t)
	image := f.reg.image("behind/hinted:v1")
	f.reg.push("behind/hinted:v1")
	f.mustResolve(t, image, time.Minute)
	second := f.reg.push("behind/hinted:v1")
	release := make(chan struct{})
	f.reg.setIntercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method == http.MethodHead && strings.Contains(r.URL.Path, "/behind/hinted/manifests/") {
			<-release
		}
		return false
	})
	tag, err := TagRefOf(image)
	if err != nil {
		t.Fatal(err)
	}
	f.clock.Step(time.Second)
	f.resolver.Hint(tag)
	f.clock.Step(time.Second)
	time.AfterFunc(500*time.Millisecond, func() { close(release) })
	got, err := f.resolver.Resolve(context.Background(), Request{Image: image, FreshSince: f.clock.Now(), AnswerBy: time.Now().Add(50 * time.Millisecond)})
	if err != nil || got.Behind || got.Digest != second {
		t.Fatalf("after a hint: %+v, %v; want the fresh answer %s, waited for", got, err, second)
	}
}
