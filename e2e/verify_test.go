package e2e

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/testenv"
)

// CosignVersion is the cosign `make` builds into bin/cosign-<version>;
// keep it in step with the Makefile's COSIGN_VERSION.
const CosignVersion = "v3.1.3"

// Issue 18: a Follow ImagePin with spec.verify rolls out a signed re-push
// once, reports an unsigned one Unverified and never writes it, and rolls
// it out once it is signed; at admission, an unsigned tag is refused under
// failurePolicy Fail, naming the image, and a signed one is pinned. The
// signatures are made by the real cosign CLI, in both of its formats.
func TestFollowOnlyWhatIsSigned(t *testing.T) {
	ns := "verify"
	useNamespace(t, ns, true)
	ctx := context.Background()
	cs := newCosign(t)
	secret := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "signing-keys"},
		Data:       map[string][]byte{"cosign.pub": cs.publicKey},
	}
	if err := local.Client.Create(ctx, secret); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = local.Client.Delete(ctx, secret) })

	image := local.Registry.Host + "/verify/app:v1"
	build1 := push(t, "verify/app:v1", "verify build 1")
	cs.sign(t, image, build1, true)
	apply(t, ns, deploymentYAML("web", image, 1))
	apply(t, ns, verifyPinYAML("Follow", "Ignore"))
	waitImage(t, ns, "web", image+"@"+string(build1))
	waitRolledOut(t, ns, "web")
	p := waitPin(t, ns, "build 1 verified", func(p *imagesv1alpha1.ImagePin) error {
		if err := verificationOf(p, image, build1, true); err != nil {
			return err
		}
		return condition(p, imagesv1alpha1.ConditionVerified, metav1.ConditionTrue)
	})
	t.Logf("build 1: %s", p.Status.Images[0].Verification.Message)

	// A signed re-push rolls out, once.
	before := replicaSets(t, ns, "web")
	build2 := push(t, "verify/app:v1", "verify build 2")
	cs.sign(t, image, build2, true)
	waitImage(t, ns, "web", image+"@"+string(build2))
	waitRolledOut(t, ns, "web")
	if got := replicaSets(t, ns, "web"); got != before+1 {
		t.Fatalf("ReplicaSets after one signed push = %d, want %d", got, before+1)
	}

	// An unsigned re-push is reported Unverified, and not written: the
	// status is patched after the check's writes, so once it says
	// Unverified the Deployment shows what that check did.
	build3 := push(t, "verify/app:v1", "verify build 3, unsigned")
	p = waitPin(t, ns, "build 3 reported Unverified", func(p *imagesv1alpha1.ImagePin) error {
		if err := digestOf(p, image, build3, imagesv1alpha1.DriftUnverified); err != nil {
			return err
		}
		if err := verificationOf(p, image, build3, false); err != nil {
			return err
		}
		return condition(p, imagesv1alpha1.ConditionVerified, metav1.ConditionFalse)
	})
	c := meta.FindStatusCondition(p.Status.Conditions, imagesv1alpha1.ConditionVerified)
	if !strings.Contains(c.Message, image+"@"+string(build3)) || !strings.Contains(c.Message, string(imagesv1alpha1.VerificationUnsigned)) {
		t.Errorf("Verified condition's message does not name the image, the digest and the reason: %s", c.Message)
	}
	checked := p.Status.LastCheckTime
	// Two more checks (10s interval) still write nothing.
	waitPin(t, ns, "two more checks", func(p *imagesv1alpha1.ImagePin) error {
		if p.Status.LastCheckTime == nil || p.Status.LastCheckTime.Sub(checked.Time) < 15*time.Second {
			return fmt.Errorf("last check %v", p.Status.LastCheckTime)
		}
		return nil
	})
	if got := deployment(t, ns, "web").Spec.Template.Spec.Containers[0].Image; got != image+"@"+string(build2) {
		t.Fatalf("an unsigned digest was written: the Deployment names %s", got)
	}
	if got := replicaSets(t, ns, "web"); got != before+1 {
		t.Fatalf("ReplicaSets after an unsigned push = %d, want %d: no rollout", got, before+1)
	}

	// Signed later, it rolls out: an unverified answer is asked again at
	// the next tick.
	cs.sign(t, image, build3, false) // the legacy .sig format this time
	waitImage(t, ns, "web", image+"@"+string(build3))
	waitRolledOut(t, ns, "web")
	waitPin(t, ns, "build 3 verified", func(p *imagesv1alpha1.ImagePin) error {
		return verificationOf(p, image, build3, true)
	})
	if n := metricSum(t, local.Manager, "imagepin_verification_total", `result="verified"`); n < 3 {
		t.Errorf("imagepin_verification_total{result=\"verified\"} = %v, want at least 3", n)
	}

	// Admission, failurePolicy Fail: a Deployment naming an unsigned tag
	// is refused, naming the image; a signed one is stored pinned.
	apply(t, ns, verifyPinYAML("Pin", "Fail"))
	unsigned := local.Registry.Host + "/verify/other:v1"
	push(t, "verify/other:v1", "never signed")
	_, stderr, err := runKubectl(local.Kubeconfig, []byte(deploymentYAML("web-unsigned", unsigned, 1)), "-n", ns, "apply", "-f", "-")
	if err == nil {
		t.Fatalf("a Deployment naming the unsigned %s was admitted under failurePolicy Fail", unsigned)
	}
	if !strings.Contains(stderr, unsigned) || !strings.Contains(stderr, "did not verify") {
		t.Errorf("the refusal does not name the image and why: %s", stderr)
	}
	signed := local.Registry.Host + "/verify/signed:v1"
	signedDigest := push(t, "verify/signed:v1", "signed, legacy format")
	cs.sign(t, signed, signedDigest, false)
	apply(t, ns, deploymentYAML("web-signed", signed, 1))
	if got := deployment(t, ns, "web-signed").Spec.Template.Spec.Containers[0].Image; got != signed+"@"+string(signedDigest) {
		t.Errorf("a signed image was stored as %s, want it pinned to %s", got, signedDigest)
	}

	// failurePolicy Ignore: admitted unpinned, with a warning naming it.
	apply(t, ns, verifyPinYAML("Pin", "Ignore"))
	out, stderr, err := runKubectl(local.Kubeconfig, []byte(deploymentYAML("web-warned", unsigned, 1)), "-n", ns, "apply", "-f", "-")
	if err != nil {
		t.Fatalf("under failurePolicy Ignore an unsigned image is refused: %v: %s", err, stderr)
	}
	if !strings.Contains(stderr, "Warning") || !strings.Contains(stderr, unsigned) {
		t.Errorf("no warning naming %s: %s %s", unsigned, out, stderr)
	}
	if got := deployment(t, ns, "web-warned").Spec.Template.Spec.Containers[0].Image; got != unsigned {
		t.Errorf("the unsigned image was stored as %s, want it unpinned", got)
	}
}

