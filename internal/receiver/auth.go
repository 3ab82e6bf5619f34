package receiver

import (
	"bytes"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/hex"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"k8s.io/utils/clock"
)

// How each endpoint's sender proves itself, the way that registry can.
type authMethod int

const (
	// authHeader: the registry sends a configured Authorization header
	// (distribution's endpoint headers, Harbor's auth header, ACR's custom
	// headers): the token, with or without "Bearer ".
	authHeader authMethod = iota
	// authPath: the registry can send nothing but the URL (Docker Hub,
	// Quay, a Pub/Sub push subscription): the token is its last element.
	authPath
	// authGitHub: GitHub signs the body with the webhook's secret
	// (X-Hub-Signature-256: sha256=<hex>).
	authGitHub
	// authGeneric: X-Signature: sha256=<hex HMAC of the body>, or the
	// token as a bearer token.
	authGeneric
)

var authOf = map[string]authMethod{
	Distribution: authHeader,
	Harbor:       authHeader,
	ACR:          authHeader,
	DockerHub:    authPath,
	Quay:         authPath,
	GAR:          authPath,
	GHCR:         authGitHub,
	Generic:      authGeneric,
}

// authentic reports whether r, with body, comes from who holds secret.
// pathToken is the URL's token element, if any.
func authentic(method authMethod, secret []byte, r *http.Request, pathToken string, body []byte) bool {
	switch method {
	case authHeader:
		return bearerMatches(r.Header.Get("Authorization"), secret, true)
	case authPath:
		return equal([]byte(pathToken), secret)
	case authGitHub:
		return signatureMatches(r.Header.Get("X-Hub-Signature-256"), secret, body)
	case authGeneric:
		if sig := r.Header.Get("X-Signature"); sig != "" {
			return signatureMatches(sig, secret, body)
		}
		return bearerMatches(r.Header.Get("Authorization"), secret, false)
	}
	return false
}

// bearerMatches compares an Authorization header with the token: "Bearer
// <token>", or the bare token where raw is allowed (Harbor sends its auth
// header's value as it is).
func bearerMatches(header string, secret []byte, raw bool) bool {
	if v, ok := strings.CutPrefix(header, "Bearer "); ok {
		return equal([]byte(v), secret)
	}
	return raw && equal([]byte(header), secret)
}

// signatureMatches checks "sha256=<hex>" against the body's HMAC-SHA256.
func signatureMatches(header string, secret, body []byte) bool {
	hexSig, ok := strings.CutPrefix(header, "sha256=")
	if !ok {
		return false
	}
	sig, err := hex.DecodeString(hexSig)
	if err != nil {
		return false
	}
	mac := hmac.New(sha256.New, secret)
	mac.Write(body)
	return hmac.Equal(sig, mac.Sum(nil))
}

// equal compares in constant time; an empty token never matches.
func equal(got, want []byte) bool {
	return len(want) > 0 && subtle.ConstantTimeCompare(got, want) == 1
}

// secretsReloadAfter is how long a read Secret file is trusted before it is
// read again: a rotated Secret is taken up within the kubelet's sync plus
// this.
const secretsReloadAfter = 10 * time.Second

// secrets reads each endpoint's token or HMAC key from a file named after
// the endpoint in a directory (a Secret mounted as a volume), so rotation
// needs no restart and no API access. An endpoint without a file, or with
// an empty one, is not served.
type secrets struct {
	dir   string
	clock clock.PassiveClock

	mu     sync.Mutex
	read   map[string][]byte
	readAt map[string]time.Time
}

func (s *secrets) of(endpoint string) []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.clock.Now()
	if at, ok := s.readAt[endpoint]; ok && now.Sub(at) < secretsReloadAfter {
		return s.read[endpoint]
	}
	b, err := os.ReadFile(filepath.Join(s.dir, endpoint))
	if err != nil {
		b = nil
	}
	b = bytes.TrimSpace(b)
	if s.read == nil {
		s.read, s.readAt = map[string][]byte{}, map[string]time.Time{}
	}
	s.read[endpoint], s.readAt[endpoint] = b, now
	return b
}
