// Package faulttest puts a fault-injecting HTTP(S) proxy in front of a real
// registry (the distribution registry, or go-containerregistry's in-process
// one) for tests: switched at runtime, it refuses connections, hangs up,
// answers late, answers 429, 401 or 5xx, fails TLS or the token service,
// drops, mangles or lies in Docker-Content-Digest, corrupts manifests or
// streams a response far larger than any manifest. It counts the requests
// it saw by method and path, and the body bytes it sent.
//
// Injector is the fault logic as an http.Handler around any upstream; Proxy
// serves an Injector on its own address, forwarding to a registry's URL.
package faulttest

import (
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"sync"
	"time"
)

// Faults say how requests are answered; the zero value forwards every
// request untouched. Faults that answer instead of the registry apply to
// every request (the /v2/ ping included) unless Repo confines them.
type Faults struct {
	// Repo, if set, confines the faults to requests under /v2/<Repo>/;
	// others are forwarded.
	Repo string

	// Refuse closes the proxy's listener: connections are refused until
	// the faults change (Proxy only).
	Refuse bool
	// Hangup accepts each request and closes the connection unanswered.
	Hangup bool
	// Delay holds each request this long before it is handled (less if
	// the client goes away first).
	Delay time.Duration
	// Status answers every request with this status: 429 (with
	// RetryAfter as Retry-After, if set), 401 (with a Basic challenge,
	// whatever the credentials), 5xx…
	Status     int
	RetryAfter string
	// FlapStatus answers every other request with this status and
	// forwards the rest.
	FlapStatus int
	// UntrustedTLS serves a certificate of a CA no client trusts (Proxy
	// serving TLS only).
	UntrustedTLS bool
	// TokenStatus, if set, asks for a bearer token from the proxy's own
	// /token, which answers with this status and a body that echoes the
	// credentials it was sent, as a careless token service might.
	TokenStatus int

	// OmitHeadDigest drops Docker-Content-Digest from manifest HEADs;
	// HeadDigest, if set, replaces it.
	OmitHeadDigest bool
	HeadDigest     string
	// OmitGetDigest and GetDigest do the same for manifest GETs.
	OmitGetDigest bool
	GetDigest     string
	// CorruptManifest appends a newline to manifest GET bodies, headers
	// kept: still JSON, but not the content the digest names.
	CorruptManifest bool
	// HugeManifest answers manifest GETs with this many bytes, streamed
	// chunked, or with a Content-Length if HugeDeclared.
	HugeManifest int64
	HugeDeclared bool
}

// Injector is the fault logic as an http.Handler in front of an upstream.
type Injector struct {
	forward func(*http.Request) (*http.Response, error)

	mu        sync.Mutex
	faults    Faults
	flap      int
	requests  map[string]int // "METHOD /path"
	bodyBytes int64
}

// Wrap returns an Injector in front of next, an in-process registry's
// handler.
func Wrap(next http.Handler) *Injector {
	return &Injector{requests: map[string]int{}, forward: func(r *http.Request) (*http.Response, error) {
		rec := httptest.NewRecorder()
		next.ServeHTTP(rec, r)
		resp := rec.Result()
		resp.Request = r
		return resp, nil
	}}
}

// Forward returns an Injector in front of the registry at upstream,
// reached with rt.
func Forward(upstream *url.URL, rt http.RoundTripper) *Injector {
	return &Injector{requests: map[string]int{}, forward: func(r *http.Request) (*http.Response, error) {
		out := r.Clone(r.Context())
		out.RequestURI = ""
		out.URL.Scheme, out.URL.Host, out.Host = upstream.Scheme, upstream.Host, upstream.Host
		for _, h := range []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"} {
			out.Header.Del(h)
		}
		return rt.RoundTrip(out)
	}}
}

// Set switches the faults; Faults{} forwards everything again.
func (in *Injector) Set(f Faults) {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.faults, in.flap = f, 0
}

// Faults returns the faults in force.
func (in *Injector) Faults() Faults {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.faults
}

