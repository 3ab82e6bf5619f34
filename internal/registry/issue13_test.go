package registry

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// Issue 13 item 9: go-containerregistry falls back to plain HTTP for
// private (RFC 1918) and loopback addresses and *.localhost; imagepin does so only for
// registries named in --insecure-registry, and says so when it refuses.
func TestPlainHTTPOnlyToRegistriesNamedInsecure(t *testing.T) {
	reg := newTestRegistry(t) // plain HTTP
	want := reg.push("team/app:v1")
	_, port, _ := strings.Cut(reg.host, ":")
	private := "10.1.2.3:" + port // reached through dialTo

	for _, host := range []string{private, "registry.imagepin-test.localhost:" + port, reg.host} {
		r, err := New(Options{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		dialTo(r, reg.host)
		_, err = r.Resolve(context.Background(), Request{Image: host + "/team/app:v1", TTL: time.Minute})
		wantMsg := "registry " + host + " answered only over plain HTTP, or not at all; imagepin refuses plain HTTP unless the registry is named in --insecure-registry"
		if err == nil || !strings.Contains(err.Error(), wantMsg) {
			t.Errorf("%s without --insecure-registry: want %q, got %v", host, wantMsg, err)
		}
	}
	if n := reg.count("GET ping") + reg.count("HEAD manifests"); n != 0 {
		t.Fatalf("%d plain HTTP requests reached the registry without --insecure-registry", n)
	}

	r, err := New(Options{Timeout: 5 * time.Second, InsecureRegistries: []string{private}})
	if err != nil {
		t.Fatal(err)
	}
	dialTo(r, reg.host)
	res, err := r.Resolve(context.Background(), Request{Image: private + "/team/app:v1", TTL: time.Minute})
	if err != nil || res.Digest != want {
		t.Fatalf("with --insecure-registry %s: digest %s, error %v; want %s", private, res.Digest, err, want)
	}
}

// Issue 13 item 10c: a caller whose tick began after a resolution in
// flight was asked for does not join it: it gets an answer asked for in
// its own tick, and callers of the earlier tick still share the first.
func TestAJoinNeverCrossesATick(t *testing.T) {
	f := newFixture(t)
	before := f.reg.push("team/app:v1")
	var heads atomic.Int32
	firstArrived, release := make(chan struct{}), make(chan struct{})
	f.reg.setIntercept(func(_ http.ResponseWriter, r *http.Request) bool {
		if r.Method != http.MethodHead || !strings.HasPrefix(r.UserAgent(), "imagepin") {
			return false // the test's own pushes
		}
		if heads.Add(1) == 1 {
			close(firstArrived)
			<-release // the first HEAD hangs until the test lets it go
		}
		return false
	})
	defer func() {
		select {
		case <-release:
		default:
			close(release)
		}
	}()
	image := f.reg.image("team/app:v1")
	resolve := func(since time.Time) <-chan Result {
		out := make(chan Result, 1)
		go func() {
			res, err := f.resolver.Resolve(context.Background(), Request{Image: image, FreshSince: since})
			if err != nil {
				t.Error(err)
			}
			out <- res
		}()
		return out
	}
	tick1 := f.clock.Now()
	first := resolve(tick1)
	<-firstArrived

	f.clock.Step(30 * time.Second)
	tick2 := f.clock.Now()
	after := f.reg.push("team/app:v1") // the tag moves just after the tick
	next := resolve(tick2)
	var got Result
	select {
	case got = <-next:
	case <-time.After(10 * time.Second):
		// It joined the pre-tick resolution: let that finish, and fail
		// on what it hands back.
		close(release)
		got = <-next
	}
	if got.Digest != after {
		t.Fatalf("a caller of the tick at %s got %s, want %s, asked for in its tick (the pre-tick answer is %s)", tick2.Format(time.TimeOnly), got.Digest, after, before)
	}

	same := resolve(tick1) // the earlier tick may share anything since
	select {
	case <-release:
	default:
		close(release)
	}
	if res := <-first; res.Digest != before && res.Digest != after {
		t.Errorf("first caller got %s", res.Digest)
	}
	<-same
	if n := heads.Load(); n != 2 {
		t.Errorf("HEADs = %d, want 2: one per tick", n)
	}
	// The later answer stays in the cache: the earlier one, finishing
	// last, does not overwrite it.
	res, err := f.resolver.Resolve(context.Background(), Request{Image: image, FreshSince: tick2})
	if err != nil || res.Digest != after {
		t.Fatalf("cached after both: digest %s, error %v; want %s", res.Digest, err, after)
	}
}

// Issue 13 item 10a: the platforms of an index no tag points to any more
// (a pinned or overridden digest, a rollback) are learned on request,
// once ever; a single-platform digest is remembered as having none.
func TestLearnPlatformsOfADigestNoTagShows(t *testing.T) {
	f := newFixture(t)
	image := f.reg.image("team/multi:v1")
	old, oldChildren := f.reg.pushIndex("team/multi:v1")
	newer, _ := f.reg.pushIndex("team/multi:v1")
	if got := f.mustResolve(t, image, time.Minute).Digest; got != newer {
		t.Fatalf("digest = %s, want %s", got, newer)
	}
	if p := f.resolver.Platforms(old); p != nil {
		t.Fatalf("platforms of the old index known before learning: %v", p)
	}
	f.reg.resetCounts()

	for range 3 {
		got, err := f.resolver.LearnPlatforms(context.Background(), image, old, nil)
		if err != nil || fmt.Sprint(got) != fmt.Sprint(oldChildren) {
			t.Fatalf("LearnPlatforms = %v, %v; want %v", got, err, oldChildren)
		}
	}
	if got := f.resolver.Platforms(old); fmt.Sprint(got) != fmt.Sprint(oldChildren) {
		t.Fatalf("Platforms after learning = %v, want %v", got, oldChildren)
	}
	if h, g := f.reg.count("HEAD manifests"), f.reg.count("GET manifests"); h != 1 || g != 1 {
		t.Errorf("requests to learn an index three times: %d HEAD, %d GET; want 1 and 1", h, g)
	}

	single := f.reg.push("team/single:v1")
	f.reg.resetCounts()
	for range 3 {
		got, err := f.resolver.LearnPlatforms(context.Background(), f.reg.image("team/single:v1"), single, nil)
		if err != nil || len(got) != 0 {
			t.Fatalf("LearnPlatforms of a single manifest = %v, %v; want none", got, err)
		}
	}
	if h, g := f.reg.count("HEAD manifests"), f.reg.count("GET manifests"); h != 1 || g != 0 {
		t.Errorf("requests for a single manifest three times: %d HEAD, %d GET; want 1 and 0", h, g)
	}
}
