package selection

import (
	"fmt"
	"regexp"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/imagepin/imagepin/internal/drift"
)

// referenceName matches "name[:tag]" in the grammar of
// github.com/distribution/reference (the one the container runtimes parse
// with): an optional registry host and port, lowercase path components
// joined by ".", "_", "__" or dashes, and a tag of up to 128 word
// characters, dots and dashes that does not start with a dot or a dash.
var referenceName = func() *regexp.Regexp {
	const (
		alphanumeric        = `[a-z0-9]+`
		separator           = `(?:[._]|__|[-]+)`
		pathComponent       = alphanumeric + `(?:` + separator + alphanumeric + `)*`
		domainNameComponent = `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
		domainName          = domainNameComponent + `(?:\.` + domainNameComponent + `)*`
		ipv6address         = `\[(?:[a-fA-F0-9:]+)\]`
		domainAndPort       = `(?:` + domainName + `|` + ipv6address + `)(?::[0-9]+)?`
		remoteName          = pathComponent + `(?:/` + pathComponent + `)*`
		tag                 = `[\w][\w.-]{0,127}`
	)
	return regexp.MustCompile(`^(?:` + domainAndPort + `/)?` + remoteName + `(?::` + tag + `)?$`)
}()

// PinnedImage returns image pinned to digest: "repo:tag@digest", the
// reference as the workload or manifest writes it with the digest appended,
// so the registry, path and tag stay as the author wrote them (no registry
// or "library/" is added). It is the one rewrite of the controller, the
// webhook and `imagepin pin`.
//
//   - An image that already names a digest is re-pinned: its digest is
//     replaced, so pinning is idempotent.
//   - An image without a tag or digest gets the tag it implies: "repo"
//     becomes "repo:latest@digest". The tag is what Follow follows and what
//     drift compares with; "repo@digest" would name no tag any more, and a
//     later push to :latest would go unseen.
//   - An image that names a digest and no tag ("repo@digest") stays so.
//   - digest must be "sha256:" and 64 lowercase hex digits, the only
//     algorithm the ImagePin API and drift.IsDigest know: a pin in another
//     algorithm would not be recognised as one.
//   - image must be a valid reference both for go-containerregistry (which
//     resolves it) and for the grammar of github.com/distribution/reference
//     (which the container runtimes pull with): lowercase repository, a
//     registry host with an optional port ("localhost:5000/team/app:v1"),
//     nested paths, no whitespace.
//
// The error says what is wrong; on a nil error the result always parses
// with name.NewDigest, names exactly digest, and drift.StripDigest of it equals
// WithImpliedTag(drift.StripDigest(image)) (drift.StripDigest(image) when image names a
// digest).
func PinnedImage(image, digest string) (string, error) {
	if !drift.IsDigest(digest) {
		return "", fmt.Errorf("cannot pin %q to %q: not a sha256 digest (sha256: and 64 lowercase hex digits)", image, digest)
	}
	base := image
	if i := strings.IndexByte(image, '@'); i >= 0 {
		// Re-pinning: what is replaced must itself be a digest.
		if _, err := name.NewDigest(image); err != nil {
			return "", fmt.Errorf("cannot pin %q: not a valid image reference: %w", image, err)
		}
		base = image[:i]
	}
	if !referenceName.MatchString(base) {
		if referenceName.MatchString(strings.ToLower(base)) {
			return "", fmt.Errorf("cannot pin %q: not a valid image reference: repository name must be lowercase", image)
		}
		return "", fmt.Errorf("cannot pin %q: not a valid image reference", image)
	}
	if _, err := name.NewTag(base); err != nil {
		return "", fmt.Errorf("cannot pin %q: not a valid image reference: %w", image, err)
	}
	if !strings.Contains(image, "@") {
		base = WithImpliedTag(base)
	}
	pinned := base + "@" + digest
	// What is written must parse, whatever the checks above let through.
	if _, err := name.NewDigest(pinned); err != nil {
		return "", fmt.Errorf("cannot pin %q: %w", image, err)
	}
	return pinned, nil
}

// WithImpliedTag returns a reference that names no tag and no digest with
// the tag it implies, ":latest"; any other reference as it is.
func WithImpliedTag(image string) string {
	if image == "" || strings.Contains(image, "@") || HasTag(image) {
		return image
	}
	return image + ":latest"
}

// HasTag reports whether a reference names a tag explicitly: a ':' after
// its last '/' (a registry port comes before one).
func HasTag(image string) bool {
	name := drift.StripDigest(image)
	return strings.LastIndexByte(name, ':') > strings.LastIndexByte(name, '/')
}

// ImageKey is the image a container names, as status, overrides and
// history know it: the digest removed, and the tag it implies added when it
// names neither tag nor digest ("repo" → "repo:latest"), so that it is the
// same before and after imagepin pins it. A digest-only reference
// ("repo@sha256:…") stays without a tag.
func ImageKey(image string) string {
	if strings.Contains(image, "@") {
		return drift.StripDigest(image)
	}
	return WithImpliedTag(image)
}