// Count returns how many requests had method ("" for any) and a path
// containing pathPart ("" for any), since the start or the last Reset.
func (in *Injector) Count(method, pathPart string) int {
	in.mu.Lock()
	defer in.mu.Unlock()
	n := 0
	for k, c := range in.requests {
		m, p, _ := strings.Cut(k, " ")
		if (method == "" || m == method) && strings.Contains(p, pathPart) {
			n += c
		}
	}
	return n
}

// Requests returns a copy of the request counts by "METHOD /path".
func (in *Injector) Requests() map[string]int {
	in.mu.Lock()
	defer in.mu.Unlock()
	out := make(map[string]int, len(in.requests))
	for k, v := range in.requests {
		out[k] = v
	}
	return out
}

// BodyBytes returns how many response body bytes clients accepted (the
// kernel's socket buffers included), since the start or the last Reset.
func (in *Injector) BodyBytes() int64 {
	in.mu.Lock()
	defer in.mu.Unlock()
	return in.bodyBytes
}

// Reset zeroes the counts.
func (in *Injector) Reset() {
	in.mu.Lock()
	defer in.mu.Unlock()
	in.requests, in.bodyBytes = map[string]int{}, 0
}

func (in *Injector) addBytes(n int) {
	in.mu.Lock()
	in.bodyBytes += int64(n)
	in.mu.Unlock()
}

// ServeHTTP counts the request and answers it as the faults say.
func (in *Injector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	in.mu.Lock()
	in.requests[r.Method+" "+r.URL.Path]++
	f := in.faults
	applies := f.Repo == "" || strings.HasPrefix(r.URL.Path, "/v2/"+f.Repo+"/")
	flapNow := false
	if applies && f.FlapStatus != 0 {
		in.flap++
		flapNow = in.flap%2 == 1
	}
	in.mu.Unlock()
	cw := &countingWriter{ResponseWriter: w, in: in}

	if r.URL.Path == "/token" && f.TokenStatus != 0 {
		in.failToken(cw, r, f.TokenStatus)
		return
	}
	if !applies {
		in.pass(cw, r, Faults{})
		return
	}
	if f.Delay > 0 {
		select {
		case <-time.After(f.Delay):
		case <-r.Context().Done():
			return
		}
	}
	switch {
	case f.Hangup:
		hangup(w)
		return
	case f.TokenStatus != 0 && !strings.HasPrefix(r.Header.Get("Authorization"), "Bearer "):
		scheme := "http"
		if r.TLS != nil {
			scheme = "https"
		}
		w.Header().Set("WWW-Authenticate", fmt.Sprintf(`Bearer realm="%s://%s/token",service="faulttest"`, scheme, r.Host))
		answer(cw, http.StatusUnauthorized, "UNAUTHORIZED", "authentication required")
		return
	case f.Status != 0:
		switch f.Status {
		case http.StatusTooManyRequests:
			if f.RetryAfter != "" {
				w.Header().Set("Retry-After", f.RetryAfter)
			}
			answer(cw, f.Status, "TOOMANYREQUESTS", "too many requests")
		case http.StatusUnauthorized:
			w.Header().Set("WWW-Authenticate", `Basic realm="faulttest"`)
			answer(cw, f.Status, "UNAUTHORIZED", "authentication required")
		default:
			answer(cw, f.Status, "UNAVAILABLE", "the fault injector says so")
		}
		return
	case flapNow:
		answer(cw, f.FlapStatus, "UNAVAILABLE", "flapping")
		return
	case f.HugeManifest > 0 && r.Method == http.MethodGet && isManifest(r):
		in.huge(cw, r, f)
		return
	}
	in.pass(cw, r, f)
}

func isManifest(r *http.Request) bool { return strings.Contains(r.URL.Path, "/manifests/") }

