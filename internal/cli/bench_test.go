package cli

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// BenchmarkPin1000Documents pins 1,000 Deployments naming 50 distinct tags,
// and reports wall time per run and registry requests per distinct tag.
func BenchmarkPin1000Documents(b *testing.B) {
	const docs, tags = 1000, 50
	reg := registrytest.New()
	defer reg.Close()
	for i := range tags {
		reg.Push(b, fmt.Sprintf("bench/app%d:v1", i))
	}
	var in strings.Builder
	for i := range docs {
		fmt.Fprintf(&in, "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-%d # service %d\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: %s\n",
			i, i, reg.Image(fmt.Sprintf("bench/app%d:v1", i%tags)))
	}
	input := in.String()
	heads0, gets0 := reg.ManifestRequests()
	b.ResetTimer()
	for range b.N {
		var out bytes.Buffer
		if code := Pin(context.Background(), []string{"--insecure-registry", reg.Host}, strings.NewReader(input), &out, io.Discard); code != 0 {
			b.Fatalf("exit %d", code)
		}
		if n := strings.Count(out.String(), "@sha256:"); n != docs {
			b.Fatalf("%d images pinned, want %d", n, docs)
		}
	}
	heads, gets := reg.ManifestRequests()
	b.ReportMetric(float64(heads-heads0)/float64(b.N*tags), "HEADs/tag")
	b.ReportMetric(float64(gets-gets0)/float64(b.N*tags), "GETs/tag")
	b.ReportMetric(float64(b.Elapsed().Milliseconds())/float64(b.N), "ms/run")
}

// BenchmarkPinCRDBundle pins a 991-line CRD bundle with three workloads
// (testdata/corpus/bundle.yaml): the input is parsed once and the output
// is the input's bytes with three scalars replaced (issue 13 item 11).
func BenchmarkPinCRDBundle(b *testing.B) {
	reg := registrytest.New()
	defer reg.Close()
	for _, tag := range []string{"team/app:v1", "team/migrate:v3", "team/sweep:v5"} {
		reg.Push(b, tag)
	}
	raw, err := os.ReadFile(filepath.Join("testdata", "corpus", "bundle.yaml"))
	if err != nil {
		b.Fatal(err)
	}
	input := strings.ReplaceAll(string(raw), "REGISTRY", reg.Host)
	b.ResetTimer()
	for range b.N {
		var out bytes.Buffer
		if code := Pin(context.Background(), []string{"--insecure-registry", reg.Host}, strings.NewReader(input), &out, io.Discard); code != 0 {
			b.Fatalf("exit %d", code)
		}
		if n := strings.Count(out.String(), "@sha256:"); n != 4 {
			b.Fatalf("%d images with a digest, want 4", n)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Microseconds())/float64(b.N)/1000, "ms/run")
}
