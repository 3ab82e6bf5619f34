package main

import (
	"archive/tar"
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/imagepin/imagepin/internal/testenv"
)

// TestImage builds the manager's image as `make image IMAGE=...` does, with
// credentials from a Docker config and the registry's CA from --ca-file,
// pushes it to the real distribution registry, reads it back and runs the
// binary of this machine's platform. A second build, to an OCI layout,
// must give the same index digest. The first build of a cold cache
// cross-compiles the manager twice: minutes on two cores.
func TestImage(t *testing.T) {
	reg, err := testenv.StartRegistry()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop() })
	dockerConfig := t.TempDir()
	auth := base64.StdEncoding.EncodeToString([]byte(reg.User + ":" + reg.Password))
	cfgJSON := `{"auths": {"` + reg.Host + `": {"auth": "` + auth + `"}}}`
	if err := os.WriteFile(filepath.Join(dockerConfig, "config.json"), []byte(cfgJSON), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("DOCKER_CONFIG", dockerConfig)

	ref := reg.Host + "/imagepin/manager:test"
	sbomDir := t.TempDir()
	pushed := buildImage(t, "--push", ref, "--ca-file", reg.CAFile, "--sbom-dir", sbomDir)

	r, err := name.ParseReference(ref)
	if err != nil {
		t.Fatal(err)
	}
	idx, err := remote.Index(r, remote.WithContext(t.Context()),
		remote.WithAuth(&authn.Basic{Username: reg.User, Password: reg.Password}), remote.WithTransport(reg.Transport()))
	if err != nil {
		t.Fatalf("read the pushed index: %v", err)
	}
	if d, err := idx.Digest(); err != nil || d.String() != pushed {
		t.Errorf("registry's index is %v (%v), the build printed %s", d, err, pushed)
	}
	if mt, err := idx.MediaType(); err != nil || mt != types.OCIImageIndex {
		t.Errorf("index media type %q (%v), want %q", mt, err, types.OCIImageIndex)
	}
	im, err := idx.IndexManifest()
	if err != nil {
		t.Fatal(err)
	}
	var platforms []string
	var native v1.Image
	var nativeLabels map[string]string
	for _, desc := range im.Manifests {
		if desc.Platform == nil {
			t.Fatalf("manifest %s has no platform", desc.Digest)
		}
		platforms = append(platforms, desc.Platform.String())
		img, err := idx.Image(desc.Digest)
		if err != nil {
			t.Fatal(err)
		}
		checkConfig(t, img, *desc.Platform)
		if desc.Platform.Architecture == runtime.GOARCH {
			native = img
			cf, _ := img.ConfigFile()
			nativeLabels = cf.Config.Labels
		}
	}
	slices.Sort(platforms)
	if want := []string{"linux/amd64", "linux/arm64/v8"}; !slices.Equal(platforms, want) {
		t.Fatalf("index has platforms %v, want %v", platforms, want)
	}
	if native == nil {
		t.Fatalf("no image for this machine's %s", runtime.GOARCH)
	}

	files := extract(t, native)
	checkFiles(t, files)
	runHelp(t, files["imagepin"].data)
	checkSBOM(t, files["sbom.spdx.json"].data)
	written, err := os.ReadFile(filepath.Join(sbomDir, "imagepin-linux-"+runtime.GOARCH+sbomSuffix()))
	if err != nil || !bytes.Equal(written, files["sbom.spdx.json"].data) {
		t.Errorf("the SBOM written next to the output differs from the image's (%v)", err)
	}

	// Reproducible: the same commit gives the same index, layout or not.
	// The commit is the first build's: others may commit meanwhile.
	again := buildImage(t, "--layout", filepath.Join(t.TempDir(), "layout"), "--sbom-dir", t.TempDir(),
		"--revision", nativeLabels["org.opencontainers.image.revision"], "--version", nativeLabels["org.opencontainers.image.version"])
	if again != pushed {
		t.Errorf("second build's index is %s, the first's %s", again, pushed)
	}
}

func sbomSuffix() string {
	if runtime.GOARCH == "arm64" {
		return "-v8.spdx.json"
	}
	return ".spdx.json"
}

// buildImage runs the command with args and returns the index digest it
// printed.
func buildImage(t *testing.T, args ...string) string {
	t.Helper()
	var stdout, stderr bytes.Buffer
	if err := run(t.Context(), args, &stdout, &stderr); err != nil {
		t.Fatalf("image %v: %v\n%s", args, err, stderr.String())
	}
	t.Logf("image %v:\n%s", args, stdout.String())
	f := strings.Fields(stdout.String())
	if len(f) < 2 || f[0] != "index" {
		t.Fatalf("no index digest in the output:\n%s", stdout.String())
	}
	return f[1]
}

