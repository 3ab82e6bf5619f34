package registry

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// fetch asks the registry for call c; it runs once per key at a time (or
// twice, when a tick began while the first was in flight). Its deadline is
// the resolver's, not a caller's, so that a caller giving up early does not
// waste the request for the others. The answer counts as asked for when
// the request's turn in the host's budget came (c.started, stamped then):
// an answer asked for before a tick began (FreshSince) must not pass for
// that tick's, and one queued through the tick is that tick's.
func (r *Resolver) fetch(tag name.Tag, creds []credential, key string, c *call) (Result, error) {
	ctx, cancel := r.requestContext(tag.RegistryStr())
	defer cancel()
	r.mu.Lock()
	c.started, c.sent = r.clock.Now(), true
	started := c.started
	r.mu.Unlock()

	var digest string
	err := r.withCredentials(ctx, tag.Context(), creds, func(ctx context.Context, p conn) error {
		var err error
		digest, err = r.resolveDigest(ctx, tag, p.Puller)
		return err
	})
	now := r.clock.Now()

	r.mu.Lock()
	defer r.mu.Unlock()
	// Swept before this answer is stored: a new entry is not stamped yet,
	// and would be the first dropped.
	r.fetches++
	if r.fetches%sweepEvery == 0 || now.Sub(r.lastSweep) >= sweepInterval {
		r.sweepLocked(now)
	}
	e := r.cache[key]
	if e == nil {
		e = &entry{}
		r.cache[key] = e
		r.addKnownLocked(key, 1)
	}
	if started.Before(e.checkedAt) {
		// A resolution asked for later has answered already: it is at
		// least as fresh as this one, for these callers too.
		return r.resultOf(e), e.err
	}
	e.checkedAt = started
	if err != nil {
		e.err = explainFor(tagAsked(tag), err, r.opts.Timeout)
		return r.resultOf(e), e.err
	}
	e.digest, e.resolvedAt, e.err = digest, now, nil
	return r.resultOf(e), nil
}

// requestContext is the context of a request made for every caller that
// shares it, not a caller's (one giving up early does not waste it for
// the others): the request's turn in host's budget taken (it waits for
// it), and the resolver's timeout from then.
func (r *Resolver) requestContext(host string) (context.Context, context.CancelFunc) {
	base := context.Background()
	if pt, ok := r.transport.(*politeTransport); ok {
		base = pt.takeTurn(base, host)
	}
	return context.WithTimeout(base, r.opts.Timeout)
}

// attemptError is the failure of a request made with each credential in
// turn: the first refusal says most (the workload's own pull secret), the
// others are counted; notes say why a credential could not be had.
type attemptError struct {
	err     error
	refused int // credentials refused, anonymous included
	notes   []string
	secrets []string
}

func (e *attemptError) Error() string { return e.err.Error() }
func (e *attemptError) Unwrap() error { return e.err }

// explainFor explains a failure of withCredentials for a condition
// message, with no secret in it.
func explainFor(a asked, err error, timeout time.Duration) error {
	var ae *attemptError
	if !errors.As(err, &ae) {
		return explain(a, err, timeout)
	}
	out := explain(a, ae.err, timeout)
	var extra []string
	if ae.refused > 1 {
		extra = append(extra, fmt.Sprintf("%d credentials tried, anonymous access included, all refused", ae.refused))
	}
	extra = append(extra, ae.notes...)
	if len(extra) > 0 {
		out = &redactedError{msg: out.Error() + " (" + strings.Join(extra, "; ") + ")", err: out}
	}
	return redact(out, longestFirst(ae.secrets))
}

