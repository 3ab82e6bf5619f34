package registry

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// maxPlatformEntries bounds the cache of index children; a digest's
// children never change, so entries are dropped only to bound memory.
const maxPlatformEntries = 10000

// learnRetryAfter is how long LearnPlatforms remembers that it could not
// read a digest, so that a reconcile loop does not ask on every pass.
const learnRetryAfter = 10 * time.Minute

type learnFailure struct {
	at  time.Time
	err error
}

// Platforms returns the platform manifest digests of an index the resolver
// has seen, or nothing for any other digest. It sends no request.
func (r *Resolver) Platforms(digest string) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.platforms[digest]
}

// digestTarget is what a request about digest in image's repository
// needs: the digest's reference, checked against the allowed registries,
// and the credentials to try. what names the request in its errors.
func (r *Resolver) digestTarget(ctx context.Context, what, image, digest string, kc authn.Keychain) (name.Digest, []credential, error) {
	if !validDigest.MatchString(digest) {
		return name.Digest{}, nil, fmt.Errorf("%s %q: not a sha256 digest", what, digest)
	}
	tag, err := r.parseTag(image)
	if err != nil {
		return name.Digest{}, nil, err
	}
	ref := tag.Context().Digest(digest)
	if err := r.allowed.check(ref.RegistryStr()); err != nil {
		return name.Digest{}, nil, fmt.Errorf("%s %s: %w", what, ref, err)
	}
	creds, err := credentialsOf(ctx, kc, ref.Context())
	if err != nil {
		return name.Digest{}, nil, fmt.Errorf("credentials for %s: %w", ref.RegistryStr(), err)
	}
	return ref, creds, nil
}

// LearnPlatforms reads the platform manifests of digest, a manifest of
// image's repository that no tag resolution showed the resolver — a digest
// pinned in a spec, an override's, a tag's earlier index — and returns
// them; Platforms knows them from then on. A digest's content never
// changes, so each digest is read once, ever: a HEAD, and a GET only when
// it is an index (a single-platform manifest has no platforms, and is
// remembered so). Credentials are tried as Resolve tries them; concurrent
// calls for one digest and credentials share the requests; a failure is
// returned again, without a request, for 10 minutes. The tag of image, if any, is ignored.
func (r *Resolver) LearnPlatforms(ctx context.Context, image, digest string, kc authn.Keychain) ([]string, error) {
	r.mu.Lock()
	children, known := r.platforms[digest]
	r.mu.Unlock()
	if known {
		return children, nil
	}
	ref, creds, err := r.digestTarget(ctx, "learn platforms of", image, digest, kc)
	if err != nil {
		return nil, err
	}
	// A failure under one list of credentials says nothing of another's.
	key := digestKey(ref, creds)
	r.mu.Lock()
	failed, hasFailed := r.learnFailed[key]
	r.mu.Unlock()
	if hasFailed && r.clock.Since(failed.at) < learnRetryAfter {
		return nil, failed.err
	}
	ch := r.learning.DoChan(key, func() (any, error) {
		fctx, cancel := context.WithTimeout(context.Background(), r.opts.Timeout)
		defer cancel()
		err := r.withCredentials(fctx, ref.Context(), creds, func(ctx context.Context, p conn) error {
			if r.KnownIndex(digest) {
				// A tag's HEAD said so: the GET alone.
				return r.learnPlatforms(ctx, p.Puller, ref)
			}
			desc, err := p.Head(ctx, ref)
			switch {
			case err == nil && !desc.MediaType.IsIndex():
				r.remember(digest, nil)
				return nil
			case err != nil && !headNotAnswered(err):
				return err
			}
			// An index, or a registry that does not answer HEAD
			// properly: the GET says which.
			return r.learnPlatforms(ctx, p.Puller, ref)
		})
		if err != nil {
			err = explainFor(asked{what: "learn platforms of " + ref.String(), registry: ref.RegistryStr(),
				missing: "manifest " + digest + " not found in " + ref.Context().Name()}, err, r.opts.Timeout)
			r.mu.Lock()
			r.learnFailed[key] = learnFailure{at: r.clock.Now(), err: err}
			r.mu.Unlock()
			return nil, err
		}
		return r.Platforms(digest), nil
	})
	select {
	case out := <-ch:
		children, _ := out.Val.([]string)
		return children, out.Err
	case <-ctx.Done():
		return nil, fmt.Errorf("learn platforms of %s: %w", ref, ctx.Err())
	}
}

// learnPlatforms GETs a manifest by digest (the body is verified against
// it) and remembers its children for good: a digest's content never
// changes. A manifest that is not an index has none.
func (r *Resolver) learnPlatforms(ctx context.Context, p *remote.Puller, ref name.Digest) error {
	r.metrics.ManifestGets.WithLabelValues(ref.RegistryStr(), "index").Inc()
	d, err := p.Get(ctx, ref)
	if err != nil {
		return fmt.Errorf("read index %s: %w", ref.DigestStr(), err)
	}
	if !d.MediaType.IsIndex() {
		r.remember(ref.DigestStr(), nil)
		return nil
	}
	idx, err := v1.ParseIndexManifest(strings.NewReader(string(d.Manifest)))
	if err != nil {
		return fmt.Errorf("parse index %s: %w", ref.DigestStr(), err)
	}
	children := make([]string, 0, len(idx.Manifests))
	for _, m := range idx.Manifests {
		children = append(children, m.Digest.String())
	}
	r.remember(ref.DigestStr(), children)
	return nil
}

// markIndex remembers that digest is an index whose platforms are not
// read yet.
func (r *Resolver) markIndex(digest string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if _, known := r.platforms[digest]; known {
		return
	}
	if len(r.indexes) >= maxPlatformEntries {
		clear(r.indexes) // refilled by the next resolutions
	}
	r.indexes[digest] = true
}

// KnownIndex says whether digest is a multi-arch index as far as the
// resolver knows, without a request: a tag's HEAD said so, or its
// platforms were read. Two indexes are never one another's platform.
func (r *Resolver) KnownIndex(digest string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.indexes[digest] || len(r.platforms[digest]) > 0
}

// remember keeps an index's children (nil for a single manifest).
func (r *Resolver) remember(digest string, children []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.platforms) >= maxPlatformEntries {
		for k := range r.platforms { // drop an arbitrary entry; it is refetched if needed
			delete(r.platforms, k)
			break
		}
	}
	r.platforms[digest] = children
	delete(r.indexes, digest)
}
