package cli

import (
	"bytes"
	"context"
	"fmt"
	"runtime"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// deployments returns n Deployment documents naming tags in turn, each
// with the shape of a small service.
func deployments(n int, image func(i int) string) string {
	var in strings.Builder
	for i := range n {
		fmt.Fprintf(&in, `---
apiVersion: apps/v1
kind: Deployment
metadata:
  name: app-%[1]d # service %[1]d
  labels: {app: app-%[1]d}
spec:
  replicas: 2
  selector:
    matchLabels: {app: app-%[1]d}
  template:
    metadata:
      labels: {app: app-%[1]d}
    spec:
      containers:
      - name: app
        image: %[2]s
        ports:
        - containerPort: 8080
        env:
        - {name: A, value: "1"}
        resources:
          requests: {cpu: 100m}
`, i, image(i))
	}
	return in.String()
}

// Issue 19 item 1: 1,000 Deployments naming 50 tags in 50 repositories
// cost at most 51 requests of any kind: a HEAD per tag and one ping for
// the host, however many repositories share it.
func TestPin1000DocumentsSendsOneRequestPerTag(t *testing.T) {
	const docs, tags = 1000, 50
	reg := registrytest.New()
	defer reg.Close()
	for i := range tags {
		reg.Push(t, fmt.Sprintf("scale/app%02d:v1", i))
	}
	input := deployments(docs, func(i int) string { return reg.Image(fmt.Sprintf("scale/app%02d:v1", i%tags)) })
	before := reg.Requests()
	var out, errOut bytes.Buffer
	if code := Pin(context.Background(), []string{"--insecure-registry", reg.Host}, strings.NewReader(input), &out, &errOut); code != 0 {
		t.Fatalf("exit %d: %s", code, errOut.String())
	}
	if n := strings.Count(out.String(), "@sha256:"); n != docs {
		t.Fatalf("%d images pinned, want %d", n, docs)
	}
	if got := reg.Requests() - before; got > tags+1 {
		t.Errorf("pinning %d documents naming %d tags in %d repositories sent %d requests, want at most %d (a HEAD per tag and one ping)", docs, tags, tags, got, tags+1)
	}
}

// Issue 19 item 1: the documents are read one at a time and each parse
// tree is dropped before the next is read, so that what memory holds at
// any moment is the input's bytes, a small record per image and one
// document's tree, not a tree per document (a tree costs tens of times the
// bytes it was parsed from: 10,000 documents once took 807 MiB). The live
// heap is taken, after a collection, while scanning is under way.
func TestScanHoldsOneParseTreeAtATime(t *testing.T) {
	const docs = 5000
	raw := []byte(deployments(docs, func(i int) string { return fmt.Sprintf("registry.example/team/app%d:v1", i%500) }))
	live := func() int64 {
		runtime.GC()
		var m runtime.MemStats
		runtime.ReadMemStats(&m)
		return int64(m.HeapAlloc)
	}
	before := live()
	var found int
	var peak int64
	in, err := scanInput("<test>", raw, func(string) {
		if found++; found%500 == 0 {
			peak = max(peak, live()-before)
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(in.images) != docs || found != docs {
		t.Fatalf("found %d image fields and %d unpinned references, want %d", len(in.images), found, docs)
	}
	// The input is the caller's; scanning holds a record per image (about
	// 200 bytes), the line table and the document being read.
	if peak > int64(len(raw)) {
		t.Errorf("while scanning %d documents (%d bytes), %d bytes more were live; want at most the input's size", docs, len(raw), peak)
	}
	t.Logf("%d documents, %d bytes: at most %d bytes more live while scanning", docs, len(raw), peak)
	runtime.KeepAlive(raw)
}
