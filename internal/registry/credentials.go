package registry

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"net/http"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
	"k8s.io/utils/clock"
)

// refreshEvery is how long a token from a cloud keychain or a credential
// helper is reused before the helper is asked again (as
// authn.RefreshingKeychain does); a token a registry refuses is dropped at
// once and asked for again.
const refreshEvery = 5 * time.Minute

// anonymousID is the identity of no credential at all.
const anonymousID = "anonymous"

// credential is one way to authenticate to one registry. Its id names
// where it comes from (a pull secret of one namespace, the manager's cloud
// identity, the user's docker config), never the token it carries: a cloud
// helper that hands out a fresh token on every call keeps one cache entry
// and one transport, while two namespaces' secrets stay two identities.
type credential struct {
	id string
	// name is how an error names the credential to its reader.
	name string
	// get returns the credential's current value; an empty one means the
	// source has nothing for this registry, and it is skipped.
	get func(ctx context.Context) (authn.AuthConfig, error)
	// announce says, when the credential turns out empty, that it has
	// none for the registry: a cloud identity asked about its own cloud.
	announce bool
	// forget, if set, drops a cached token the registry refused, so that
	// the next get asks the helper for a fresh one.
	forget func()
}

// credentialSource is a keychain that knows where its credentials come
// from: it lists, for a repository, every credential it holds for its
// registry, in the order to try them (anonymous access comes after them).
type credentialSource interface {
	credentialsFor(ctx context.Context, repo name.Repository) ([]credential, error)
}

// credentialsOf lists the credentials kc offers for repo. A keychain of
// unknown origin is known only by what it returns, so its identity is a
// hash of the whole credential: an answer seen with one is never served to
// another, at the price of a cache miss when its token changes.
func credentialsOf(ctx context.Context, kc authn.Keychain, repo name.Repository) ([]credential, error) {
	if kc == nil {
		return nil, nil
	}
	if s, ok := kc.(credentialSource); ok {
		return s.credentialsFor(ctx, repo)
	}
	cfg, err := configOf(ctx, kc, repo)
	if err != nil || empty(cfg) {
		return nil, err
	}
	return []credential{fixed(valueID(cfg)+" @"+repo.RegistryStr(), "the credential given", cfg)}, nil
}

// valueID names a credential that does not change by its value: the same
// username and password in two namespaces' pull secrets is one credential
// (either namespace may read what it reads, so one answer serves both, and
// a regcred copied into every namespace costs one request per tag, not one
// per namespace), while two values are never one identity.
func valueID(cfg authn.AuthConfig) string {
	h := sha256.New()
	for _, s := range []string{cfg.Username, cfg.Password, cfg.Auth, cfg.IdentityToken, cfg.RegistryToken} {
		h.Write([]byte(s))
		h.Write([]byte{0})
	}
	return "credential " + hex.EncodeToString(h.Sum(nil)[:12])
}

// fixed is a credential whose value is known already.
func fixed(id, what string, cfg authn.AuthConfig) credential {
	return credential{id: id, name: what, get: func(context.Context) (authn.AuthConfig, error) { return cfg, nil }}
}

// configOf asks a keychain for repo's credential.
func configOf(ctx context.Context, kc authn.Keychain, repo name.Repository) (authn.AuthConfig, error) {
	auth, err := authn.Resolve(ctx, kc, repo)
	if err != nil || auth == nil || auth == authn.Anonymous {
		return authn.AuthConfig{}, err
	}
	cfg, err := authn.Authorization(ctx, auth)
	if err != nil || cfg == nil {
		return authn.AuthConfig{}, err
	}
	return *cfg, nil
}

func empty(cfg authn.AuthConfig) bool { return cfg == authn.AuthConfig{} }

// cacheKey names one tag under one list of credentials: the answer of a
// resolution is shared only with callers that would try the same ones.
func cacheKey(tag name.Tag, creds []credential) string {
	return tag.Context().Name() + ":" + tag.TagStr() + "|" + credentialsID(creds)
}

// digestKey is cacheKey for a digest of ref's repository: the tag the
// workload names does not count.
func digestKey(ref name.Digest, creds []credential) string {
	return digestName(ref) + "|" + credentialsID(creds)
}

