package registry

import (
	"context"
	"fmt"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

// WithRepository runs do against the repository of image (its tag and
// digest ignored) as resolutions are made: within AllowedRegistries, with
// the credentials of kc tried in turn and then anonymous access, through
// the same per-registry budget, transports and TLS rules. It is how
// signatures are read (internal/verify): no other path to a registry
// exists. An error has no secret in it.
func (r *Resolver) WithRepository(ctx context.Context, image string, kc authn.Keychain, do func(context.Context, name.Repository, *remote.Puller) error) error {
	tag, err := r.parseTag(image)
	if err != nil {
		return err
	}
	repo := tag.Context()
	if err := r.allowed.check(repo.RegistryStr()); err != nil {
		return fmt.Errorf("%s: %w", repo, err)
	}
	creds, err := credentialsOf(ctx, kc, repo)
	if err != nil {
		return fmt.Errorf("credentials for %s: %w", repo.RegistryStr(), err)
	}
	err = r.withCredentials(ctx, repo, creds, func(ctx context.Context, p conn) error {
		return do(ctx, repo, p.Puller)
	})
	if err != nil {
		return explainFor(asked{what: "read " + repo.Name(), registry: repo.RegistryStr(), missing: "not found in " + repo.Name()}, err, r.opts.Timeout)
	}
	return nil
}
