package registry

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	"github.com/google/go-containerregistry/pkg/v1/remote/transport"
)

// headNotAnswered reports whether a HEAD failed in a way a GET can work
// around: the method refused, or a response without a usable digest.
// go-containerregistry reports the latter only as text.
func headNotAnswered(err error) bool {
	var malformed *MalformedDigestError
	if errors.As(err, &malformed) {
		return true
	}
	var terr *transport.Error
	if errors.As(err, &terr) {
		return terr.StatusCode == http.StatusMethodNotAllowed || terr.StatusCode == http.StatusNotImplemented
	}
	msg := err.Error()
	return strings.Contains(msg, "did not include Docker-Content-Digest") ||
		strings.Contains(msg, "did not include Content-Type") ||
		strings.Contains(msg, "did not include Content-Length") ||
		strings.Contains(msg, "cannot parse hash") ||
		strings.Contains(msg, "unsupported hash")
}

// fallbackError is a HEAD that was not answered properly and the GET that
// was to replace it failing too. The GET's error comes first for
// errors.As: it says what the registry answers.
type fallbackError struct{ head, get error }

func (e *fallbackError) Error() string {
	return fmt.Sprintf("%s (the manifest was fetched because %s)", describe(e.get), describe(e.head))
}

func (e *fallbackError) Unwrap() []error { return []error{e.get, e.head} }

// describe returns the clearest text of one request's failure: the
// resolver's own errors without the *url.Error around them.
func describe(err error) string {
	var (
		malformed *MalformedDigestError
		mismatch  *DigestMismatchError
		tooLarge  *TooLargeError
		limited   *RateLimitedError
	)
	switch {
	case errors.As(err, &mismatch):
		return mismatch.Error()
	case errors.As(err, &tooLarge):
		return tooLarge.Error()
	case errors.As(err, &malformed):
		return malformed.Error()
	case errors.As(err, &limited):
		return limited.Error()
	}
	return err.Error()
}

// asked is what a conversation with a registry was for, as its errors say
// it: a tag's resolution, a digest's platforms, a digest's signatures.
type asked struct {
	what     string // "resolve reg/app:v1"
	registry string
	// missing is what a 404 means: `tag "v1" not found in reg/app`.
	missing string
}

// tagAsked is a tag's resolution.
func tagAsked(tag name.Tag) asked {
	return asked{what: "resolve " + tag.String(), registry: tag.RegistryStr(),
		missing: fmt.Sprintf("tag %q not found in %s", tag.TagStr(), tag.Context().Name())}
}

// explain turns a registry failure into a sentence for a condition
// message: it names the registry and says what went wrong first, the
// details after.
func explain(a asked, err error, timeout time.Duration) error {
	reg := a.registry
	// When a GET replaced a HEAD, what the GET met decides the headline.
	cause := err
	var fb *fallbackError
	if errors.As(err, &fb) {
		cause = fb.get
	}
	var (
		rl       *RateLimitedError
		mismatch *DigestMismatchError
		tooLarge *TooLargeError
		bad      *MalformedDigestError
		terr     *transport.Error
		unknown  x509.UnknownAuthorityError
		hostname x509.HostnameError
		certErr  *tls.CertificateVerificationError
		opErr    *net.OpError
		plain    *PlainHTTPError
	)
	switch {
	case errors.As(cause, &plain) && plain.Host == reg:
		// go-containerregistry tried HTTPS first: err says how it failed.
		return fmt.Errorf("%s: registry %s answered only over plain HTTP, or not at all; imagepin refuses plain HTTP unless the registry is named in --insecure-registry: %w", a.what, reg, err)
	case errors.As(cause, &plain):
		return fmt.Errorf("%s: registry %s sends imagepin to %s over plain HTTP; imagepin refuses it unless %s is named in --insecure-registry: %w", a.what, reg, plain.Host, plain.Host, err)
	case errors.As(cause, &rl), errors.As(cause, &mismatch), errors.As(cause, &tooLarge), errors.As(cause, &bad):
		// The resolver's own errors say it all; the *url.Error around
		// them only repeats the URL.
		if fb != nil {
			return fmt.Errorf("%s: %w", a.what, fb)
		}
		return fmt.Errorf("%s: %w", a.what, &redactedError{msg: describe(err), err: err})
	case errors.As(cause, &terr):
		return explainStatus(a, terr, err)
	case errors.Is(cause, context.DeadlineExceeded):
		return fmt.Errorf("%s: no answer from registry %s within %s (--registry-timeout): %w", a.what, reg, timeout, err)
	case errors.As(cause, &unknown), errors.As(cause, &hostname):
		return fmt.Errorf("%s: the TLS certificate of registry %s is not trusted (add its CA with --registry-ca-file): %w", a.what, reg, err)
	case errors.As(cause, &certErr):
		return fmt.Errorf("%s: the TLS certificate of registry %s could not be verified: %w", a.what, reg, err)
	case errors.As(cause, &opErr) && opErr.Op == "dial":
		return fmt.Errorf("%s: registry %s is unreachable: %w", a.what, reg, err)
	case errors.Is(cause, io.EOF), errors.Is(cause, io.ErrUnexpectedEOF), errors.Is(cause, syscall.ECONNRESET):
		return fmt.Errorf("%s: registry %s closed the connection without an answer: %w", a.what, reg, err)
	}
	return fmt.Errorf("%s: registry %s: %w", a.what, reg, err)
}

