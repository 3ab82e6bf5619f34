package registry

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// Keep tags (spec.retention.protect): a registry's garbage collection
// deletes the manifests no tag points at, so a digest a backout needs is
// kept by a tag of its own, named after it. Only the tags a caller
// recorded as pushed by Keep are ever handed to Unkeep, and Unkeep deletes
// a tag only while it still points at the digest it was pushed for.

// ErrPushRefused is in the error of Keep or Unkeep when the registry
// refused every credential tried (401 or 403): they may read, not write.
var ErrPushRefused = errors.New("the registry refused to let these credentials push")

// ErrDeleteUnsupported is in the error of Unkeep when the registry does
// not delete tags through its API (Harbor, Docker Hub, the distribution
// registry without storage.delete.enabled): the tag is to be removed by
// the registry's own means.
var ErrDeleteUnsupported = errors.New("the registry does not delete tags through the registry API")

// KeepTagOf is the tag Keep points at digest: the prefix and the
// digest's first 12 hex digits.
func KeepTagOf(digest string) string {
	hex := strings.TrimPrefix(digest, "sha256:")
	return imagesv1alpha1.KeepTagPrefix + hex[:min(12, len(hex))]
}

// KeepRequest asks for one digest of an image to be kept in its
// repository, or let go.
type KeepRequest struct {
	// Image is the reference as workloads name it; the repository is what
	// counts.
	Image string
	// Digest is the sha256 digest to keep.
	Digest string
	// Keychain supplies the credentials, tried in turn (then anonymous
	// access), as for Resolve.
	Keychain authn.Keychain
	// FreshSince: a Keep that succeeded since then serves without a
	// request (the tag was there, or was pushed); RetrySince: a failure
	// since then is returned again without one. Zero asks.
	FreshSince, RetrySince time.Time
	// Owner names the caller (an ImagePin): Keep says created only to the
	// owner whose request pushed the tag.
	Owner string
}

// keepDone is what the last Keep or Unkeep of one tag with one list of
// credentials came to; done: a Keep pushed the tag (for by, the caller
// whose request it was: said to it again, so that a caller whose record
// of the push was lost learns it again, and to nobody else), an Unkeep
// deleted it.
type keepDone struct {
	at   time.Time
	err  error
	done bool
	by   string
}

// keepLocks serialises Keep and Unkeep of one tag (by repository and
// digest, whatever the credentials), striped: an Unkeep's decision that
// nobody needs a tag, and its DELETE, happen while no Keep of the tag runs.
type keepLocks [64]sync.Mutex

func (l *keepLocks) of(key string) *sync.Mutex {
	h := fnv.New32a()
	_, _ = h.Write([]byte(key))
	return &l[h.Sum32()%uint32(len(l))]
}

// Keep makes the repository of req.Image hold KeepTagOf(req.Digest),
// pointing at req.Digest: a HEAD of the tag, and only when it is missing a
// GET of the digest's manifest and a PUT of it under the tag (created). A
// tag of that name pointing at another digest is left as it is: an error
// says so. Concurrent calls for one tag and credentials share the
// requests.
func (r *Resolver) Keep(ctx context.Context, req KeepRequest) (created bool, err error) {
	ref, creds, err := r.digestTarget(ctx, "keep", req.Image, req.Digest, req.Keychain)
	if err != nil {
		return false, err
	}
	tag := ref.Context().Tag(KeepTagOf(req.Digest))
	key := "keep|" + digestKey(ref, creds)
	if done, ok := r.keepDoneSince(key, req); ok {
		return done.done && done.by == req.Owner, done.err
	}
	res, err := r.keepOnce(ctx, key, ref, req.Owner, func(ctx context.Context) (bool, error) {
		pushed := false
		err := r.withCredentials(ctx, ref.Context(), creds, func(ctx context.Context, p conn) error {
			desc, err := p.Head(ctx, tag)
			switch {
			case err == nil && desc.Digest.String() == req.Digest:
				return nil
			case err == nil:
				return fmt.Errorf("tag %s points at %s, not at %s: a tag imagepin did not push; left as it is", tag, desc.Digest, req.Digest)
			case !unknownManifest(err):
				return err
			}
			manifest, err := p.Get(ctx, ref)
			if err != nil {
				return err
			}
			pusher, err := p.pusher(r)
			if err != nil {
				return err
			}
			// Put, not Push: the manifest and its blobs are in the
			// repository already (it was just read from there), so only
			// the tag is written, with no existence checks first.
			if err := pusher.Put(ctx, tag, manifest); err != nil {
				return err
			}
			pushed = true
			return nil
		})
		return pushed, r.keepError("keep "+ref.String()+" as "+tag.TagStr(), ref, err)
	})
	return res.done && res.by == req.Owner, err
}

