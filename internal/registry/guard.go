package registry

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"io"
	"net/http"
	"regexp"
	"strings"
)

// MaxBodyBytes bounds every response body the resolver reads. Manifests
// and indexes are kilobytes; 4 MiB is the limit containerd puts on a
// manifest. A larger answer is an error, never truncated and hashed.
const MaxBodyBytes = 4 << 20

// validDigest is the only form of digest the resolver trusts in a header
// or returns: what a kubelet can pull by.
var validDigest = regexp.MustCompile(`^sha256:[a-f0-9]{64}$`)

// TooLargeError says a registry answered with more than MaxBodyBytes.
type TooLargeError struct {
	Host, Method, Path string
	// Declared is the Content-Length, or -1 when the body was streamed.
	Declared int64
}

func (e *TooLargeError) Error() string {
	size := fmt.Sprintf("more than %d MiB", MaxBodyBytes>>20)
	if e.Declared >= 0 {
		size = fmt.Sprintf("%d bytes (declared), more than the %d MiB a manifest may be", e.Declared, MaxBodyBytes>>20)
	}
	return fmt.Sprintf("registry %s answered %s %s with %s; not read", e.Host, e.Method, e.Path, size)
}

// DigestMismatchError says a manifest's content does not hash to the
// digest its registry advertised or was asked for: it is not trusted.
type DigestMismatchError struct {
	Host, Path string
	// Want is the digest the content should have, Source where it came
	// from; Got is the digest of the content received.
	Want, Source, Got string
}

func (e *DigestMismatchError) Error() string {
	return fmt.Sprintf("registry %s sent a manifest for %s whose content (%s) does not match %s, %s; not trusted",
		e.Host, e.Path, e.Got, e.Want, e.Source)
}

// MalformedDigestError says a registry answered a manifest HEAD with a
// Docker-Content-Digest that is not a sha256 digest: it is not trusted,
// and the manifest is fetched and hashed instead.
type MalformedDigestError struct {
	Host, Value string
}

func (e *MalformedDigestError) Error() string {
	v := e.Value
	if len(v) > 100 {
		v = v[:100] + "…"
	}
	return fmt.Sprintf("registry %s answered HEAD with a malformed Docker-Content-Digest %q; not trusted", e.Host, v)
}

// guard checks a registry's answer before anyone reads it: a malformed
// digest header on a manifest HEAD is an error; on a GET it is dropped, so
// that the body is hashed instead; a body is limited to MaxBodyBytes; a
// manifest body must hash to the digest in its header and to the one it
// was asked for by.
func guard(host string, req *http.Request, resp *http.Response) (*http.Response, error) {
	manifest := strings.Contains(req.URL.Path, "/manifests/")
	ok := resp.StatusCode == http.StatusOK
	header := resp.Header.Get("Docker-Content-Digest")
	if manifest && ok && header != "" && !validDigest.MatchString(header) {
		if req.Method == http.MethodHead {
			_ = resp.Body.Close()
			return nil, &MalformedDigestError{Host: host, Value: header}
		}
		resp.Header.Del("Docker-Content-Digest")
		header = ""
	}
	if req.Method == http.MethodHead {
		return resp, nil
	}
	if resp.ContentLength > MaxBodyBytes {
		_ = resp.Body.Close()
		return nil, &TooLargeError{Host: host, Method: req.Method, Path: req.URL.Path, Declared: resp.ContentLength}
	}
	b := &guardedBody{rc: resp.Body, left: MaxBodyBytes, host: host, method: req.Method, path: req.URL.Path}
	if manifest && ok {
		b.hash = sha256.New()
		if header != "" {
			b.want = append(b.want, expected{header, "the digest its Docker-Content-Digest header names"})
		}
		if _, ref, _ := strings.Cut(req.URL.Path, "/manifests/"); validDigest.MatchString(ref) {
			b.want = append(b.want, expected{ref, "the digest it was asked for"})
		}
	}
	resp.Body = b
	return resp, nil
}

type expected struct{ digest, source string }

// guardedBody reads at most MaxBodyBytes and, for a manifest, checks at
// the end that the content hashes to what was expected.
type guardedBody struct {
	rc                 io.ReadCloser
	left               int64
	host, method, path string
	hash               hash.Hash
	want               []expected
	err                error
}

func (b *guardedBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if int64(len(p)) > b.left+1 {
		p = p[:b.left+1]
	}
	n, err := b.rc.Read(p)
	b.left -= int64(n)
	if b.left < 0 {
		b.err = &TooLargeError{Host: b.host, Method: b.method, Path: b.path, Declared: -1}
		return 0, b.err
	}
	if b.hash != nil {
		b.hash.Write(p[:n])
	}
	if err == io.EOF && b.hash != nil {
		got := "sha256:" + hex.EncodeToString(b.hash.Sum(nil))
		for _, w := range b.want {
			if w.digest != got {
				b.err = &DigestMismatchError{Host: b.host, Path: b.path, Want: w.digest, Source: w.source, Got: got}
				return 0, b.err
			}
		}
	}
	return n, err
}

func (b *guardedBody) Close() error { return b.rc.Close() }
