// Package registrytest runs go-containerregistry's in-process registry
// behind httptest for the tests of other packages: push images and indexes,
// count manifest requests, take the registry down and bring it back, and
// route one repository's requests through a handler of the test's (a
// faulttest.Injector in front of Backend, say).
package registrytest

import (
	"io"
	"log"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
	ggcrregistry "github.com/google/go-containerregistry/pkg/registry"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// Registry is a running in-process registry.
type Registry struct {
	// Host is "127.0.0.1:<port>", plain HTTP: pass it to the resolver as an
	// insecure registry.
	Host string

	srv     *httptest.Server
	backend http.Handler
	down    atomic.Bool

	mu       sync.Mutex
	heads    int
	gets     int
	requests int
	routes   map[string]http.Handler // "/v2/<repo>/" → handler
}

// New starts a registry; Close stops it.
func New() *Registry {
	r := &Registry{routes: map[string]http.Handler{}}
	inner := ggcrregistry.New(ggcrregistry.Logger(log.New(io.Discard, "", 0)))
	r.backend = http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		if r.down.Load() {
			http.Error(w, "registry is down for the test", http.StatusServiceUnavailable)
			return
		}
		if strings.Contains(req.URL.Path, "/manifests/") {
			r.mu.Lock()
			switch req.Method {
			case http.MethodHead:
				r.heads++
			case http.MethodGet:
				r.gets++
			}
			r.mu.Unlock()
		}
		inner.ServeHTTP(w, req)
	})
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.requests++
		var route http.Handler
		for prefix, h := range r.routes {
			if strings.HasPrefix(req.URL.Path, prefix) {
				route = h
			}
		}
		r.mu.Unlock()
		if route != nil {
			route.ServeHTTP(w, req)
			return
		}
		r.backend.ServeHTTP(w, req)
	}))
	r.Host = strings.TrimPrefix(r.srv.URL, "http://")
	return r
}

// Backend is the registry itself (counting, and down when SetDown says),
// for a handler given to Route to forward to.
func (r *Registry) Backend() http.Handler { return r.backend }

// Route sends every request for repo (under /v2/<repo>/) to h instead of
// the registry, until remove is called; the registry's other repositories
// are untouched.
func (r *Registry) Route(repo string, h http.Handler) (remove func()) {
	prefix := "/v2/" + strings.Trim(repo, "/") + "/"
	r.mu.Lock()
	r.routes[prefix] = h
	r.mu.Unlock()
	return func() {
		r.mu.Lock()
		delete(r.routes, prefix)
		r.mu.Unlock()
	}
}

// Close stops the registry.
func (r *Registry) Close() { r.srv.Close() }

// SetDown makes every request fail with 503 (true) or be served (false).
func (r *Registry) SetDown(down bool) { r.down.Store(down) }

// ManifestRequests returns the HEADs and GETs of manifests so far.
func (r *Registry) ManifestRequests() (heads, gets int) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.heads, r.gets
}

// Requests returns every request so far, of any kind: pings, manifests,
// blobs, tags.
func (r *Registry) Requests() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.requests
}

// Image returns the full reference of repoTag in this registry.
func (r *Registry) Image(repoTag string) string { return r.Host + "/" + repoTag }

// Push writes a new random image under repoTag and returns its digest.
func (r *Registry) Push(t testing.TB, repoTag string) string {
	t.Helper()
	img, err := random.Image(256, 1)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Write(r.tag(t, repoTag), img); err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	return d.String()
}

// Delete deletes the manifest digest from repo, as a registry's garbage
// collection of an untagged manifest does.
func (r *Registry) Delete(t testing.TB, repo, digest string) {
	t.Helper()
	ref, err := name.NewDigest(r.Host+"/"+repo+"@"+digest, name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Delete(ref); err != nil {
		t.Fatal(err)
	}
}

// PushIndex writes a new two-platform index under repoTag and returns its
// digest and its platform manifests' digests.
func (r *Registry) PushIndex(t testing.TB, repoTag string) (string, []string) {
	t.Helper()
	idx, err := random.Index(128, 1, 2)
	if err != nil {
		t.Fatal(err)
	}
	idx = mutate.IndexMediaType(idx, types.OCIImageIndex)
	if err := remote.WriteIndex(r.tag(t, repoTag), idx); err != nil {
		t.Fatal(err)
	}
	d, _ := idx.Digest()
	m, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	children := make([]string, 0, len(m.Manifests))
	for _, c := range m.Manifests {
		children = append(children, c.Digest.String())
	}
	return d.String(), children
}

func (r *Registry) tag(t testing.TB, repoTag string) name.Tag {
	t.Helper()
	ref, err := name.NewTag(r.Image(repoTag), name.Insecure)
	if err != nil {
		t.Fatal(err)
	}
	return ref
}

// Tag points repo:tag at an image already in repo, by digest: a re-push of
// identical content, or a tag flipped back.
func (r *Registry) Tag(t testing.TB, repoTag, digest string) {
	t.Helper()
	tag := r.tag(t, repoTag)
	desc, err := remote.Get(tag.Context().Digest(digest))
	if err != nil {
		t.Fatal(err)
	}
	if err := remote.Tag(tag, desc); err != nil {
		t.Fatal(err)
	}
}
