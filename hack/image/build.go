package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
	"golang.org/x/sync/errgroup"
)

const (
	// modulePath names the module whose root holds the manager's main
	// package.
	modulePath = "github.com/imagepin/imagepin"
	// defaultSource is org.opencontainers.image.source.
	defaultSource = "https://github.com/imagepin/imagepin"
)

// config is what one build needs; run fills it from flags, git and the
// environment, a test directly.
type config struct {
	root              string // repository root, the manager's package
	version, revision string // OCI labels
	source            string // OCI label and the SBOM's namespace
	created           time.Time
	platforms         []v1.Platform
}

// complete finds what the flags left out: the root, the revision and the
// version.
func (c *config) complete(ctx context.Context) error {
	if c.root == "" {
		wd, err := os.Getwd()
		if err != nil {
			return err
		}
		if c.root, err = moduleRoot(wd); err != nil {
			return err
		}
	}
	var err error
	if c.revision == "" {
		if c.revision, err = git(ctx, c.root, "rev-parse", "HEAD"); err != nil {
			return fmt.Errorf("%w (or pass --revision)", err)
		}
	}
	if c.version == "" {
		if c.version, err = git(ctx, c.root, "describe", "--tags", "--always", "--dirty"); err != nil {
			return fmt.Errorf("%w (or pass --version)", err)
		}
	}
	return nil
}

// moduleRoot is the directory at or above dir whose go.mod declares
// modulePath: hack/ has modules of its own (hack/tools/*), so the first
// go.mod found is not necessarily the right one.
func moduleRoot(dir string) (string, error) {
	for d := dir; ; {
		data, err := os.ReadFile(filepath.Join(d, "go.mod"))
		if err == nil && declaredModule(data) == modulePath {
			return d, nil
		}
		parent := filepath.Dir(d)
		if parent == d {
			return "", fmt.Errorf("no go.mod of module %s at or above %s (pass --root)", modulePath, dir)
		}
		d = parent
	}
}

// declaredModule is the path on go.mod's module line; the rest of the file
// does not matter here.
func declaredModule(gomod []byte) string {
	for line := range strings.Lines(string(gomod)) {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "module" {
			return strings.Trim(f[1], `"`)
		}
	}
	return ""
}

func git(ctx context.Context, dir string, args ...string) (string, error) {
	cmd := exec.CommandContext(ctx, "git", args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return "", fmt.Errorf("git %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return strings.TrimSpace(string(out)), nil
}

// parsePlatforms reads "os/arch[/variant],..."; arm64 means arm64/v8, the
// only variant Go builds for it.
func parsePlatforms(s string) ([]v1.Platform, error) {
	var ps []v1.Platform
	seen := map[string]bool{}
	for _, f := range strings.Split(s, ",") {
		p, err := v1.ParsePlatform(strings.TrimSpace(f))
		if err != nil {
			return nil, fmt.Errorf("platform %q: %w", f, err)
		}
		if p.Architecture == "arm64" && p.Variant == "" {
			p.Variant = "v8"
		}
		if p.OS == "" || p.Architecture == "" || (p.Variant != "" && p.String() != "linux/arm64/v8") {
			return nil, fmt.Errorf("platform %q: want os/arch, or linux/arm64/v8", f)
		}
		if seen[p.String()] {
			return nil, fmt.Errorf("platform %q given twice", f)
		}
		seen[p.String()] = true
		ps = append(ps, *p)
	}
	return ps, nil
}

// parseSourceDate reads SOURCE_DATE_EPOCH (reproducible-builds.org): the
// time stamped on files, config, history and SBOM. Unset means the epoch.
func parseSourceDate(s string) (time.Time, error) {
	if s == "" {
		return time.Unix(0, 0).UTC(), nil
	}
	sec, err := strconv.ParseInt(s, 10, 64)
	if err != nil || sec < 0 {
		return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH=%q: want seconds since 1970", s)
	}
	return time.Unix(sec, 0).UTC(), nil
}

// compile cross-compiles the manager for p into dir and returns the
// binary's path. -trimpath keeps the build directory out of the binary, so
// the binary depends only on the source and the toolchain.
func compile(ctx context.Context, root, dir string, p v1.Platform) (string, error) {
	out := filepath.Join(dir, "imagepin-"+p.OS+"-"+p.Architecture)
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-ldflags", "-s -w", "-o", out, ".")
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS="+p.OS, "GOARCH="+p.Architecture)
	if combined, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build for %s: %w\n%s", p, err, combined)
	}
	return out, nil
}

// compileAll builds every platform at once: the link step is serial, so two
// builds overlap well even on two cores.
func compileAll(ctx context.Context, c config, dir string) ([]string, error) {
	bins := make([]string, len(c.platforms))
	g, ctx := errgroup.WithContext(ctx)
	for i, p := range c.platforms {
		g.Go(func() error {
			var err error
			bins[i], err = compile(ctx, c.root, dir, p)
			return err
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return bins, nil
}

// build compiles the manager and assembles the images and their index.
func build(ctx context.Context, c config) (*built, error) {
	if len(c.platforms) == 0 {
		return nil, errors.New("no platform to build")
	}
	dir, err := os.MkdirTemp("", "imagepin-image-")
	if err != nil {
		return nil, err
	}
	defer func() { _ = os.RemoveAll(dir) }()
	bins, err := compileAll(ctx, c, dir)
	if err != nil {
		return nil, err
	}
	b := &built{}
	for i, p := range c.platforms {
		pi, err := platformImage(c, p, bins[i])
		if err != nil {
			return nil, fmt.Errorf("image for %s: %w", p, err)
		}
		b.images = append(b.images, pi)
	}
	if b.index, err = index(c, b.images); err != nil {
		return nil, err
	}
	return b, nil
}