// withCredentials runs do with each credential in turn, and then
// anonymously, until one is not refused (401 or 403), as a kubelet pulls:
// a stale pull secret does not break a public image. A cloud token the
// registry refuses is refreshed and tried once more.
func (r *Resolver) withCredentials(ctx context.Context, repo name.Repository, creds []credential, do func(context.Context, conn) error) error {
	reg := repo.Registry
	tries := append(append([]credential{}, creds...), fixed(anonymousID, "anonymous access", authn.AuthConfig{}))
	fail := &attemptError{}
	for _, c := range tries {
		for attempt := 0; attempt < 2; attempt++ {
			cfg, err := c.get(ctx)
			if err != nil {
				fail.notes = append(fail.notes, fmt.Sprintf("%s: %s", c.name, oneLine(err.Error())))
				break
			}
			if empty(cfg) && c.id != anonymousID {
				if c.announce {
					fail.notes = append(fail.notes, c.name+" have none for this registry")
				}
				break
			}
			fail.secrets = append(fail.secrets, secretsOf(cfg)...)
			p, err := r.puller(reg, c.id, cfg)
			if err == nil {
				err = do(ctx, p)
			}
			if err == nil {
				return nil
			}
			if !authRefused(err) {
				if fail.err != nil {
					// Some registries answer a refused credential with 401
					// and anonymous access with 404: the refusal is the
					// news, what came next a detail.
					fail.notes = append(fail.notes, fmt.Sprintf("%s: %s", c.name, oneLine(describe(err))))
					return fail
				}
				if len(fail.secrets) == 0 {
					return err
				}
				return &attemptError{err: err, secrets: fail.secrets}
			}
			if fail.err == nil {
				fail.err = err
			}
			if c.forget == nil || attempt > 0 {
				fail.refused++
				break
			}
			c.forget() // a token that expired early: ask for a fresh one
		}
		if ctx.Err() != nil {
			break
		}
	}
	if fail.err == nil {
		fail.err = ctx.Err()
	}
	return fail
}

// resolveDigest HEADs the tag, and never GETs but when the registry does
// not answer HEAD properly.
func (r *Resolver) resolveDigest(ctx context.Context, tag name.Tag, p *remote.Puller) (string, error) {
	desc, err := p.Head(ctx, tag)
	if err != nil && headNotAnswered(err) {
		// The registry does not answer HEAD properly: GET the manifest
		// instead; its digest is computed from the body (and the body
		// checked against the digest header, if the GET has a valid one).
		r.metrics.ManifestGets.WithLabelValues(tag.RegistryStr(), "fallback").Inc()
		d, gerr := p.Get(ctx, tag)
		if gerr != nil {
			return "", &fallbackError{head: err, get: gerr}
		}
		desc, err = &d.Descriptor, nil
		if d.MediaType.IsIndex() && validDigest.MatchString(d.Digest.String()) {
			// The body is here already: its platforms cost nothing more.
			if idx, perr := v1.ParseIndexManifest(bytes.NewReader(d.Manifest)); perr == nil {
				children := make([]string, 0, len(idx.Manifests))
				for _, m := range idx.Manifests {
					children = append(children, m.Digest.String())
				}
				r.remember(d.Digest.String(), children)
			}
		}
	}
	if err != nil {
		return "", err
	}
	digest := desc.Digest.String()
	if !validDigest.MatchString(digest) {
		// Never handed on, so never written into a workload.
		return "", fmt.Errorf("registry %s gave %q for the tag, not a sha256 digest; not used", tag.RegistryStr(), digest)
	}
	// The HEAD says whether it is an index; its platforms are learnt only
	// when a caller needs them (LearnPlatforms: a GET, which Docker Hub
	// counts as a pull): the CLI and the webhook never do, the controller
	// when a pod runs a digest other than the one a spec or tag names.
	if desc.MediaType.IsIndex() {
		r.markIndex(digest) // (nothing, when its platforms are known)
	} else {
		r.remember(digest, nil) // a single manifest: no platforms, no request
	}
	return digest, nil
}

// conn is one credential's way into a registry: the Puller reads with
// it, and its Pusher writes (Keep).
type conn struct {
	*remote.Puller
	auth authn.Authenticator
	pe   *pullerEntry
}

