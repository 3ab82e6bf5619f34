package receiver

import (
	"net/http"
	"strings"
	"sync"
	"testing"

	"github.com/prometheus/client_golang/prometheus/testutil"

	"github.com/imagepin/imagepin/internal/registry"
)

type signedRecorder struct {
	mu    sync.Mutex
	calls []string
}

func (s *signedRecorder) Signed(repository, digest string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.calls = append(s.calls, repository+"@"+digest)
}

// Issue 18: a pushed signature (cosign's legacy .sig tag, or the referrers
// tag) makes the verifier forget that its digest did not verify and has
// the ImagePins naming the repository check at once, so a digest signed
// after its push rolls out in a second. It moves no tag: no HEAD is sent.
func TestPushedSignatureRechecksTheRepository(t *testing.T) {
	f, _ := newFixture(t)
	sigs := &signedRecorder{}
	var err error
	f.rc, err = New(Options{Hinter: f.resolver, Checker: f.checker, Signatures: sigs, SecretDir: f.dir, Clock: f.clock, Metrics: f.metrics})
	if err != nil {
		t.Fatal(err)
	}
	hex := strings.Repeat("ab", 32)
	before, checked := f.heads(), f.checker.checked
	for _, tag := range []string{"sha256-" + hex + ".sig", "sha256-" + hex} {
		if code := f.post(Generic, "10.9.0.1", genericBody(f.reg.Image("team/app:"+tag)), bearer()); code != http.StatusAccepted {
			t.Fatalf("%s: status %d, want 202", tag, code)
		}
	}
	repo, err := registry.ParseTagRef(f.reg.Image("team/app"), "")
	if err != nil {
		t.Fatal(err)
	}
	want := repo.Repository + "@sha256:" + hex
	if len(sigs.calls) != 2 || sigs.calls[0] != want || sigs.calls[1] != want {
		t.Errorf("the verifier was told %v, want %s twice", sigs.calls, want)
	}
	if got := f.checker.checked - checked; got != 2 {
		t.Errorf("checks after two signature pushes = %d, want 2", got)
	}
	if got := f.heads() - before; got != 0 {
		t.Errorf("a signature push sent %d HEADs: it moves no tag", got)
	}

	// A signature of a repository nobody names, and a tag that only
	// looks like one, are not passed on.
	for _, image := range []string{f.reg.Image("team/other:sha256-" + hex + ".sig"), f.reg.Image("team/app:sha256-" + hex[:10] + ".sig")} {
		if code := f.post(Generic, "10.9.0.1", genericBody(image), bearer()); code != http.StatusAccepted {
			t.Fatalf("%s: status %d, want 202", image, code)
		}
	}
	if len(sigs.calls) != 2 {
		t.Errorf("the verifier was told of %v", sigs.calls[2:])
	}
	if got := testutil.ToFloat64(f.metrics.Pushes.WithLabelValues(Generic, resultUnused)); got != 2 {
		t.Errorf("unused pushes = %v, want 2", got)
	}
}
