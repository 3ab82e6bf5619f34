package testenv

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"golang.org/x/crypto/bcrypt"
)

// RegistryVersion is the distribution registry `make` builds into
// bin/registry-<version>; keep it in step with the Makefile.
const RegistryVersion = "v3.1.2"

// Registry is a running distribution registry with htpasswd auth and TLS
// from a CA made for it.
type Registry struct {
	// Host is "127.0.0.1:<port>".
	Host string
	// User and Password are the one account htpasswd knows.
	User, Password string
	// CAFile is the PEM CA that signed the registry's certificate.
	CAFile string
	// CAPool holds that CA, for clients.
	CAPool *x509.CertPool
	// Dir holds the configuration, the data and registry.log.
	Dir string

	bin     string
	opts    RegistryOptions
	ownDir  bool          // Dir was made by StartRegistry and is removed by Stop
	cmd     *exec.Cmd     // nil while down
	done    chan struct{} // closed when the process has exited
	waitErr error         // how it exited, once done is closed
}

// RegistryOptions say where a registry keeps its files and listens.
type RegistryOptions struct {
	// Dir is the directory for configuration, data and log; empty makes a
	// temporary one that Stop removes.
	Dir string
	// Addr is the "127.0.0.1:<port>" to listen on; empty picks a free port.
	Addr string
	// NotifyURL, if set, is where the registry POSTs its notifications
	// (pushes of manifests only), with "Authorization: Bearer NotifyToken".
	NotifyURL, NotifyToken string
	// AccessLog writes a line per request, with its User-Agent, to
	// registry.log (AccessLogLines reads it).
	AccessLog bool
}

// StartRegistry starts bin/registry-<version> in a temporary directory on a
// free port. A missing binary is an error, never a skip: `make test` builds
// it.
func StartRegistry() (*Registry, error) { return StartRegistryWith(RegistryOptions{}) }

// StartRegistryWith starts the registry as o says.
func StartRegistryWith(o RegistryOptions) (*Registry, error) {
	bin := filepath.Join(RepoRoot(), "bin", "registry-"+RegistryVersion)
	if p := os.Getenv("IMAGEPIN_REGISTRY"); p != "" {
		bin = p
	}
	if _, err := os.Stat(bin); err != nil {
		return nil, fmt.Errorf("distribution registry not found at %s (run `make test`, which builds it): %w", bin, err)
	}
	r := &Registry{Dir: o.Dir, Host: o.Addr, bin: bin, User: "imagepin", Password: "s3cret-" + randomHex(8), opts: o}
	if r.Dir == "" {
		dir, err := os.MkdirTemp("", "imagepin-registry-")
		if err != nil {
			return nil, err
		}
		r.Dir, r.ownDir = dir, true
	} else if err := os.MkdirAll(r.Dir, 0o755); err != nil {
		return nil, err
	}
	if err := r.writeConfig(); err != nil {
		_ = r.Stop()
		return nil, err
	}
	if err := r.Up(); err != nil {
		_ = r.Stop()
		return nil, err
	}
	return r, nil
}

// Up starts the registry process if it is down, on the same address with
// the same data and credentials, and waits until it answers.
func (r *Registry) Up() error {
	if r.cmd != nil {
		return nil
	}
	log, err := os.OpenFile(filepath.Join(r.Dir, "registry.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return err
	}
	cmd := exec.Command(r.bin, "serve", filepath.Join(r.Dir, "config.yml"))
	cmd.Stdout, cmd.Stderr = log, log
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		_ = log.Close()
		return fmt.Errorf("start registry: %w", err)
	}
	r.cmd, r.done = cmd, make(chan struct{})
	go func(done chan struct{}) { r.waitErr = cmd.Wait(); _ = log.Close(); close(done) }(r.done)
	if err := r.waitReady(); err != nil {
		out, _ := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
		_ = r.Down()
		return fmt.Errorf("%w\nregistry log:\n%s", err, out)
	}
	return nil
}

