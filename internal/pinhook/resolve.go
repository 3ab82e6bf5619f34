package pinhook

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"

	"github.com/imagepin/imagepin/internal/registry"
)

// maxConcurrentResolutions bounds the resolutions one request runs at a
// time; a pod spec rarely names more distinct images.
const maxConcurrentResolutions = 8

// resolution is the answer for one tag.
type resolution struct {
	digest string
	err    error
}

// resolveAll resolves the distinct refs concurrently, each bounded by
// ctx's deadline (the request's budget), so that the request's answer
// waits for the slowest tag, not for their sum.
func (h *Handler) resolveAll(ctx context.Context, refs []string, kc authn.Keychain, ttl, budget time.Duration) map[string]resolution {
	seen := make(map[string]bool, len(refs))
	distinct := make([]string, 0, len(refs))
	for _, ref := range refs {
		if !seen[ref] {
			seen[ref] = true
			distinct = append(distinct, ref)
		}
	}
	out := make(map[string]resolution, len(distinct))
	var mu sync.Mutex
	var wg sync.WaitGroup
	slots := make(chan struct{}, maxConcurrentResolutions)
	for _, ref := range distinct {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var r resolution
			select {
			case slots <- struct{}{}:
				r = h.resolveOne(ctx, ref, kc, ttl, budget)
				<-slots
			case <-ctx.Done():
				r.err = noAnswer(ref, budget, ctx.Err())
			}
			mu.Lock()
			out[ref] = r
			mu.Unlock()
		}()
	}
	wg.Wait()
	return out
}

func (h *Handler) resolveOne(ctx context.Context, ref string, kc authn.Keychain, ttl, budget time.Duration) resolution {
	if ctx.Err() != nil {
		return resolution{err: noAnswer(ref, budget, ctx.Err())}
	}
	// ctx carries the request's budget: the caller's wait ends with it,
	// and the resolver says so with ctx's error.
	res, err := h.Resolver.Resolve(ctx, registry.Request{Image: ref, Keychain: kc, TTL: ttl})
	if err != nil {
		if ctx.Err() != nil || errors.Is(err, context.DeadlineExceeded) {
			return resolution{err: noAnswer(ref, budget, err)}
		}
		return resolution{err: fmt.Errorf("%s: %w", ref, err)}
	}
	return resolution{digest: res.Digest}
}

// noAnswer says that ref was not resolved inside the request's budget.
func noAnswer(ref string, budget time.Duration, err error) error {
	return fmt.Errorf("%s: not resolved within the webhook's budget of %s for the whole request: %w", ref, budget, err)
}
