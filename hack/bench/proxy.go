package main

import (
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/imagepin/imagepin/internal/testenv"
)

// Request kinds the proxy tells apart, by path.
const (
	kindPing     = "ping"     // GET /v2/: go-containerregistry's auth discovery
	kindToken    = "token"    // a token endpoint (none with htpasswd; counted if seen)
	kindManifest = "manifest" // /v2/<repo>/manifests/<ref>
	kindBlob     = "blob"     // /v2/<repo>/blobs/...
	kindOther    = "other"
)

// regEvent is one request the registry saw through the proxy.
type regEvent struct {
	at     time.Time
	method string
	kind   string
	// repo and ref are set for manifests: the repository and the tag or
	// digest asked for.
	repo, ref string
	status    int
	// agent is the User-Agent: imagepin's requests carry "imagepin".
	agent string
	// began is when the request reached the proxy (at: when it was
	// answered); conn is the client's address and protocol: two requests
	// on one connection name the same.
	began time.Time
	conn  string
}

// tagHEAD: e asked what a tag points to (a manifest HEAD by tag, not by
// digest).
func (e regEvent) tagHEAD() bool {
	return e.kind == kindManifest && e.method == http.MethodHead && !strings.Contains(e.ref, ":")
}

// countingProxy is a TLS reverse proxy in front of the real registry that
// records every request, so that registry traffic is counted at the
// registry's side of the wire, whatever the client believes it sent.
type countingProxy struct {
	// Host is "127.0.0.1:<port>", the registry host the benchmarks' image
	// references name.
	Host string
	// CAFile is the PEM CA that signed the proxy's certificate.
	CAFile string

	srv *http.Server

	mu     sync.Mutex
	events []regEvent
}

// startProxy serves a counting proxy to reg on a free port, with a
// certificate from a CA of its own written to dir/<name>-ca.pem. With
// keepHost the registry sees the proxy's host in each request's Host, as
// if clients spoke to it directly: its notifications then name the
// proxy's host, as workloads do.
func startProxy(reg *testenv.Registry, dir, name string, keepHost bool) (*countingProxy, error) {
	caPEM, certPEM, keyPEM, err := testenv.MakeCerts("imagepin bench proxy CA")
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	p := &countingProxy{CAFile: filepath.Join(dir, name+"-ca.pem")}
	if err := os.WriteFile(p.CAFile, caPEM, 0o600); err != nil {
		return nil, err
	}
	target := &url.URL{Scheme: "https", Host: reg.Host}
	rp := &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			pr.SetURL(target)
			if keepHost {
				pr.Out.Host = pr.In.Host
			}
		},
		Transport: reg.Transport(),
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.Host = l.Addr().String()
	p.srv = &http.Server{
		Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			began := time.Now()
			rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
			rp.ServeHTTP(rec, r)
			p.record(r, rec.status, began)
		}),
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, MinVersion: tls.VersionTLS12},
		ReadHeaderTimeout: 10 * time.Second,
	}
	go func() {
		if err := p.srv.ServeTLS(l, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			fmt.Fprintln(os.Stderr, "bench: registry proxy:", err)
		}
	}()
	return p, nil
}

// statusRecorder remembers the status code a handler wrote.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (s *statusRecorder) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

// Flush lets the reverse proxy stream through the recorder.
func (s *statusRecorder) Flush() {
	if f, ok := s.ResponseWriter.(http.Flusher); ok {
		f.Flush()
	}
}

func (p *countingProxy) record(r *http.Request, status int, began time.Time) {
	ev := regEvent{at: time.Now(), method: r.Method, status: status, agent: r.UserAgent(), began: began, conn: r.Proto + " " + r.RemoteAddr}
	path := r.URL.Path
	switch {
	case path == "/v2/" || path == "/v2":
		ev.kind = kindPing
	case strings.Contains(path, "/manifests/"):
		ev.kind = kindManifest
		i := strings.LastIndex(path, "/manifests/")
		ev.repo = strings.TrimPrefix(path[:i], "/v2/")
		ev.ref = path[i+len("/manifests/"):]
	case strings.Contains(path, "/blobs/"):
		ev.kind = kindBlob
	case strings.Contains(path, "token") || strings.HasPrefix(path, "/auth"):
		ev.kind = kindToken
	default:
		ev.kind = kindOther
	}
	p.mu.Lock()
	p.events = append(p.events, ev)
	p.mu.Unlock()
}

// between returns the requests seen in [from, to).
func (p *countingProxy) between(from, to time.Time) []regEvent {
	p.mu.Lock()
	defer p.mu.Unlock()
	var out []regEvent
	for _, e := range p.events {
		if !e.at.Before(from) && e.at.Before(to) {
			out = append(out, e)
		}
	}
	return out
}

// since returns the requests seen from t on.
func (p *countingProxy) since(t time.Time) []regEvent {
	return p.between(t, time.Now().Add(time.Hour))
}

// Close stops the proxy.
func (p *countingProxy) Close() {
	_ = p.srv.Close()
}

// regCounts tallies requests by what they were.
type regCounts struct {
	Total         int `json:"total"`
	Pings         int `json:"pings"`
	Tokens        int `json:"tokens"`
	ManifestHEADs int `json:"manifestHEADs"`
	// DigestHEADs are manifest HEADs by digest (digest availability
	// checks), not counted in ManifestHEADs, which ask for tags.
	DigestHEADs  int            `json:"digestHEADs"`
	ManifestGETs int            `json:"manifestGETs"`
	Blobs        int            `json:"blobs"`
	Other        int            `json:"other"`
	Non2xx       int            `json:"non2xx"`
	HEADsByTag   map[string]int `json:"-"`
}

func count(evs []regEvent) regCounts {
	c := regCounts{HEADsByTag: map[string]int{}}
	for _, e := range evs {
		c.Total++
		if e.status < 200 || e.status > 299 {
			c.Non2xx++
		}
		switch e.kind {
		case kindPing:
			c.Pings++
		case kindToken:
			c.Tokens++
		case kindManifest:
			switch e.method {
			case http.MethodHead:
				if !e.tagHEAD() {
					c.DigestHEADs++
					break
				}
				c.ManifestHEADs++
				c.HEADsByTag[e.repo+":"+e.ref]++
			case http.MethodGet:
				c.ManifestGETs++
			default:
				c.Other++
			}
		case kindBlob:
			c.Blobs++
		default:
			c.Other++
		}
	}
	return c
}

// String says what the counts are made of.
func (c regCounts) String() string {
	return fmt.Sprintf("%d requests: %d manifest HEAD by tag, %d by digest, %d manifest GET, %d ping, %d token, %d blob, %d other (%d not 2xx)",
		c.Total, c.ManifestHEADs, c.DigestHEADs, c.ManifestGETs, c.Pings, c.Tokens, c.Blobs, c.Other, c.Non2xx)
}