// pass forwards the request and writes the answer, with the manifest
// faults of f applied.
func (in *Injector) pass(w http.ResponseWriter, r *http.Request, f Faults) {
	resp, err := in.forward(r)
	if err != nil {
		http.Error(w, "faulttest: upstream: "+err.Error(), http.StatusBadGateway)
		return
	}
	defer func() { _ = resp.Body.Close() }()
	var body io.Reader = resp.Body
	length := resp.ContentLength
	if isManifest(r) && resp.StatusCode == http.StatusOK {
		switch r.Method {
		case http.MethodHead:
			editDigest(resp.Header, f.OmitHeadDigest, f.HeadDigest)
		case http.MethodGet:
			editDigest(resp.Header, f.OmitGetDigest, f.GetDigest)
			if f.CorruptManifest {
				b, err := io.ReadAll(io.LimitReader(resp.Body, 16<<20))
				if err != nil {
					http.Error(w, "faulttest: upstream body: "+err.Error(), http.StatusBadGateway)
					return
				}
				b = append(b, '\n')
				body, length = bytes.NewReader(b), int64(len(b))
			}
		}
	}
	for k, vs := range resp.Header {
		if k == "Content-Length" {
			continue
		}
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	if length >= 0 {
		w.Header().Set("Content-Length", fmt.Sprint(length))
	}
	w.WriteHeader(resp.StatusCode)
	if r.Method != http.MethodHead {
		_, _ = io.Copy(w, body)
	}
}

func editDigest(h http.Header, omit bool, replace string) {
	switch {
	case omit:
		h.Del("Docker-Content-Digest")
	case replace != "":
		h.Set("Docker-Content-Digest", replace)
	}
}

// huge streams f.HugeManifest bytes of a manifest that never ends.
func (in *Injector) huge(w http.ResponseWriter, r *http.Request, f Faults) {
	w.Header().Set("Content-Type", "application/vnd.oci.image.manifest.v1+json")
	if f.HugeDeclared {
		w.Header().Set("Content-Length", fmt.Sprint(f.HugeManifest))
	}
	w.WriteHeader(http.StatusOK)
	chunk := bytes.Repeat([]byte(" "), 32<<10)
	for left := f.HugeManifest; left > 0; {
		n := min(left, int64(len(chunk)))
		if _, err := w.Write(chunk[:n]); err != nil || r.Context().Err() != nil {
			return
		}
		left -= n
	}
}

// failToken answers a token request with status and a body that echoes
// the credentials it came with.
func (in *Injector) failToken(w http.ResponseWriter, r *http.Request, status int) {
	echo := r.Header.Get("Authorization")
	if user, pass, ok := r.BasicAuth(); ok {
		echo += " (" + user + ":" + pass + ")"
	}
	w.Header().Set("Content-Type", "text/plain")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, "token service broken; you sent %s", echo)
}

func answer(w http.ResponseWriter, status int, code, msg string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = fmt.Fprintf(w, `{"errors":[{"code":%q,"message":%q}]}`, code, msg)
}

func hangup(w http.ResponseWriter) {
	hj, ok := w.(http.Hijacker)
	if !ok {
		panic("faulttest: Hangup needs a ResponseWriter that can be hijacked")
	}
	conn, _, err := hj.Hijack()
	if err == nil {
		_ = conn.Close()
	}
}

// countingWriter counts the body bytes written through it.
type countingWriter struct {
	http.ResponseWriter
	in *Injector
}

func (c *countingWriter) Write(b []byte) (int, error) {
	n, err := c.ResponseWriter.Write(b)
	c.in.addBytes(n)
	return n, err
}

func (c *countingWriter) Flush() {
	if f, ok := c.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

// BasicAuthorization is the Authorization header value of user and
// password, for tests that check an error does not show it.
func BasicAuthorization(user, password string) string {
	return "Basic " + base64.StdEncoding.EncodeToString([]byte(user+":"+password))
}

// tlsConfig serves the certificate the faults ask for.
func tlsConfig(trusted, untrusted tls.Certificate, in *Injector) *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			if in.Faults().UntrustedTLS {
				return &untrusted, nil
			}
			return &trusted, nil
		},
	}
}
