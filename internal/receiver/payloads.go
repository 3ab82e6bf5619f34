package receiver

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"unicode"

	"github.com/google/go-containerregistry/pkg/name"
)

// Push is what one registry event says may have moved. It is a hint,
// never trusted: imagepin re-resolves the tag itself.
type Push struct {
	// Repository is the registry host and path as an image reference names it,
	// e.g. "ghcr.io/org/app", "registry.example.com:5000/team/app", "docker.io/library/nginx".
	Repository string
	// Tag is the tag pushed; empty when the event does not say.
	Tag string
}

// Endpoint names, also the last path element of each endpoint's URL.
const (
	Distribution = "distribution"
	Harbor       = "harbor"
	DockerHub    = "dockerhub"
	Quay         = "quay"
	GHCR         = "ghcr"
	ACR          = "acr"
	GAR          = "gar"
	Generic      = "generic"
)

// MaxPushes bounds the pushes one request may name; more is a malformed body.
const MaxPushes = 256

// parsers reads each endpoint's body.
var parsers = map[string]func(body []byte, h http.Header) ([]Push, error){
	Distribution: prefixed("distribution envelope", parseDistribution),
	Harbor:       prefixed("harbor payload", parseHarbor),
	DockerHub:    prefixed("docker hub payload", parseDockerHub),
	Quay:         prefixed("quay payload", parseQuay),
	GHCR:         prefixed("github package event", parseGHCR),
	ACR:          prefixed("acr event", parseACR),
	GAR:          prefixed("gar pub/sub push", parseGAR),
	Generic:      prefixed("generic body", parseGeneric),
}

// prefixed names the body in parse's errors, which are shown to whoever sent it.
func prefixed(what string, parse func([]byte, http.Header) ([]Push, error)) func([]byte, http.Header) ([]Push, error) {
	return func(body []byte, h http.Header) ([]Push, error) {
		pushes, err := parse(body, h)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", what, err)
		}
		return pushes, nil
	}
}

// manifestTypes are the media types of a distribution push that can carry a
// tag; every other push is a blob's. An empty type is a manifest's too.
var manifestTypes = map[string]bool{
	"": true,
	"application/vnd.docker.distribution.manifest.v2+json":      true,
	"application/vnd.docker.distribution.manifest.list.v2+json": true,
	"application/vnd.docker.distribution.manifest.v1+json":      true,
	"application/vnd.docker.distribution.manifest.v1+prettyjws": true,
	"application/vnd.oci.image.manifest.v1+json":                true,
	"application/vnd.oci.image.index.v1+json":                   true,
}

// distEnvelope is a distribution notification: one or more events.
type distEnvelope struct {
	Events *[]distEvent `json:"events"`
}

