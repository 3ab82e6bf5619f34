package main

import (
	"context"
	"fmt"
	"net/http"
	"sync"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/random"
	"github.com/google/go-containerregistry/pkg/v1/remote"

	"github.com/imagepin/imagepin/internal/testenv"
)

// pusher writes images straight to the registry, not through the counting
// proxy: pushes are the benchmark's doing, not imagepin's.
type pusher struct {
	reg       *testenv.Registry
	transport http.RoundTripper

	mu   sync.Mutex
	last map[string]v1.Image // by repo:tag, what was last pushed
}

func newPusher(reg *testenv.Registry) *pusher {
	return &pusher{reg: reg, transport: reg.Transport(), last: map[string]v1.Image{}}
}

// push writes a new random single-platform image under repoTag
// ("bench/app0:v1") and returns its digest.
func (p *pusher) push(ctx context.Context, repoTag string) (string, error) {
	img, err := random.Image(256, 1)
	if err != nil {
		return "", err
	}
	return p.write(ctx, repoTag, img)
}

// pushAgain writes the image last pushed under repoTag again: identical
// content, the same digest.
func (p *pusher) pushAgain(ctx context.Context, repoTag string) (string, error) {
	p.mu.Lock()
	img := p.last[repoTag]
	p.mu.Unlock()
	if img == nil {
		return "", fmt.Errorf("nothing was pushed to %s yet", repoTag)
	}
	return p.write(ctx, repoTag, img)
}

func (p *pusher) write(ctx context.Context, repoTag string, img v1.Image) (string, error) {
	ref, err := name.NewTag(p.reg.Host + "/" + repoTag)
	if err != nil {
		return "", err
	}
	if err := remote.Write(ref, img,
		remote.WithContext(ctx),
		remote.WithTransport(p.transport),
		remote.WithAuth(&authn.Basic{Username: p.reg.User, Password: p.reg.Password}),
	); err != nil {
		return "", fmt.Errorf("push %s: %w", repoTag, err)
	}
	d, err := img.Digest()
	if err != nil {
		return "", err
	}
	p.mu.Lock()
	p.last[repoTag] = img
	p.mu.Unlock()
	return d.String(), nil
}

// pushAll pushes a new image under each repoTag, a few at a time, and
// returns their digests by repoTag.
func (p *pusher) pushAll(ctx context.Context, repoTags []string) (map[string]string, error) {
	out := make(map[string]string, len(repoTags))
	var mu sync.Mutex
	var firstErr error
	work := make(chan string)
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for rt := range work {
				d, err := p.push(ctx, rt)
				mu.Lock()
				if err != nil && firstErr == nil {
					firstErr = err
				}
				out[rt] = d
				mu.Unlock()
			}
		})
	}
	for _, rt := range repoTags {
		work <- rt
	}
	close(work)
	wg.Wait()
	return out, firstErr
}
