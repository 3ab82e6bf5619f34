package registry

import (
	"fmt"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
)

// A hint is a push event's word that a tag (or any tag of a repository)
// may have moved. It is never taken as an answer: it only makes the
// resolver's answers asked for before it unfresh, so that the next caller
// for that tag, whatever its TTL or tick, asks the registry again with its
// own credentials, and callers after it share that one request.

// TagRef names a tag as the cache knows it: the repository as
// go-containerregistry names it ("index.docker.io/library/nginx") and the
// tag; an empty Tag stands for every tag of the repository.
type TagRef struct {
	Repository string
	Tag        string
}

func (t TagRef) String() string {
	if t.Tag == "" {
		return t.Repository
	}
	return t.Repository + ":" + t.Tag
}

// TagRefOf is the tag an image reference resolves (":latest" when it names
// none; a digest on it is dropped).
func TagRefOf(image string) (TagRef, error) {
	if i := strings.IndexByte(image, '@'); i >= 0 {
		image = image[:i]
	}
	tag, err := name.NewTag(image)
	if err != nil {
		return TagRef{}, fmt.Errorf("%q is not an image reference with a tag: %w", image, err)
	}
	return TagRef{Repository: repositoryKey(tag.Context()), Tag: tag.TagStr()}, nil
}

// repositoryKey names a repository case-blind: host names are, and
// repository paths are lower case already. Tags keep their case.
func repositoryKey(repo name.Repository) string { return strings.ToLower(repo.Name()) }

// ParseTagRef names repository's tag (every tag when tag is empty) the way
// TagRefOf names an image's: "docker.io/nginx" and
// "index.docker.io/library/nginx" are one repository.
func ParseTagRef(repository, tag string) (TagRef, error) {
	repo, err := name.NewRepository(repository)
	if err != nil {
		return TagRef{}, fmt.Errorf("%q is not a repository: %w", repository, err)
	}
	if tag == "" {
		return TagRef{Repository: repositoryKey(repo)}, nil
	}
	t, err := name.NewTag(repo.Name() + ":" + tag)
	if err != nil {
		return TagRef{}, fmt.Errorf("%q is not a tag of %s: %w", tag, repo.Name(), err)
	}
	return TagRef{Repository: repositoryKey(repo), Tag: t.TagStr()}, nil
}

// tagRefOfKey is the tag a cache key is for: keys are "<repo>:<tag>|<creds>".
func tagRefOfKey(key string) TagRef {
	k := key
	if i := strings.LastIndexByte(k, '|'); i >= 0 {
		k = k[:i]
	}
	i := strings.LastIndexByte(k, ':')
	return TagRef{Repository: strings.ToLower(k[:i]), Tag: k[i+1:]}
}

// Hint says that t may have moved: every answer for it asked for before
// now, under any credential, stops being fresh, and no resolution that
// began before now is joined. It sends nothing; the next caller asks.
func (r *Resolver) Hint(t TagRef) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.hints[t] = r.clock.Now()
}

// Knows reports whether any caller asked about t (any tag of t.Repository
// when t.Tag is empty) within the cache's memory: the tags a push event
// may concern, the webhook's included.
func (r *Resolver) Knows(t TagRef) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.known[t] > 0
}

// hintedLocked is the newest hint for t's tag or repository; r.mu is held.
func (r *Resolver) hintedLocked(t TagRef) time.Time {
	at := r.hints[t]
	if repo := r.hints[TagRef{Repository: t.Repository}]; repo.After(at) {
		at = repo
	}
	return at
}

// addKnownLocked counts a new cache entry for key; r.mu is held.
func (r *Resolver) addKnownLocked(key string, n int) {
	t := tagRefOfKey(key)
	for _, k := range []TagRef{t, {Repository: t.Repository}} {
		r.known[k] += n
		if r.known[k] <= 0 {
			delete(r.known, k)
		}
	}
}

// sweepHintsLocked drops hints no entry can be older than (entries are
// swept after keep); r.mu is held.
func (r *Resolver) sweepHintsLocked(now time.Time, keep time.Duration) {
	for t, at := range r.hints {
		if now.Sub(at) > keep {
			delete(r.hints, t)
		}
	}
}