// digestName names a digest of a repository, whatever the credentials.
func digestName(ref name.Digest) string {
	return ref.Context().Name() + "@" + ref.DigestStr()
}

// credentialNames says which credentials a list holds, for a log: where
// each comes from, never its value.
func credentialNames(creds []credential) []string {
	out := make([]string, len(creds))
	for i, c := range creds {
		out[i] = c.name
	}
	return out
}

// credentialsID names a list of credentials by their identities.
func credentialsID(creds []credential) string {
	h := sha256.New()
	for _, c := range creds {
		h.Write([]byte(c.id))
		h.Write([]byte{0})
	}
	return hex.EncodeToString(h.Sum(nil)[:12])
}

// refreshing reuses a keychain's answer per registry for refreshEvery, and
// forgets it as soon as a registry refuses it. It is safe for concurrent
// use.
type refreshing struct {
	name  string // "ECR", "docker config"
	kc    authn.Keychain
	clock clock.PassiveClock

	mu     sync.Mutex
	cached map[string]cachedConfig // by registry
}

type cachedConfig struct {
	cfg authn.AuthConfig
	at  time.Time
}

func newRefreshing(name string, kc authn.Keychain, clk clock.PassiveClock) *refreshing {
	if clk == nil {
		clk = clock.RealClock{}
	}
	return &refreshing{name: name, kc: kc, clock: clk, cached: map[string]cachedConfig{}}
}

// credential is this source's credential for repo's registry. Its
// identity is the source and the registry: the token may change at will.
func (k *refreshing) credential(repo name.Repository) credential {
	reg := repo.RegistryStr()
	return credential{
		id:   k.name + " @" + reg,
		name: "the " + k.name + " credentials",
		get: func(ctx context.Context) (authn.AuthConfig, error) {
			k.mu.Lock()
			c, ok := k.cached[reg]
			k.mu.Unlock()
			if ok && k.clock.Since(c.at) < refreshEvery {
				return c.cfg, nil
			}
			cfg, err := configOf(ctx, k.kc, repo)
			if err != nil {
				return authn.AuthConfig{}, err
			}
			k.mu.Lock()
			k.cached[reg] = cachedConfig{cfg: cfg, at: k.clock.Now()}
			k.mu.Unlock()
			return cfg, nil
		},
		forget: func() {
			k.mu.Lock()
			delete(k.cached, reg)
			k.mu.Unlock()
		},
	}
}

// liveAuth is the authenticator of a reused transport: each resolution
// sets the credential's current value, and the transport reads it whenever
// it authenticates, so a refreshed token is used without a new transport.
type liveAuth struct {
	mu  sync.Mutex
	cfg authn.AuthConfig
}

func (a *liveAuth) set(cfg authn.AuthConfig) {
	a.mu.Lock()
	a.cfg = cfg
	a.mu.Unlock()
}

func (a *liveAuth) Authorization() (*authn.AuthConfig, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	cfg := a.cfg
	return &cfg, nil
}

// authRefused reports whether a registry or its token service refused a
// credential (401 or 403), so that the next one may be tried.
func authRefused(err error) bool {
	var terr *transport.Error
	return errors.As(err, &terr) && (terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden)
}

// secretsOf lists the secrets of a credential as they may come back in a
// registry's words: as given, and as a Basic Authorization carries them.
// Usernames are not secret, and help to tell which credential failed.
func secretsOf(cfg authn.AuthConfig) []string {
	var out []string
	add := func(s string) {
		if len(s) >= 4 {
			out = append(out, s)
		}
	}
	add(cfg.Password)
	add(cfg.Auth)
	add(cfg.IdentityToken)
	add(cfg.RegistryToken)
	if cfg.Password != "" {
		add(base64.StdEncoding.EncodeToString([]byte(cfg.Username + ":" + cfg.Password)))
	}
	return out
}

// longestFirst orders secrets so that one inside another is not left
// half-replaced by redact.
func longestFirst(secrets []string) []string {
	sort.Slice(secrets, func(i, j int) bool { return len(secrets[i]) > len(secrets[j]) })
	return secrets
}

// oneLine keeps the first line of a helper's message, for an error that
// is read in a condition message or on a terminal.
func oneLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '\n'); i >= 0 {
		s = s[:i]
	}
	return s
}