func checkConfig(t *testing.T, img v1.Image, p v1.Platform) {
	t.Helper()
	if mt, err := img.MediaType(); err != nil || mt != types.OCIManifestSchema1 {
		t.Errorf("%s: manifest media type %q (%v)", p, mt, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != p.OS || cf.Architecture != p.Architecture || cf.Variant != p.Variant {
		t.Errorf("%s: config names %s/%s/%s", p, cf.OS, cf.Architecture, cf.Variant)
	}
	if cf.Config.User != "65532:65532" || !slices.Equal(cf.Config.Entrypoint, []string{"/imagepin"}) {
		t.Errorf("%s: user %q, entrypoint %q", p, cf.Config.User, cf.Config.Entrypoint)
	}
	l := cf.Config.Labels
	if l["org.opencontainers.image.revision"] == "" || l["org.opencontainers.image.licenses"] != "Apache-2.0" ||
		l["org.opencontainers.image.source"] != defaultSource || l["org.opencontainers.image.version"] == "" {
		t.Errorf("%s: labels %v", p, l)
	}
	if layers, err := img.Layers(); err != nil || len(layers) != 1 {
		t.Errorf("%s: %d layers (%v), want 1", p, len(layers), err)
	}
}

type entry struct {
	hdr  *tar.Header
	data []byte
}

// extract reads the image's filesystem, by path without a leading slash.
func extract(t *testing.T, img v1.Image) map[string]entry {
	t.Helper()
	rc := mutate.Extract(img)
	defer func() { _ = rc.Close() }()
	files := map[string]entry{}
	tr := tar.NewReader(rc)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return files
		}
		if err != nil {
			t.Fatalf("read the image's filesystem: %v", err)
		}
		data, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		files[strings.TrimPrefix(path.Clean(h.Name), "/")] = entry{h, data}
	}
}

func checkFiles(t *testing.T, files map[string]entry) {
	t.Helper()
	var names []string
	for n := range files {
		names = append(names, n)
	}
	slices.Sort(names)
	if want := []string{"etc", "etc/group", "etc/passwd", "imagepin", "sbom.spdx.json", "tmp"}; !slices.Equal(names, want) {
		t.Fatalf("image holds %v, want %v", names, want)
	}
	if h := files["imagepin"].hdr; h.Mode != 0o755 || h.Uid != 65532 || h.Gid != 65532 {
		t.Errorf("/imagepin: mode %o, owner %d:%d", h.Mode, h.Uid, h.Gid)
	}
	if h := files["tmp"].hdr; h.Typeflag != tar.TypeDir || h.Mode != 0o1777 {
		t.Errorf("/tmp: type %c, mode %o", h.Typeflag, h.Mode)
	}
	if !strings.Contains(string(files["etc/passwd"].data), "\nnonroot:x:65532:65532:") ||
		!strings.Contains(string(files["etc/group"].data), "\nnonroot:x:65532:") {
		t.Errorf("the user database does not name nonroot:\n%s%s", files["etc/passwd"].data, files["etc/group"].data)
	}
}

// runHelp runs the image's manager with --help: the standard flag package
// prints the flags (with one dash) and exits 0.
func runHelp(t *testing.T, data []byte) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "imagepin")
	if err := os.WriteFile(bin, data, 0o755); err != nil {
		t.Fatal(err)
	}
	out, err := exec.CommandContext(t.Context(), bin, "--help").CombinedOutput()
	if err != nil {
		t.Fatalf("imagepin --help: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), "-metrics-bind-address") {
		t.Errorf("imagepin --help does not name --metrics-bind-address:\n%s", out)
	}
}

func checkSBOM(t *testing.T, data []byte) {
	t.Helper()
	var doc spdxDoc
	if err := json.Unmarshal(data, &doc); err != nil {
		t.Fatalf("/sbom.spdx.json: %v", err)
	}
	if doc.SPDXVersion != "SPDX-2.3" || len(doc.Packages) == 0 || doc.Packages[0].Name != modulePath {
		t.Fatalf("/sbom.spdx.json: version %q, first package %+v", doc.SPDXVersion, doc.Packages[:min(1, len(doc.Packages))])
	}
	for _, p := range doc.Packages {
		if p.Name != "sigs.k8s.io/controller-runtime" {
			continue
		}
		want := "pkg:golang/sigs.k8s.io/controller-runtime@" + p.VersionInfo
		if !strings.HasPrefix(p.VersionInfo, "v") || len(p.ExternalRefs) != 1 || p.ExternalRefs[0].ReferenceLocator != want {
			t.Errorf("controller-runtime: version %q, refs %+v, want purl %s", p.VersionInfo, p.ExternalRefs, want)
		}
		return
	}
	t.Errorf("/sbom.spdx.json does not list sigs.k8s.io/controller-runtime")
}
