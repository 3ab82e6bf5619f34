package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/remote"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// built is the result of a build: the index, and per platform its image
// and SBOM, in the order of config.platforms.
type built struct {
	index  v1.ImageIndex
	images []platformImg
}

type platformImg struct {
	platform v1.Platform
	image    v1.Image
	sbom     []byte
}

// labels are the OCI annotations of the image's config and of the index.
func labels(c config) map[string]string {
	return map[string]string{
		"org.opencontainers.image.source":   c.source,
		"org.opencontainers.image.revision": c.revision,
		"org.opencontainers.image.version":  c.version,
		"org.opencontainers.image.licenses": "Apache-2.0",
	}
}

// platformImage is the image of one platform: no base, one layer, OCI
// media types throughout, running /imagepin as nonroot.
func platformImage(c config, p v1.Platform, binPath string) (platformImg, error) {
	bin, err := os.ReadFile(binPath)
	if err != nil {
		return platformImg{}, err
	}
	sbom, err := spdxDocument(c, p, binPath, bin)
	if err != nil {
		return platformImg{}, err
	}
	layer, err := rootfs(bin, sbom, c.created)
	if err != nil {
		return platformImg{}, err
	}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{
		Layer:     layer,
		MediaType: types.OCILayer,
		History: v1.History{
			Created:   v1.Time{Time: c.created},
			CreatedBy: "go run ./hack/image",
			Comment:   "/imagepin, /etc/passwd, /etc/group, /tmp, /sbom.spdx.json",
		},
	})
	if err != nil {
		return platformImg{}, fmt.Errorf("append layer: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return platformImg{}, fmt.Errorf("config: %w", err)
	}
	cf = cf.DeepCopy()
	cf.Created = v1.Time{Time: c.created}
	cf.OS, cf.Architecture, cf.Variant = p.OS, p.Architecture, p.Variant
	cf.Config = v1.Config{
		Entrypoint: []string{"/imagepin"},
		User:       fmt.Sprintf("%d:%d", nonroot, nonroot),
		WorkingDir: "/",
		Labels:     labels(c),
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return platformImg{}, fmt.Errorf("set config: %w", err)
	}
	return platformImg{platform: p, image: img, sbom: sbom}, nil
}

// index ties the platforms' images together; its descriptors carry the
// platforms, so that a runtime picks its own without reading any config.
func index(c config, imgs []platformImg) (v1.ImageIndex, error) {
	adds := make([]mutate.IndexAddendum, 0, len(imgs))
	for _, pi := range imgs {
		p := pi.platform
		adds = append(adds, mutate.IndexAddendum{Add: pi.image, Descriptor: v1.Descriptor{Platform: &p}})
	}
	idx := mutate.AppendManifests(mutate.IndexMediaType(empty.Index, types.OCIImageIndex), adds...)
	annotated, ok := mutate.Annotations(idx, labels(c)).(v1.ImageIndex)
	if !ok {
		return nil, errors.New("annotating the index did not give an index")
	}
	return annotated, nil
}

// writeSBOMs writes each platform's SBOM into dir, as the image holds it,
// and returns their paths.
func (b *built) writeSBOMs(dir string) ([]string, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, fmt.Errorf("SBOM directory: %w", err)
	}
	var paths []string
	for _, pi := range b.images {
		p := filepath.Join(dir, "imagepin-"+strings.ReplaceAll(pi.platform.String(), "/", "-")+".spdx.json")
		if err := os.WriteFile(p, pi.sbom, 0o644); err != nil {
			return nil, fmt.Errorf("write SBOM: %w", err)
		}
		paths = append(paths, p)
	}
	return paths, nil
}

// pushIndex pushes idx, its images and their blobs to ref and returns the
// reference pushed, canonicalised.
func pushIndex(ctx context.Context, idx v1.ImageIndex, ref string, insecure bool, opts ...remote.Option) (string, error) {
	var nameOpts []name.Option
	if insecure {
		nameOpts = append(nameOpts, name.Insecure)
	}
	r, err := name.ParseReference(ref, nameOpts...)
	if err != nil {
		return "", fmt.Errorf("--push %q: %w", ref, err)
	}
	opts = append(opts, remote.WithContext(ctx), remote.WithUserAgent("imagepin-hack-image"))
	if err := remote.WriteIndex(r, idx, opts...); err != nil {
		return "", fmt.Errorf("push %s: %w", r, err)
	}
	return r.String(), nil
}

// transport trusts the system roots and, with caFile, its certificates too.
func transport(caFile string) (http.RoundTripper, error) {
	t := http.DefaultTransport.(*http.Transport).Clone()
	if caFile == "" {
		return t, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("--ca-file: %w", err)
	}
	pool, err := x509.SystemCertPool()
	if err != nil {
		pool = x509.NewCertPool()
	}
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
	}
	t.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
	return t, nil
}

// writeLayout writes idx as the only entry of the OCI image layout in dir.
// Blobs of earlier builds stay (the layout has no garbage collection), so a
// directory that is not an OCI layout is refused rather than written into.
func writeLayout(dir string, idx v1.ImageIndex) error {
	entries, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("--layout: %w", err)
	}
	if len(entries) > 0 {
		if _, err := os.Stat(filepath.Join(dir, "oci-layout")); err != nil {
			return fmt.Errorf("--layout %s: not empty and not an OCI image layout", dir)
		}
	}
	p, err := layout.Write(dir, empty.Index)
	if err != nil {
		return fmt.Errorf("write layout %s: %w", dir, err)
	}
	if err := p.AppendIndex(idx); err != nil {
		return fmt.Errorf("write the index into %s: %w", dir, err)
	}
	return nil
}
