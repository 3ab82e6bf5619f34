package faulttest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"sync"
	"testing"
	"time"
)

// Options say how a Proxy serves.
type Options struct {
	// Upstream is the registry's base URL, "http://127.0.0.1:5000" or
	// "https://…".
	Upstream string
	// Transport reaches the upstream (its CA trusted); nil is
	// http.DefaultTransport.
	Transport http.RoundTripper
	// Certificate, if set, makes the proxy serve HTTPS with it; clients
	// must trust its CA. UntrustedTLS swaps it for one of a CA made here.
	Certificate *tls.Certificate
}

// Proxy serves an Injector on 127.0.0.1, forwarding to a registry.
type Proxy struct {
	*Injector
	// Host is "127.0.0.1:<port>", the registry host clients name.
	Host string

	tls *tls.Config

	mu     sync.Mutex
	srv    *http.Server
	closed bool
}

// New starts a proxy in front of o.Upstream; it is closed when the test
// ends.
func New(t testing.TB, o Options) *Proxy {
	t.Helper()
	p, err := Start(o)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(p.Close)
	return p
}

// Start starts a proxy in front of o.Upstream; Close stops it.
func Start(o Options) (*Proxy, error) {
	u, err := url.Parse(o.Upstream)
	if err != nil || u.Host == "" {
		return nil, fmt.Errorf("faulttest: upstream %q is not a URL", o.Upstream)
	}
	rt := o.Transport
	if rt == nil {
		rt = http.DefaultTransport
	}
	p := &Proxy{Injector: Forward(u, rt)}
	if o.Certificate != nil {
		untrusted, err := selfSigned()
		if err != nil {
			return nil, err
		}
		p.tls = tlsConfig(*o.Certificate, untrusted, p.Injector)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return nil, err
	}
	p.Host = ln.Addr().String()
	p.serve(ln)
	return p, nil
}

// URL is the proxy's base URL.
func (p *Proxy) URL() string {
	if p.tls != nil {
		return "https://" + p.Host
	}
	return "http://" + p.Host
}

func (p *Proxy) serve(ln net.Listener) {
	if p.tls != nil {
		ln = tls.NewListener(ln, p.tls)
	}
	srv := &http.Server{Handler: p.Injector, ReadHeaderTimeout: 10 * time.Second, ErrorLog: log.New(io.Discard, "", 0)}
	p.srv = srv
	go func() { _ = srv.Serve(ln) }()
}

// Set switches the faults. Refuse closes the listener (and every
// connection); leaving it listens again on the same address. A change of
// UntrustedTLS drops every connection, so that the next one shakes hands
// with the new certificate.
func (p *Proxy) Set(f Faults) {
	prev := p.Faults()
	p.Injector.Set(f)
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.closed {
		return
	}
	restart := prev.UntrustedTLS != f.UntrustedTLS
	switch {
	case f.Refuse && p.srv != nil:
		_ = p.srv.Close()
		p.srv = nil
	case !f.Refuse && p.srv == nil:
		p.listenAgain()
	case restart && p.srv != nil:
		_ = p.srv.Close()
		p.srv = nil
		p.listenAgain()
	}
}

func (p *Proxy) listenAgain() {
	var ln net.Listener
	var err error
	// The port was just released; binding it again can race the kernel.
	for range 50 {
		if ln, err = net.Listen("tcp", p.Host); err == nil {
			p.serve(ln)
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	panic(fmt.Sprintf("faulttest: listen again on %s: %v", p.Host, err))
}

// Close stops the proxy and drops its connections.
func (p *Proxy) Close() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.closed = true
	if p.srv != nil {
		_ = p.srv.Close()
		p.srv = nil
	}
}

// selfSigned makes a certificate for 127.0.0.1 signed by nobody anyone
// trusts.
func selfSigned() (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "untrusted faulttest"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, err
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}, nil
}
