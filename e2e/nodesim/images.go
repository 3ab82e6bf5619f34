package nodesim

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	kauth "github.com/google/go-containerregistry/pkg/authn/kubernetes"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// CachedImage is one image (one digest of one repository) in a node's image
// cache.
type CachedImage struct {
	// Names are the image's digest reference ("repo@sha256:…") followed by
	// the tag references ("repo:tag") that point at it on this node, sorted.
	Names []string
	// Digest is "sha256:…".
	Digest string
	// SizeBytes is the manifest's size plus the sizes of the config and
	// layers it lists (the index's size alone for an index).
	SizeBytes int64
	// Pulled is when the node last pulled this image from a registry;
	// LastUsed when a container last started from it.
	Pulled, LastUsed time.Time
}

// Waiting reasons the kubelet reports for images.
const (
	reasonErrImagePull      = "ErrImagePull"
	reasonImagePullBackOff  = "ImagePullBackOff"
	reasonErrImageNeverPull = "ErrImageNeverPull"
	reasonInvalidImageName  = "InvalidImageName"
)

// Maximum number of images a node reports in status.images, as the kubelet's
// default --node-status-max-images.
const maxNodeImages = 50

// imageCache is a node's image store: tag references to digests, and the
// digests it holds. It is safe for concurrent use.
type imageCache struct {
	mu sync.Mutex
	// tags maps "repo:tag" to "sha256:…".
	tags map[string]string
	// images maps "repo@sha256:…" to what the node holds of it.
	images map[string]*cachedImage
	seq    uint64
}

type cachedImage struct {
	repo, digest     string
	size             int64
	pulled, lastUsed time.Time
	pullSeq          uint64 // orders pulls within the same instant
}

func newImageCache() *imageCache {
	return &imageCache{tags: map[string]string{}, images: map[string]*cachedImage{}}
}

// lookup returns the digest reference the node holds for ref, if any, and
// marks it used. A digest reference (with or without a tag) is present when
// that digest of the repository is; a tag reference when the node has
// pulled the tag.
func (c *imageCache) lookup(ref name.Reference, now time.Time) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	repo := ref.Context().Name()
	var key string
	switch r := ref.(type) {
	case name.Digest:
		key = repo + "@" + r.DigestStr()
	case name.Tag:
		d, ok := c.tags[repo+":"+r.TagStr()]
		if !ok {
			return "", false
		}
		key = repo + "@" + d
	default:
		return "", false
	}
	img, ok := c.images[key]
	if !ok {
		return "", false
	}
	img.lastUsed = now
	return key, true
}

// store records a pull of ref that resolved to digest: the digest is held,
// and a tag reference now points at it (the digest it pointed at before
// stays cached). It returns the digest reference.
func (c *imageCache) store(ref name.Reference, digest string, size int64, now time.Time) string {
	c.mu.Lock()
	defer c.mu.Unlock()
	repo := ref.Context().Name()
	key := repo + "@" + digest
	if t, ok := ref.(name.Tag); ok {
		c.tags[repo+":"+t.TagStr()] = digest
	}
	c.seq++
	img, ok := c.images[key]
	if !ok {
		img = &cachedImage{repo: repo, digest: digest}
		c.images[key] = img
	}
	img.size, img.pulled, img.lastUsed, img.pullSeq = size, now, now, c.seq
	return key
}

// snapshot returns the cached images, most recently pulled first.
func (c *imageCache) snapshot() []CachedImage {
	c.mu.Lock()
	defer c.mu.Unlock()
	tagsOf := map[string][]string{}
	for tagRef, d := range c.tags {
		repo := tagRef[:strings.LastIndexByte(tagRef, ':')]
		key := repo + "@" + d
		tagsOf[key] = append(tagsOf[key], tagRef)
	}
	type entry struct {
		img CachedImage
		seq uint64
	}
	entries := make([]entry, 0, len(c.images))
	for key, img := range c.images {
		tags := tagsOf[key]
		sort.Strings(tags)
		entries = append(entries, entry{
			img: CachedImage{
				Names:     append([]string{key}, tags...),
				Digest:    img.digest,
				SizeBytes: img.size,
				Pulled:    img.pulled,
				LastUsed:  img.lastUsed,
			},
			seq: img.pullSeq,
		})
	}
	sort.Slice(entries, func(i, j int) bool { return entries[i].seq > entries[j].seq })
	out := make([]CachedImage, len(entries))
	for i, e := range entries {
		out[i] = e.img
	}
	return out
}

// nodeImages is the node's status.images for its cache.
func nodeImages(cached []CachedImage) []corev1.ContainerImage {
	if len(cached) > maxNodeImages {
		cached = cached[:maxNodeImages]
	}
	out := make([]corev1.ContainerImage, 0, len(cached))
	for _, img := range cached {
		out = append(out, corev1.ContainerImage{Names: img.Names, SizeBytes: img.SizeBytes})
	}
	return out
}

// pullError is why an image is not available, with the Waiting reason the
// kubelet reports for it.
type pullError struct {
	reason  string
	message string
	// final errors are not retried until the container's image changes.
	final bool
}

func (e *pullError) Error() string { return e.reason + ": " + e.message }

