package registry

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"

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
}

// keepDone is what the last Keep or Unkeep of one tag with one list of
// credentials came to.
type keepDone struct {
	at  time.Time
	err error
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
		return false, done.err
	}
	return r.keepOnce(ctx, key, ref.RegistryStr(), func(ctx context.Context) (bool, error) {
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
			pusher, err := remote.NewPusher(r.remoteOptions(p.auth)...)
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
}

// Unkeep deletes KeepTagOf(req.Digest) from the repository of req.Image
// if it still points at req.Digest (deleted). A tag already gone, or
// pointing elsewhere now (pushed over by someone else), is not deleted,
// and is no error: it is no longer imagepin's.
func (r *Resolver) Unkeep(ctx context.Context, req KeepRequest) (deleted bool, err error) {
	ref, creds, err := r.digestTarget(ctx, "let go of", req.Image, req.Digest, req.Keychain)
	if err != nil {
		return false, err
	}
	tag := ref.Context().Tag(KeepTagOf(req.Digest))
	key := "unkeep|" + digestKey(ref, creds)
	if done, ok := r.keepDoneSince(key, KeepRequest{RetrySince: req.RetrySince}); ok {
		return false, done.err
	}
	deleted, err = r.keepOnce(ctx, key, ref.RegistryStr(), func(ctx context.Context) (bool, error) {
		deleted := false
		err := r.withCredentials(ctx, ref.Context(), creds, func(ctx context.Context, p conn) error {
			desc, err := p.Head(ctx, tag)
			switch {
			case err != nil && unknownManifest(err):
				return nil
			case err != nil:
				return err
			case desc.Digest.String() != req.Digest:
				return nil
			}
			pusher, err := remote.NewPusher(r.remoteOptions(p.auth)...)
			if err != nil {
				return err
			}
			if err := pusher.Delete(ctx, tag); err != nil && !unknownManifest(err) {
				return err
			}
			deleted = true
			return nil
		})
		return deleted, r.keepError("delete tag "+tag.String(), ref, err)
	})
	if err == nil {
		// The tag is gone: a Keep of the digest pushes it again.
		r.mu.Lock()
		delete(r.kept, "keep|"+digestKey(ref, creds))
		r.mu.Unlock()
	}
	return deleted, err
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

// keepOnce runs do once for all concurrent callers of key, in the budget
// of host and within the resolver's timeout, and remembers how it came
// out.
func (r *Resolver) keepOnce(ctx context.Context, key, host string, do func(context.Context) (bool, error)) (bool, error) {
	ch := r.keeping.DoChan(key, func() (any, error) {
		started := r.clock.Now()
		base := context.Background()
		if pt, ok := r.transport.(*politeTransport); ok {
			base = pt.takeTurn(base, host)
		}
		fctx, cancel := context.WithTimeout(base, r.opts.Timeout)
		defer cancel()
		done, err := do(fctx)
		r.mu.Lock()
		r.kept[key] = keepDone{at: started, err: err}
		r.mu.Unlock()
		return done, err
	})
	select {
	case res := <-ch:
		if res.Err != nil {
			return false, res.Err
		}
		return res.Val.(bool), nil
	case <-ctx.Done():
		return false, ctx.Err()
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
