package registry

import (
	"context"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"syscall"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
)

// dialTo sends every connection of r to addr, whatever host a request
// names, so that tests can give an in-process registry the name of a
// private or public registry.
func dialTo(r *Resolver, addr string) {
	pt := r.transport.(*politeTransport)
	for _, rt := range []http.RoundTripper{pt.secure, pt.insecure} {
		rt.(*http.Transport).DialContext = func(ctx context.Context, network, _ string) (net.Conn, error) {
			var d net.Dialer
			return d.DialContext(ctx, network, addr)
		}
	}
}

// basicAuth makes the test registry ask for Basic credentials: valid
// ones pass, invalid ones are refused (401, as Docker Hub refuses a stale
// secret even for a public image), and without any only repositories in
// public are served. seen records the credentials sent.
func basicAuth(valid func(user, pass string) bool, seen *authLog, public ...string) func(w http.ResponseWriter, r *http.Request) bool {
	return func(w http.ResponseWriter, r *http.Request) bool {
		user, pass, ok := r.BasicAuth()
		if ok {
			seen.add(user + ":" + pass)
			if valid(user, pass) {
				return false
			}
		} else {
			for _, p := range public {
				if strings.HasPrefix(r.URL.Path, "/v2/"+p+"/") {
					return false
				}
			}
		}
		w.Header().Set("WWW-Authenticate", `Basic realm="imagepin-test"`)
		w.WriteHeader(http.StatusUnauthorized)
		return true
	}
}

type authLog struct {
	mu   sync.Mutex
	sent []string
}

func (l *authLog) add(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.sent = append(l.sent, s)
}

func (l *authLog) last() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.sent) == 0 {
		return ""
	}
	return l.sent[len(l.sent)-1]
}

// rotatingKeychain hands out a new password on every call, as the ECR
// and ACR helpers hand out a new token.
type rotatingKeychain struct {
	mu    sync.Mutex
	calls int
}

func (k *rotatingKeychain) Resolve(authn.Resource) (authn.Authenticator, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.calls++
	return authn.FromConfig(authn.AuthConfig{Username: "AWS", Password: fmt.Sprintf("token-%d", k.calls)}), nil
}

func (k *rotatingKeychain) count() int {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.calls
}

// valid accepts any token it handed out.
func (k *rotatingKeychain) valid(user, pass string) bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	var n int
	_, err := fmt.Sscanf(pass, "token-%d", &n)
	return user == "AWS" && err == nil && n >= 1 && n <= k.calls
}

// countingKeychain counts the calls a cloud keychain gets, and offers a
// token.
type countingKeychain struct {
	mu    sync.Mutex
	hosts []string
}

func (k *countingKeychain) Resolve(target authn.Resource) (authn.Authenticator, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.hosts = append(k.hosts, target.RegistryStr())
	return authn.FromConfig(authn.AuthConfig{Username: "cloud", Password: "cloud-token"}), nil
}

func (k *countingKeychain) asked() []string {
	k.mu.Lock()
	defer k.mu.Unlock()
	return append([]string(nil), k.hosts...)
}

// captureStderr returns what fn wrote to the process's stderr, file
// descriptor 2 included (where an SDK's logger may write directly).
func captureStderr(t *testing.T, fn func()) string {
	t.Helper()
	rd, wr, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	saved, err := syscall.Dup(2)
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Dup2(int(wr.Fd()), 2); err != nil {
		t.Fatal(err)
	}
	old := os.Stderr
	os.Stderr = wr
	out := make(chan string)
	go func() {
		b, _ := io.ReadAll(rd)
		out <- string(b)
	}()
	fn()
	os.Stderr = old
	_ = syscall.Dup2(saved, 2)
	_ = syscall.Close(saved)
	_ = wr.Close()
	s := <-out
	_ = rd.Close()
	return s
}