// ensureImage makes the image of container c of pod available on node n per
// c's imagePullPolicy, and returns its digest reference ("repo@sha256:…").
func (s *Simulator) ensureImage(ctx context.Context, n *simNode, pod *corev1.Pod, c *corev1.Container) (string, *pullError) {
	ref, err := name.ParseReference(c.Image, name.WeakValidation)
	if err != nil {
		return "", &pullError{
			reason:  reasonInvalidImageName,
			message: fmt.Sprintf("Failed to apply default image tag %q: couldn't parse image name %q: %v", c.Image, c.Image, err),
			final:   true,
		}
	}
	now := time.Now()
	policy := c.ImagePullPolicy
	if policy == "" {
		policy = defaultPullPolicy(ref)
	}
	if policy != corev1.PullAlways {
		if id, ok := n.cache.lookup(ref, now); ok {
			return id, nil
		}
		if policy == corev1.PullNever {
			return "", &pullError{
				reason:  reasonErrImageNeverPull,
				message: fmt.Sprintf("Container image %q is not present with pull policy of Never", c.Image),
			}
		}
	}
	digest, size, err := s.pull(ctx, pod, ref)
	if err != nil {
		return "", &pullError{reason: reasonErrImagePull, message: fmt.Sprintf("Failed to pull image %q: %v", c.Image, err)}
	}
	id := n.cache.store(ref, digest, size, now)
	s.nodeImagesChanged(n.name)
	return id, nil
}

// defaultPullPolicy is what the API server defaults an empty policy to.
func defaultPullPolicy(ref name.Reference) corev1.PullPolicy {
	if t, ok := ref.(name.Tag); ok && t.TagStr() == "latest" {
		return corev1.PullAlways
	}
	return corev1.PullIfNotPresent
}

// pullTimeout bounds one pull.
const pullTimeout = 30 * time.Second

// pull asks the registry what ref resolves to now, with the credentials of
// the pod's image pull secrets (anonymous without), and returns the digest
// and size. Credentials never appear in the error.
func (s *Simulator) pull(ctx context.Context, pod *corev1.Pod, ref name.Reference) (digest string, size int64, err error) {
	ctx, cancel := context.WithTimeout(ctx, pullTimeout)
	defer cancel()
	secrets := s.pullSecrets(ctx, pod)
	opts := []remote.Option{remote.WithContext(ctx)}
	if s.opts.Transport != nil {
		opts = append(opts, remote.WithTransport(s.opts.Transport))
	}
	if len(secrets) > 0 {
		kc, err := kauth.NewFromPullSecrets(ctx, secrets)
		if err != nil {
			return "", 0, errors.New(redact("reading image pull secrets: "+err.Error(), secrets))
		}
		opts = append(opts, remote.WithAuthFromKeychain(kc))
	}
	desc, err := remote.Get(ref, opts...)
	if err != nil {
		return "", 0, errors.New(redact(err.Error(), secrets))
	}
	return desc.Digest.String(), imageSize(desc), nil
}

// imageSize is the manifest's size plus its config and layers; an index's
// own size for an index.
func imageSize(desc *remote.Descriptor) int64 {
	size := desc.Size
	if !desc.MediaType.IsImage() {
		return size
	}
	m, err := v1.ParseManifest(bytes.NewReader(desc.Manifest))
	if err != nil {
		return size
	}
	size += m.Config.Size
	for _, l := range m.Layers {
		size += l.Size
	}
	return size
}

// pullSecrets reads the pod's image pull secrets. Missing or unreadable
// secrets are skipped, as the kubelet does.
func (s *Simulator) pullSecrets(ctx context.Context, pod *corev1.Pod) []corev1.Secret {
	var out []corev1.Secret
	for _, ref := range pod.Spec.ImagePullSecrets {
		if ref.Name == "" {
			continue
		}
		sec, err := s.client.CoreV1().Secrets(pod.Namespace).Get(ctx, ref.Name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				s.log.Error(err, "reading image pull secret", "pod", pod.Namespace+"/"+pod.Name, "secret", ref.Name)
			}
			continue
		}
		out = append(out, *sec)
	}
	return out
}

// redact removes every credential the secrets hold from msg.
func redact(msg string, secrets []corev1.Secret) string {
	var words []string
	var collect func(v any)
	collect = func(v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				switch strings.ToLower(k) {
				case "username", "password", "auth", "identitytoken", "registrytoken", "email":
					if s, ok := e.(string); ok {
						words = append(words, s)
					}
				default:
					collect(e)
				}
			}
		case []any:
			for _, e := range v {
				collect(e)
			}
		}
	}
	for i := range secrets {
		for _, data := range secrets[i].Data {
			var v any
			if json.Unmarshal(data, &v) == nil {
				collect(v)
			}
			words = append(words, strings.TrimSpace(string(data)))
		}
	}
	// Longest first, so that a word inside another is not left behind.
	sort.Slice(words, func(i, j int) bool { return len(words[i]) > len(words[j]) })
	for _, w := range words {
		if len(w) >= 3 {
			msg = strings.ReplaceAll(msg, w, "<redacted>")
		}
	}
	return msg
}