// pusher is c's Pusher, made once per registry and credential and reused
// like the Puller, so that a push costs no ping and token of its own.
func (c conn) pusher(r *Resolver) (*remote.Pusher, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if c.pe.pusher != nil {
		return c.pe.pusher, nil
	}
	p, err := remote.NewPusher(r.remoteOptions(c.auth)...)
	if err != nil {
		return nil, err
	}
	c.pe.pusher = p
	return p, nil
}

// pullerEntry is a reused transport and the credential it authenticates
// with, updated on every use.
type pullerEntry struct {
	c      conn
	pusher *remote.Pusher // made when first needed (conn.pusher)
	auth   *liveAuth      // nil for anonymous
	used   time.Time
}

// puller returns the authenticated transport for one registry and
// credential identity, made once and reused, so that a resolution costs
// one request instead of a ping, a token and a HEAD. The credential's
// current value (a refreshed cloud token) is what it authenticates with.
func (r *Resolver) puller(reg name.Registry, id string, cfg authn.AuthConfig) (conn, error) {
	key := reg.Name() + "|" + id
	r.mu.Lock()
	defer r.mu.Unlock()
	if pe, ok := r.pullers[key]; ok {
		if pe.auth != nil {
			pe.auth.set(cfg)
		}
		pe.used = r.clock.Now()
		return pe.c, nil
	}
	pe := &pullerEntry{used: r.clock.Now()}
	auth := authn.Anonymous
	if !empty(cfg) {
		pe.auth = &liveAuth{cfg: cfg}
		auth = pe.auth
	}
	p, err := remote.NewPuller(r.remoteOptions(auth)...)
	if err != nil {
		return conn{}, err
	}
	pe.c = conn{Puller: p, auth: auth, pe: pe}
	r.pullers[key] = pe
	return pe.c, nil
}

// remoteOptions are how every request to a registry is made: through the
// resolver's transport (its budget and TLS rules), as auth.
func (r *Resolver) remoteOptions(auth authn.Authenticator) []remote.Option {
	return []remote.Option{
		remote.WithAuth(auth),
		remote.WithTransport(r.transport),
		remote.WithUserAgent(r.opts.UserAgent),
		// 429 is not retried here: the transport honours Retry-After.
		remote.WithRetryStatusCodes(http.StatusInternalServerError, http.StatusBadGateway, http.StatusServiceUnavailable, http.StatusGatewayTimeout),
		remote.WithRetryBackoff(remote.Backoff{Duration: 250 * time.Millisecond, Factor: 2, Jitter: 0.5, Steps: 3}),
	}
}

// sweepLocked drops idle cache entries and transports; r.mu is held. An
// entry whose digest may still be served stale is kept.
func (r *Resolver) sweepLocked(now time.Time) {
	r.lastSweep = now
	keep := max(idleAfter, r.opts.MaxStale)
	for k, e := range r.cache {
		if now.Sub(e.checkedAt) > keep {
			delete(r.cache, k)
			r.addKnownLocked(k, -1)
		}
	}
	r.sweepHintsLocked(now, keep)
	for k, e := range r.avail {
		// A verdict serves a whole retention interval: kept past the
		// longest one.
		if now.Sub(e.CheckedAt) > max(keep, availKeep) {
			delete(r.avail, k)
		}
	}
	for k, at := range r.availFailed {
		if now.Sub(at) > max(keep, availKeep) {
			delete(r.availFailed, k)
		}
	}
	for k, done := range r.kept {
		if now.Sub(done.at) > max(keep, availKeep) {
			delete(r.kept, k)
		}
	}
	for k, pe := range r.pullers {
		if now.Sub(pe.used) > pullerIdleAfter {
			delete(r.pullers, k)
		}
	}
	for d, f := range r.learnFailed {
		if now.Sub(f.at) > learnRetryAfter {
			delete(r.learnFailed, d)
		}
	}
}