func verifyPinYAML(mode, failurePolicy string) string {
	return fmt.Sprintf(`apiVersion: images.imagepin.dev/v1alpha1
kind: ImagePin
metadata: {name: web}
spec:
  mode: %s
  interval: 10s
  failurePolicy: %s
  verify:
    keys:
    - secretKeyRef: {name: signing-keys, key: cosign.pub}
`, mode, failurePolicy)
}

// verificationOf checks status.images[image]: digest, and whether it
// verified.
func verificationOf(p *imagesv1alpha1.ImagePin, image string, digest imagesv1alpha1.Digest, verified bool) error {
	for _, img := range p.Status.Images {
		if img.Image != image {
			continue
		}
		if img.Digest != digest {
			return fmt.Errorf("%s resolves to %s, want %s", image, img.Digest, digest)
		}
		if img.Verification == nil || img.Verification.Verified != verified {
			return fmt.Errorf("%s@%s verification %+v, want verified=%v", image, digest, img.Verification, verified)
		}
		return nil
	}
	return fmt.Errorf("no status for %s", image)
}

// cosignCLI runs bin/cosign with a key pair of its own, against the
// cluster's registry (its CA trusted, its account logged in).
type cosignCLI struct {
	bin, dir  string
	publicKey []byte
	env       []string
}

func newCosign(t *testing.T) *cosignCLI {
	t.Helper()
	bin := filepath.Join(testenv.RepoRoot(), "bin", "cosign-"+CosignVersion)
	if _, err := os.Stat(bin); err != nil {
		t.Fatalf("cosign not found at %s (run `make test`, which builds it): %v", bin, err)
	}
	dir := t.TempDir()
	c := &cosignCLI{bin: bin, dir: dir}
	c.env = append(os.Environ(),
		"COSIGN_PASSWORD=e2e-password",
		"HOME="+dir,
		"DOCKER_CONFIG="+filepath.Join(dir, "docker"), // none: the flags below log in
		"SSL_CERT_FILE="+local.Registry.CAFile,
		"TUF_ROOT="+filepath.Join(dir, "tuf"),
	)
	c.run(t, "generate-key-pair")
	pub, err := os.ReadFile(filepath.Join(dir, "cosign.pub"))
	if err != nil {
		t.Fatal(err)
	}
	c.publicKey = pub
	return c
}

func (c *cosignCLI) run(t *testing.T, args ...string) string {
	t.Helper()
	cmd := exec.Command(c.bin, args...)
	cmd.Dir, cmd.Env = c.dir, c.env
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	if err := cmd.Run(); err != nil {
		t.Fatalf("cosign %s: %v\n%s\n%s", strings.Join(args, " "), err, out.String(), errOut.String())
	}
	return out.String()
}

// sign signs image's digest with the key pair: as a Sigstore bundle
// attached as an OCI 1.1 referrer (bundle), or in the legacy .sig tag.
func (c *cosignCLI) sign(t *testing.T, image string, digest imagesv1alpha1.Digest, bundle bool) {
	t.Helper()
	repo := image[:strings.LastIndex(image, ":")] // the tag dropped
	// Offline: no Rekor upload, no signing config fetched from TUF.
	c.run(t, "sign", "--key", filepath.Join(c.dir, "cosign.key"), "--tlog-upload=false", "--use-signing-config=false",
		"--registry-username", local.Registry.User, "--registry-password", local.Registry.Password,
		fmt.Sprintf("--new-bundle-format=%v", bundle), "-y", repo+"@"+string(digest))
}