// Down stops the registry process and keeps its data, address and
// credentials, as a registry outage does; Up brings it back.
func (r *Registry) Down() error {
	if r.cmd == nil {
		return nil
	}
	_ = r.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-r.done:
	case <-time.After(10 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	r.cmd = nil
	return nil
}

// GarbageCollect runs the registry's own garbage collection as its
// operators do: `registry garbage-collect --delete-untagged` deletes every
// manifest no tag points at, and the blobs only those used. It must not
// run against a live registry, so the registry is stopped first and
// started again after. It returns what garbage-collect printed.
func (r *Registry) GarbageCollect() (string, error) {
	if err := r.Down(); err != nil {
		return "", err
	}
	out, err := exec.Command(r.bin, "garbage-collect", "--delete-untagged", filepath.Join(r.Dir, "config.yml")).CombinedOutput()
	if err != nil {
		_ = r.Up()
		return string(out), fmt.Errorf("registry garbage-collect: %w\n%s", err, out)
	}
	return string(out), r.Up()
}

func (r *Registry) writeConfig() error {
	if r.Host == "" {
		port, err := FreePort()
		if err != nil {
			return err
		}
		r.Host = fmt.Sprintf("127.0.0.1:%d", port)
	}
	caPEM, certPEM, keyPEM, err := MakeCerts("imagepin test CA")
	if err != nil {
		return err
	}
	r.CAFile = filepath.Join(r.Dir, "ca.pem")
	r.CAPool = x509.NewCertPool()
	r.CAPool.AppendCertsFromPEM(caPEM)
	hash, err := bcrypt.GenerateFromPassword([]byte(r.Password), bcrypt.MinCost)
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.pem":   caPEM,
		"cert.pem": certPEM,
		"key.pem":  keyPEM,
		"htpasswd": []byte(r.User + ":" + string(hash) + "\n"),
		"config.yml": fmt.Appendf(nil, `version: 0.1
log:
  level: warn
  accesslog:
    disabled: %[4]v
storage:
  filesystem:
    rootdirectory: %[1]s/data
  delete:
    enabled: true
http:
  addr: %[2]s
  secret: imagepin-test-secret
  tls:
    certificate: %[1]s/cert.pem
    key: %[1]s/key.pem
auth:
  htpasswd:
    realm: imagepin-test
    path: %[1]s/htpasswd
%[3]s`, r.Dir, r.Host, r.notifications(), !r.opts.AccessLog),
	}
	for name, data := range files {
		if err := os.WriteFile(filepath.Join(r.Dir, name), data, 0o600); err != nil {
			return err
		}
	}
	return nil
}

// AccessLogLines returns the registry's access log lines (with
// RegistryOptions.AccessLog) that contain every one of parts.
func (r *Registry) AccessLogLines(parts ...string) ([]string, error) {
	raw, err := os.ReadFile(filepath.Join(r.Dir, "registry.log"))
	if err != nil {
		return nil, err
	}
	var out []string
	for _, line := range strings.Split(string(raw), "\n") {
		all := true
		for _, p := range parts {
			all = all && strings.Contains(line, p)
		}
		if all {
			out = append(out, line)
		}
	}
	return out, nil
}

// notifications is the configuration section that points the registry's
// notifications at NotifyURL, as README's Push events section says.
func (r *Registry) notifications() string {
	if r.opts.NotifyURL == "" {
		return ""
	}
	return fmt.Sprintf(`notifications:
  endpoints:
  - name: imagepin
    url: %s
    headers:
      Authorization: [Bearer %s]
    timeout: 2s
    threshold: 3
    backoff: 1s
    ignore:
      mediatypes: [application/octet-stream]
      actions: [pull]
`, r.opts.NotifyURL, r.opts.NotifyToken)
}

// waitReady polls /v2/ until the registry asks for credentials.
func (r *Registry) waitReady() error {
	c := &http.Client{Timeout: time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: r.CAPool, MinVersion: tls.VersionTLS12}}}
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		select {
		case <-r.done:
			return fmt.Errorf("registry exited: %w", r.waitErr)
		default:
		}
		req, _ := http.NewRequestWithContext(context.Background(), http.MethodGet, "https://"+r.Host+"/v2/", nil)
		if resp, err := c.Do(req); err == nil {
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusUnauthorized {
				return nil
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	return errors.New("registry did not answer on " + r.Host + " within 30s")
}

// Transport returns an HTTP transport that trusts the registry's CA.
func (r *Registry) Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.TLSClientConfig = &tls.Config{RootCAs: r.CAPool, MinVersion: tls.VersionTLS12}
	return t
}

// Stop stops the registry, and removes its files when StartRegistry made
// the directory.
func (r *Registry) Stop() error {
	_ = r.Down()
	if r.ownDir {
		return os.RemoveAll(r.Dir)
	}
	return nil
}

// DockerConfigJSON returns a .dockerconfigjson for host with user and
// password, as `kubectl create secret docker-registry` writes it.
func DockerConfigJSON(host, user, password string) []byte {
	return fmt.Appendf(nil, `{"auths":{%q:{"username":%q,"password":%q}}}`, host, user, password)
}

// FreePort returns a TCP port on 127.0.0.1 that nothing listens on.
func FreePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer func() { _ = l.Close() }()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// MakeCerts makes a CA named caName and a serving certificate for
// 127.0.0.1 and localhost signed by it, all PEM.
func MakeCerts(caName string) (caPEM, certPEM, keyPEM []byte, err error) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	now := time.Now()
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: caName},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	ca, err := x509.ParseCertificate(caDER)
	if err != nil {
		return nil, nil, nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "127.0.0.1"},
		NotBefore: now.Add(-time.Hour), NotAfter: now.Add(24 * time.Hour),
		IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}, DNSNames: []string{"localhost"},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return nil, nil, nil, err
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, nil, err
	}
	enc := func(typ string, b []byte) []byte {
		var buf bytes.Buffer
		_ = pem.Encode(&buf, &pem.Block{Type: typ, Bytes: b})
		return buf.Bytes()
	}
	return enc("CERTIFICATE", caDER), enc("CERTIFICATE", der), enc("EC PRIVATE KEY", keyDER), nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return fmt.Sprintf("%x", b)
}