// Unkeep deletes KeepTagOf(req.Digest) from the repository of req.Image
// if it still points at req.Digest (deleted) and stillWanted (asked with
// no Keep of the tag running, nil: never) says nobody needs it. A tag
// already gone, or pointing elsewhere now (pushed over by someone else),
// is not deleted, and is no error: it is no longer imagepin's. A registry
// that does not delete tags gives ErrDeleteUnsupported.
func (r *Resolver) Unkeep(ctx context.Context, req KeepRequest, stillWanted func() bool) (deleted bool, err error) {
	ref, creds, err := r.digestTarget(ctx, "let go of", req.Image, req.Digest, req.Keychain)
	if err != nil {
		return false, err
	}
	tag := ref.Context().Tag(KeepTagOf(req.Digest))
	// Each caller's own run (its stillWanted is its own), one at a time
	// under the tag's lock.
	key := "unkeep|" + digestKey(ref, creds) + "|" + req.Owner
	if done, ok := r.keepDoneSince(key, KeepRequest{RetrySince: req.RetrySince}); ok {
		return false, done.err
	}
	res, err := r.keepOnce(ctx, key, ref, req.Owner, func(ctx context.Context) (bool, error) {
		// Before anyone's claim is asked about: a Keep of the tag from
		// now on asks the registry (and waits for this lock), instead of
		// taking an earlier answer for a tag about to go.
		r.forgetKept(ref)
		if stillWanted != nil && stillWanted() {
			return false, nil
		}
		deleted := false
		var refused error
		err := r.withCredentials(ctx, ref.Context(), creds, func(ctx context.Context, p conn) error {
			desc, err := p.Head(ctx, tag)
			switch {
			case err != nil && unknownManifest(err) && refused != nil:
				// A credential refused to delete it, and the next one
				// (anonymous access) cannot see it: still the refusal.
				return refused
			case err != nil && unknownManifest(err):
				return nil
			case err != nil:
				return err
			case desc.Digest.String() != req.Digest:
				return nil
			}
			pusher, err := p.pusher(r)
			if err != nil {
				return err
			}
			if err := pusher.Delete(ctx, tag); err != nil && !unknownManifest(err) {
				if deleteUnsupported(err) {
					return fmt.Errorf("%w: %w", ErrDeleteUnsupported, err)
				}
				if authRefused(err) && refused == nil {
					refused = err
				}
				return err
			}
			deleted = true
			return nil
		})
		return deleted, r.keepError("delete tag "+tag.String(), ref, err)
	})
	return res.done, err
}

// forgetKept drops every Keep answer about ref's tag, whatever the
// credentials: the next Keep asks the registry.
func (r *Resolver) forgetKept(ref name.Digest) {
	prefix := "keep|" + digestName(ref) + "|"
	r.mu.Lock()
	defer r.mu.Unlock()
	for k := range r.kept {
		if strings.HasPrefix(k, prefix) {
			delete(r.kept, k)
		}
	}
}

// deleteUnsupported says whether err is a registry refusing to delete a
// tag at all (not these credentials): 405, or 400 with UNSUPPORTED or
// DIGEST_INVALID (distribution 2.x takes the tag for a digest).
func deleteUnsupported(err error) bool {
	var te *transport.Error
	if !errors.As(err, &te) {
		return false
	}
	if te.StatusCode == http.StatusMethodNotAllowed {
		return true
	}
	for _, d := range te.Errors {
		if d.Code == transport.UnsupportedErrorCode || d.Code == transport.DigestInvalidErrorCode {
			return true
		}
	}
	return false
}

// keepDoneSince is the last outcome of key, if it serves req: a success
// since req.FreshSince, a failure since req.RetrySince.
func (r *Resolver) keepDoneSince(key string, req KeepRequest) (keepDone, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	done, ok := r.kept[key]
	switch {
	case !ok:
		return keepDone{}, false
	case done.err == nil:
		return done, !req.FreshSince.IsZero() && !done.at.Before(req.FreshSince)
	default:
		return done, !req.RetrySince.IsZero() && !done.at.Before(req.RetrySince)
	}
}

// keepOnce runs do once for all concurrent callers of key, holding the
// lock of ref's tag, in the budget of ref's registry and within the
// resolver's timeout, and remembers how it came out and for whom (owner,
// the caller whose request ran).
func (r *Resolver) keepOnce(ctx context.Context, key string, ref name.Digest, owner string, do func(context.Context) (bool, error)) (keepDone, error) {
	ch := r.keeping.DoChan(key, func() (any, error) {
		lock := r.keepLocks.of(digestName(ref))
		lock.Lock()
		defer lock.Unlock()
		fctx, cancel := r.requestContext(ref.RegistryStr())
		defer cancel()
		started := r.clock.Now()
		done, err := do(fctx)
		out := keepDone{at: started, err: err, done: done, by: owner}
		r.mu.Lock()
		r.kept[key] = out
		r.mu.Unlock()
		return out, nil
	})
	select {
	case res := <-ch:
		done := res.Val.(keepDone)
		return done, done.err
	case <-ctx.Done():
		return keepDone{}, ctx.Err()
	}
}

// keepError explains a failed Keep or Unkeep (nil: none), with no secret
// in it; a refusal of every credential wraps ErrPushRefused.
func (r *Resolver) keepError(what string, ref name.Digest, err error) error {
	if err == nil {
		return nil
	}
	explained := explainFor(asked{what: what, registry: ref.RegistryStr(), missing: "manifest " + ref.DigestStr() + " not found in " + ref.Context().Name()}, err, r.opts.Timeout)
	if authRefused(err) {
		return fmt.Errorf("%w: %w", ErrPushRefused, explained)
	}
	return explained
}
