package registry

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// Whether a registry still serves a digest: a rollback target in a tag's
// history, or what pods run, can be garbage collected once the tag moves
// on, and a pod that needs it next (a scale-up, a drain) fails to pull.
// Content never changes under a digest, so a digest seen present is asked
// about again only on a slow cadence (AvailabilityRequest.FreshSince: the
// tick of a long interval).

// availKeep is how long an availability verdict is kept unused: past the
// longest retention check interval the API allows (48h).
const availKeep = 49 * time.Hour

// AvailabilityRequest asks whether the registry still serves one digest
// of an image.
type AvailabilityRequest struct {
	// Image is the reference as workloads name it; its tag or digest, if
	// any, is ignored: the repository is what counts.
	Image string
	// Digest is the sha256 digest to look for.
	Digest string
	// Keychain supplies the credentials, as for Resolve.
	Keychain authn.Keychain
	// FreshSince: an answer asked for since then serves; zero takes any
	// answer there is.
	FreshSince time.Time
}

// Availability is what the registry said of a digest.
type Availability struct {
	// Available: the registry answered the digest's HEAD (true), or
	// answered that it does not know it (false: 404).
	Available bool
	// CheckedAt is when that answer was asked for.
	CheckedAt time.Time
}

// availEntry is an answer about one digest under one list of
// credentials: a verdict (cached), or an error (only handed to the
// callers that shared the request).
type availEntry struct {
	Availability
	err error
}

// Available asks the registry, with a HEAD of the digest's manifest, whether
// it still serves req.Digest in req.Image's repository. Every caller asking
// about the same digest with the same credentials for the same FreshSince
// shares one request, and an answer asked for since FreshSince is reused:
// N distinct digests cost at most N HEADs per FreshSince. The request takes
// its turn in the host's budget like a resolution. An error (refused
// credentials, an unreachable registry) says nothing either way.
func (r *Resolver) Available(ctx context.Context, req AvailabilityRequest) (Availability, error) {
	ref, creds, err := r.digestTarget(ctx, "check", req.Image, req.Digest, req.Keychain)
	if err != nil {
		return Availability{}, err
	}
	key := digestKey(ref, creds)
	r.mu.Lock()
	e, ok := r.avail[key]
	r.mu.Unlock()
	if ok && !e.CheckedAt.Before(req.FreshSince) {
		return e.Availability, e.err
	}
	// Callers for the same tick share one request; a later tick's do not
	// join an earlier one's.
	flight := key + "|" + strconv.FormatInt(req.FreshSince.UnixNano(), 10)
	ch := r.checking.DoChan(flight, func() (any, error) {
		fctx, cancel := r.requestContext(ref.RegistryStr())
		defer cancel()
		started := r.clock.Now()
		err := r.withCredentials(fctx, ref.Context(), creds, func(ctx context.Context, p conn) error {
			_, err := p.Head(ctx, ref)
			return err
		})
		e := &availEntry{Availability: Availability{Available: err == nil, CheckedAt: started}}
		if err != nil && !unknownManifest(err) {
			e.err = explainFor(asked{what: "check " + ref.String(), registry: ref.RegistryStr(), missing: "not found"}, err, r.opts.Timeout)
		}
		if e.err != nil {
			// No verdict: the callers of this flight are told why, and an
			// earlier verdict stays. When it failed is remembered for
			// CachedAvailability.
			r.mu.Lock()
			r.availFailed[key] = started
			r.mu.Unlock()
			return e, nil
		}
		r.mu.Lock()
		if old, ok := r.avail[key]; !ok || !started.Before(old.CheckedAt) {
			r.avail[key] = e
		}
		r.mu.Unlock()
		return e, nil
	})
	select {
	case res := <-ch:
		e := res.Val.(*availEntry)
		return e.Availability, e.err
	case <-ctx.Done():
		return Availability{}, fmt.Errorf("check %s: %w", ref, ctx.Err())
	}
}

// unknownManifest says whether err is the registry saying it has no such
// manifest (or no such repository): 404.
func unknownManifest(err error) bool {
	var te *transport.Error
	return errors.As(err, &te) && te.StatusCode == http.StatusNotFound
}

// KnownGone reports whether an answer already had (by Available, with the
// same credentials) says the registry no longer serves digest in image's
// repository. It asks the registry nothing: for admission, which answers
// from what the controller's checks learnt.
func (r *Resolver) KnownGone(ctx context.Context, image, digest string, kc authn.Keychain) bool {
	v, _, ok := r.CachedAvailability(ctx, AvailabilityRequest{Image: image, Digest: digest, Keychain: kc})
	return ok && !v.Available
}

// CachedAvailability is what Available would start from, without asking:
// the last verdict had about req.Digest with req.Keychain's credentials
// (ok), and when asking last failed (zero: it has not), so that a caller
// asks a registry that fails once per FreshSince, not on every check
// (Due). req.FreshSince is not used.
func (r *Resolver) CachedAvailability(ctx context.Context, req AvailabilityRequest) (v Availability, failedAt time.Time, ok bool) {
	ref, creds, err := r.digestTarget(ctx, "check", req.Image, req.Digest, req.Keychain)
	if err != nil {
		// Nothing to ask: the request would fail the same way.
		return Availability{}, time.Time{}, false
	}
	key := digestKey(ref, creds)
	r.mu.Lock()
	defer r.mu.Unlock()
	if e, ok := r.avail[key]; ok {
		return e.Availability, r.availFailed[key], true
	}
	return Availability{}, r.availFailed[key], false
}

// Due says whether a digest with verdict v (ok: there is one) whose last
// ask failed at failedAt is to be asked about again for an answer fresh
// since since: neither a verdict nor a failure is that recent.
func Due(v Availability, failedAt time.Time, ok bool, since time.Time) bool {
	return (!ok || v.CheckedAt.Before(since)) && failedAt.Before(since)
}
