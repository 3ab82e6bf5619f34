package main

import (
	"archive/tar"
	"bytes"
	"fmt"
	"io"
	"sort"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"
)

// nonroot is the user and group the manager runs as, distroless's nonroot:
// no privileges, and no file in the image but its own binary is its own.
const nonroot = 65532

// The user database names nonroot so that tools resolving the image's user
// (kubectl debug, ps in a debug container, Go's os/user) find a name. Its
// home does not exist: the manager writes only under /tmp.
const (
	etcPasswd = "root:x:0:0:root:/root:/sbin/nologin\n" +
		"nonroot:x:65532:65532:nonroot:/nonexistent:/sbin/nologin\n"
	etcGroup = "root:x:0:\n" +
		"nonroot:x:65532:\n"
)

// file is one entry of the layer; a nil data with dir set is a directory.
type file struct {
	name     string
	mode     int64
	uid, gid int
	dir      bool
	data     []byte
}

// rootfs is the image's only layer: the manager, the user database, /tmp
// (the webhook's certificate directory defaults to one under it) and the
// SBOM. Entries are sorted and stamped with mtime, so the same inputs give
// the same bytes.
func rootfs(binary, sbom []byte, mtime time.Time) (v1.Layer, error) {
	files := []file{
		{name: "etc/", mode: 0o755, dir: true},
		{name: "etc/group", mode: 0o644, data: []byte(etcGroup)},
		{name: "etc/passwd", mode: 0o644, data: []byte(etcPasswd)},
		{name: "imagepin", mode: 0o755, uid: nonroot, gid: nonroot, data: binary},
		{name: "sbom.spdx.json", mode: 0o644, data: sbom},
		// Sticky and world-writable, as /tmp is everywhere else, whatever
		// user the pod's securityContext picks.
		{name: "tmp/", mode: 0o1777, dir: true},
	}
	sort.Slice(files, func(i, j int) bool { return files[i].name < files[j].name })

	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		h := &tar.Header{
			Name:    f.name,
			Mode:    f.mode,
			Uid:     f.uid,
			Gid:     f.gid,
			Uname:   userName(f.uid),
			Gname:   userName(f.gid),
			ModTime: mtime,
			// USTAR holds every field above; a fixed format keeps the
			// writer from choosing one per entry.
			Format: tar.FormatUSTAR,
		}
		if f.dir {
			h.Typeflag = tar.TypeDir
		} else {
			h.Typeflag = tar.TypeReg
			h.Size = int64(len(f.data))
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("tar header of %s: %w", f.name, err)
		}
		if _, err := tw.Write(f.data); err != nil {
			return nil, fmt.Errorf("tar %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, fmt.Errorf("close tar: %w", err)
	}
	return layerFromTar(buf.Bytes())
}

// layerFromTar makes an OCI gzip layer of the tarball. The compressed bytes
// are kept for the digest and the upload alike; gzip's output depends only
// on its input, its level and the library's version.
func layerFromTar(b []byte) (v1.Layer, error) {
	l, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(b)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, fmt.Errorf("layer: %w", err)
	}
	return l, nil
}

func userName(id int) string {
	if id == nonroot {
		return "nonroot"
	}
	return "root"
}