// distEvent is what is read of one distribution event.
type distEvent struct {
	Action string `json:"action"`
	Target struct {
		MediaType  string `json:"mediaType"`
		Repository string `json:"repository"`
		URL        string `json:"url"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host string `json:"host"`
	} `json:"request"`
}

// parseDistribution reads a CNCF distribution notification envelope.
func parseDistribution(body []byte, _ http.Header) ([]Push, error) {
	var env distEnvelope
	if err := decode(body, &env); err != nil {
		return nil, err
	}
	if env.Events == nil {
		return nil, errors.New(`events is missing: want {"events": [...]}`)
	}
	var c collector
	for i, e := range *env.Events {
		mediaType, _, _ := strings.Cut(e.Target.MediaType, ";")
		if e.Action != "push" || !manifestTypes[strings.ToLower(strings.TrimSpace(mediaType))] {
			continue
		}
		host := e.Request.Host
		if host == "" {
			host = urlHost(e.Target.URL)
		}
		switch {
		case e.Target.Repository == "":
			return nil, fmt.Errorf("events[%d]: target.repository is empty", i)
		case host == "":
			return nil, fmt.Errorf("events[%d]: request.host is empty", i)
		case strings.ContainsAny(host, "/@"):
			return nil, fmt.Errorf("events[%d]: request.host %s is not a host[:port]", i, quote(host))
		case e.Target.Tag == "":
			continue // a push by digest moves no tag
		}
		if err := c.add(host+"/"+e.Target.Repository, e.Target.Tag); err != nil {
			return nil, fmt.Errorf("events[%d]: %w", i, err)
		}
	}
	return c.pushes, nil
}

// urlHost is the host[:port] of a URL, "" when it has none.
func urlHost(s string) string {
	u, err := url.Parse(s)
	if err != nil {
		return ""
	}
	return u.Host
}

// genericPayload is imagepin's own body; any of its forms may be combined.
type genericPayload struct {
	Image      *string  `json:"image"`
	Images     []string `json:"images"`
	Repository *string  `json:"repository"`
	Tag        *string  `json:"tag"`
}

// parseGeneric reads imagepin's own format, for senders with none of their own.
func parseGeneric(body []byte, _ http.Header) ([]Push, error) {
	var b genericPayload
	if err := decode(body, &b); err != nil {
		return nil, err
	}
	switch {
	case b.Repository == nil && b.Tag != nil:
		return nil, errors.New(`tag without repository: want {"repository": "<repo>", "tag": "<tag>"}`)
	case b.Image == nil && len(b.Images) == 0 && b.Repository == nil:
		return nil, errors.New(`names no image: want {"image": "<ref>"}, {"images": ["<ref>", ...]} or {"repository": "<repo>", "tag": "<tag>"}`)
	}
	var c collector
	if b.Image != nil {
		if err := c.image(*b.Image); err != nil {
			return nil, fmt.Errorf("image: %w", err)
		}
	}
	for i, ref := range b.Images {
		if err := c.image(ref); err != nil {
			return nil, fmt.Errorf("images[%d]: %w", i, err)
		}
	}
	if b.Repository != nil {
		var tag string
		if b.Tag != nil {
			tag = *b.Tag
		}
		p, err := newPush(strings.TrimSpace(*b.Repository), tag, false)
		if err != nil {
			return nil, err
		}
		if err := c.keep(p); err != nil {
			return nil, err
		}
	}
	return c.pushes, nil
}

// image keeps the tag an image reference names: ":latest" when it names
// none, as the reference means; a digest on it is dropped.
func (c *collector) image(ref string) error {
	s := trimScheme(strings.TrimSpace(ref))
	if s == "" {
		return errors.New("image reference is empty")
	}
	repo, tag, digest := splitRef(s)
	if strings.HasSuffix(s, "@") || strings.HasSuffix(strings.TrimSuffix(s, "@"+digest), ":") {
		return fmt.Errorf("image reference %s has an empty tag or digest", quote(s))
	}
	if tag == "" {
		tag = "latest"
	}
	p, err := newPush(repo, tag, false)
	if err != nil {
		return err
	}
	if digest != "" {
		if _, err := name.NewDigest(p.Repository + "@" + digest); err != nil {
			return fmt.Errorf("digest %s is not valid", quote(digest))
		}
	}
	return c.keep(p)
}

// collector keeps the distinct pushes of a body, in order, at most MaxPushes.
type collector struct {
	pushes []Push
	seen   map[Push]bool
}

// add validates repo (which must name its registry host) and tag, and keeps
// the push unless it was seen.
func (c *collector) add(repo, tag string) error {
	p, err := newPush(repo, tag, true)
	if err != nil {
		return err
	}
	return c.keep(p)
}

// keep adds a validated push unless it was seen.
func (c *collector) keep(p Push) error {
	if c.seen[p] {
		return nil
	}
	if len(c.pushes) == MaxPushes {
		return fmt.Errorf("names more than %d pushes; send at most %d in one request", MaxPushes, MaxPushes)
	}
	if c.seen == nil {
		c.seen = map[Push]bool{}
	}
	c.seen[p] = true
	c.pushes = append(c.pushes, p)
	return nil
}

// maxRepository bounds a repository's length: name bounds the path, not the host.
const maxRepository = 512

// maxTag is the longest tag a registry accepts.
const maxTag = 128

// newPush validates raw as a repository and tag as one of its tags (tag may
// be empty). explicitHost requires raw to name its registry; otherwise a
// repository without one is Docker Hub's, as in an image reference.
func newPush(raw, tag string, explicitHost bool) (Push, error) {
	repo, err := repository(raw, explicitHost)
	if err != nil {
		return Push{}, err
	}
	if tag == "" {
		return Push{Repository: repo}, nil
	}
	if len(tag) > maxTag {
		return Push{}, fmt.Errorf("tag %s is longer than %d characters", quote(tag), maxTag)
	}
	if _, err := name.NewTag(repo + ":" + tag); err != nil {
		return Push{}, fmt.Errorf("tag %s is not valid: %s", quote(tag), oneLine(err.Error()))
	}
	return Push{Repository: repo, Tag: tag}, nil
}

// repository is raw in the form an image reference names it: no scheme or
// trailing slash, the host in lower case, Docker Hub as "docker.io/library/…".
func repository(raw string, explicitHost bool) (string, error) {
	s := strings.TrimRight(trimScheme(raw), "/")
	if s == "" {
		return "", errors.New("repository is empty")
	}
	if len(s) > maxRepository {
		return "", fmt.Errorf("repository %s is longer than %d characters", quote(s), maxRepository)
	}
	host, path, found := strings.Cut(s, "/")
	switch {
	case found && (strings.ContainsAny(host, ".:") || strings.EqualFold(host, "localhost")):
		s = strings.ToLower(host) + "/" + path
	case explicitHost:
		return "", fmt.Errorf("repository %s names no registry host", quote(s))
	}
	r, err := name.NewRepository(s)
	if err != nil {
		return "", fmt.Errorf("repository %s is not valid: %s", quote(s), oneLine(err.Error()))
	}
	reg := r.RegistryStr()
	if reg == name.DefaultRegistry {
		reg = "docker.io"
	}
	return reg + "/" + r.RepositoryStr(), nil
}

// trimScheme drops a URL scheme: some registries name repositories by URL.
func trimScheme(s string) string {
	if _, rest, found := strings.Cut(s, "://"); found {
		return rest
	}
	return s
}

// splitRef splits an image reference into repository, tag and digest,
// each empty when absent; a port's colon is not a tag's.
func splitRef(ref string) (repo, tag, digest string) {
	if i := strings.LastIndexByte(ref, '@'); i >= 0 {
		ref, digest = ref[:i], ref[i+1:]
	}
	if i := strings.LastIndexByte(ref, ':'); i > strings.LastIndexByte(ref, '/') {
		return ref[:i], ref[i+1:], digest
	}
	return ref, "", digest
}

// decode reads body into v, saying what is wrong in words a sender reads.
func decode(body []byte, v any) error {
	err := json.Unmarshal(body, v)
	var syntax *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case err == nil:
		return nil
	case errors.As(err, &syntax):
		return fmt.Errorf("not JSON: %s (at byte %d)", oneLine(syntax.Error()), syntax.Offset)
	case errors.As(err, &typ) && typ.Field == "":
		return fmt.Errorf("want a JSON %s, got %s", kindName(typ.Type), oneLine(typ.Value))
	case errors.As(err, &typ):
		return fmt.Errorf("%s: want %s, got %s", oneLine(typ.Field), kindName(typ.Type), oneLine(typ.Value))
	default:
		return fmt.Errorf("not JSON: %s", oneLine(err.Error()))
	}
}

// kindName names a Go type as the JSON value it decodes.
func kindName(t reflect.Type) string {
	if t == nil {
		return "value"
	}
	switch t.Kind() {
	case reflect.Struct, reflect.Map:
		return "object"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Pointer:
		return kindName(t.Elem())
	default:
		return "number"
	}
}

// quote is s quoted on one line, cut short: errors echo what a sender sent.
func quote(s string) string {
	const most = 100
	if len(s) > most {
		return strconv.Quote(s[:most]) + "…"
	}
	return strconv.Quote(s)
}

// oneLine escapes line breaks and other control characters in s, cut short.
func oneLine(s string) string {
	const most = 300
	var cut string
	if len(s) > most {
		s, cut = s[:most], "…"
	}
	var b strings.Builder
	for _, r := range s {
		if unicode.IsPrint(r) {
			b.WriteRune(r)
		} else {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
		}
	}
	return b.String() + cut
}
