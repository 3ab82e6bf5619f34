// Command image builds the manager's multi-arch OCI image without a Docker
// engine (`make image`): it cross-compiles the manager per platform, puts
// each binary on no base image with a minimal /etc/passwd, /etc/group, /tmp
// and an SPDX SBOM, ties the platforms together in an OCI image index, and
// pushes that index or writes it as an OCI image layout.
//
//	go run ./hack/image --push REGISTRY/REPO:TAG [--insecure] [--ca-file FILE]
//	go run ./hack/image --layout DIR
//
// Two builds of the same commit with the same toolchain give the same index
// digest: every timestamp is SOURCE_DATE_EPOCH (0 when unset) and the layer's
// entries are sorted. Credentials for --push come from the Docker config
// (DOCKER_CONFIG, ~/.docker/config.json and its credential helpers).
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"

	"github.com/google/go-containerregistry/pkg/authn"
	"github.com/google/go-containerregistry/pkg/v1/remote"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if errors.Is(err, flag.ErrHelp) {
		return // usage printed, as asked
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

// run builds the image as args say and prints the digests on stdout.
func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("image", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var (
		c          config
		platforms  string
		push, dir  string
		insecure   bool
		caFile     string
		sbomDir    string
		sourceDate = os.Getenv("SOURCE_DATE_EPOCH")
	)
	fs.StringVar(&c.root, "root", "", "repository root; defaults to the module root of github.com/imagepin/imagepin above the working directory")
	fs.StringVar(&platforms, "platforms", "linux/amd64,linux/arm64", "comma-separated platforms to build (os/arch[/variant]); arm64 is always variant v8")
	fs.StringVar(&c.version, "version", "", "org.opencontainers.image.version; defaults to `git describe --tags --always --dirty`")
	fs.StringVar(&c.revision, "revision", "", "org.opencontainers.image.revision; defaults to `git rev-parse HEAD`")
	fs.StringVar(&c.source, "source", defaultSource, "org.opencontainers.image.source")
	fs.StringVar(&push, "push", "", "push the index to this REGISTRY/REPO:TAG")
	fs.StringVar(&dir, "layout", "", "write the index to this directory as an OCI image layout instead")
	fs.BoolVar(&insecure, "insecure", false, "with --push, allow plain HTTP to the registry")
	fs.StringVar(&caFile, "ca-file", "", "with --push, PEM file of CA certificates trusted for the registry besides the system roots")
	fs.StringVar(&sbomDir, "sbom-dir", "", "where the SPDX SBOMs are written besides the image; defaults to <root>/tmp/image-sbom")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if (push == "") == (dir == "") {
		return errors.New("say where the image goes: exactly one of --push REGISTRY/REPO:TAG and --layout DIR")
	}
	var err error
	if c.platforms, err = parsePlatforms(platforms); err != nil {
		return err
	}
	if c.created, err = parseSourceDate(sourceDate); err != nil {
		return err
	}
	if err := c.complete(ctx); err != nil {
		return err
	}

	b, err := build(ctx, c)
	if err != nil {
		return err
	}
	if sbomDir == "" {
		sbomDir = filepath.Join(c.root, "tmp", "image-sbom")
	}
	sboms, err := b.writeSBOMs(sbomDir)
	if err != nil {
		return err
	}

	where := dir
	if push != "" {
		t, err := transport(caFile)
		if err != nil {
			return err
		}
		ref, err := pushIndex(ctx, b.index, push, insecure,
			remote.WithTransport(t), remote.WithAuthFromKeychain(authn.DefaultKeychain))
		if err != nil {
			return err
		}
		where = ref
	} else if err := writeLayout(dir, b.index); err != nil {
		return err
	}
	return b.report(stdout, where, sboms)
}

// report prints the index digest, each platform's manifest digest and the
// SBOMs' paths, one per line, so that scripts can pick them up.
func (b *built) report(w io.Writer, where string, sboms []string) error {
	d, err := b.index.Digest()
	if err != nil {
		return fmt.Errorf("index digest: %w", err)
	}
	lines := []string{fmt.Sprintf("index %s %s", d, where)}
	for i, p := range b.images {
		d, err := p.image.Digest()
		if err != nil {
			return fmt.Errorf("%s manifest digest: %w", p.platform, err)
		}
		lines = append(lines, fmt.Sprintf("%s %s sbom %s", p.platform, d, sboms[i]))
	}
	_, err = fmt.Fprintln(w, strings.Join(lines, "\n"))
	return err
}