// explainStatus explains an HTTP error status from the registry or its
// token service; err is the whole failure, for the details.
func explainStatus(a asked, terr *transport.Error, err error) error {
	reg := a.registry
	token := terr.Request != nil && !strings.HasPrefix(terr.Request.URL.Path, "/v2/")
	switch terr.StatusCode {
	case http.StatusUnauthorized, http.StatusForbidden:
		return fmt.Errorf("%s: authentication failed for registry %s (check the pull secret): %w", a.what, reg, err)
	case http.StatusTooManyRequests:
		return fmt.Errorf("%s: registry %s is rate limiting imagepin: %w", a.what, reg, err)
	}
	if !token && saysMissing(terr) {
		return fmt.Errorf("%s: %s: %w", a.what, a.missing, err)
	}
	status := fmt.Sprintf("%d %s", terr.StatusCode, http.StatusText(terr.StatusCode))
	switch {
	case token:
		return fmt.Errorf("%s: the token service of registry %s failed (%s): %w", a.what, reg, status, err)
	case terr.StatusCode >= 500:
		return fmt.Errorf("%s: registry %s failed (%s): %w", a.what, reg, status, err)
	}
	return fmt.Errorf("%s: registry %s answered %s: %w", a.what, reg, status, err)
}

// redactedError is an error whose text has had credentials taken out. Its
// chain is kept for errors.As; only its text is shown.
type redactedError struct {
	msg string
	err error
}

func (e *redactedError) Error() string { return e.msg }
func (e *redactedError) Unwrap() error { return e.err }

// redact removes secrets from err's text: a registry or token service may
// echo what it was sent, and the text goes into status, events and logs.
func redact(err error, secrets []string) error {
	msg := err.Error()
	clean := msg
	for _, s := range secrets {
		clean = strings.ReplaceAll(clean, s, "<redacted>")
	}
	if clean == msg {
		return err
	}
	return &redactedError{msg: clean, err: err}
}

// WaitError says a caller stopped waiting (the resolver's timeout, or
// Request.Timeout, counted from its call) while the resolution went on:
// it may still be waiting for its turn in the registry budget, and its
// answer fills the cache when it comes. Nothing says the registry failed.
type WaitError struct{ msg string }

func (e *WaitError) Error() string { return e.msg }

// StillWaiting says whether err, a Resolve's, is a WaitError: the caller
// gave up, not the registry.
func StillWaiting(err error) bool {
	var we *WaitError
	return errors.As(err, &we)
}

// TagFailed says whether err, a Resolve's, is the tag's or its
// credential's own (the manifest not found, the credential refused)
// rather than its registry's (no answer, unreachable, rate limiting, a
// server error, TLS, a ping or token service that fails): a caller asking
// many tags of one registry goes on asking after the first kind.
func TagFailed(err error) bool {
	var terr *transport.Error
	if !errors.As(err, &terr) {
		return false
	}
	if terr.Request != nil && !strings.Contains(terr.Request.URL.Path, "/manifests/") {
		return false // the ping's or the token service's answer
	}
	return terr.StatusCode == http.StatusUnauthorized || terr.StatusCode == http.StatusForbidden || saysMissing(terr)
}

// saysMissing: the registry says it has no such manifest or repository
// (404, MANIFEST_UNKNOWN, NAME_UNKNOWN).
func saysMissing(terr *transport.Error) bool {
	if terr.StatusCode == http.StatusNotFound {
		return true
	}
	for _, d := range terr.Errors {
		if d.Code == transport.ManifestUnknownErrorCode || d.Code == transport.NameUnknownErrorCode {
			return true
		}
	}
	return false
}
