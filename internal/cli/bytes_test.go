package cli

import (
	"bytes"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/imagepin/imagepin/internal/registry/registrytest"
)

// The corpus under testdata/corpus is written for these tests: a CRD
// bundle with folded, literal and long descriptions and a license header
// (crds.yaml, and bundle.yaml with workloads after it), comments and
// blank lines between and inside documents with `---` and `...`
// (header.yaml), flow style (flow.yaml), anchors and aliases
// (anchors.yaml) and quoted images (quoted.yaml). REGISTRY stands for the
// test registry's host.

// corpus returns testdata/corpus/<name> with REGISTRY replaced, and with
// CRLF line endings when crlf is set.
func corpus(t *testing.T, reg *registrytest.Registry, name string, crlf bool) []byte {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("testdata", "corpus", name))
	if err != nil {
		t.Fatal(err)
	}
	raw = bytes.ReplaceAll(raw, []byte("REGISTRY"), []byte(reg.Host))
	if crlf {
		raw = bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
	}
	return raw
}

// pinned is one expected change: old, exactly as written in the input
// (with its quotes and what follows it), becomes new, count times.
type pinned struct {
	old, new string
	count    int
}

// withPins returns in with exactly the expected changes made, failing the
// test when one of them does not occur exactly count times: the output
// must equal this, byte for byte.
func withPins(t *testing.T, in string, pins []pinned) string {
	t.Helper()
	for _, p := range pins {
		if n := strings.Count(in, p.old); n != p.count {
			t.Fatalf("the input has %q %d times, the test expects %d", p.old, n, p.count)
		}
		in = strings.ReplaceAll(in, p.old, p.new)
	}
	return in
}

// diffLine returns the first line where got and want differ, for a
// failure message that a 1,000-line file does not drown.
func diffLine(got, want string) string {
	g, w := strings.SplitAfter(got, "\n"), strings.SplitAfter(want, "\n")
	for i := range min(len(g), len(w)) {
		if g[i] != w[i] {
			return "line " + strconv.Itoa(i+1) + ":\n got  " + quoteLine(g[i]) + "\n want " + quoteLine(w[i])
		}
	}
	return "lengths differ: got " + strconv.Itoa(len(g)) + " lines, want " + strconv.Itoa(len(w))
}

func quoteLine(s string) string {
	return strings.ReplaceAll(strings.ReplaceAll(s, "\r", `\r`), "\n", `\n`)
}

// Issue 13 item 11: with nothing to pin, `imagepin pin` writes its input
// back byte for byte: the license header before the first document, the
// folded (>), literal (|) and long descriptions of a CRD bundle, quoting,
// comments, blank lines and `---` all stay, with LF and with CRLF line
// endings, and the registry is not asked anything.
func TestPinWithNothingToPinWritesTheInputUnchanged(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	for _, tc := range []struct {
		name string
		file string
		crlf bool
	}{
		{name: "CRD bundle with a license header", file: "crds.yaml"},
		{name: "CRD bundle with CRLF line endings", file: "crds.yaml", crlf: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := string(corpus(t, reg, tc.file, tc.crlf))
			heads0, gets0 := reg.ManifestRequests()
			code, out, errs := run(t, reg, in, "-f", "-")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			if out != in {
				t.Fatalf("output differs from the input at %s", diffLine(out, in))
			}
			if heads, gets := reg.ManifestRequests(); heads != heads0 || gets != gets0 {
				t.Errorf("nothing to pin, yet %d HEADs and %d GETs", heads-heads0, gets-gets0)
			}
		})
	}
}

// Issue 13 item 11: `imagepin pin` changes the image scalars it pins and
// not one other byte, in every shape real manifests come in. Each image
// keeps its quoting (plain, 'single', "double") and anything around it
// (anchors, tags, comments after it); an anchored image is pinned once,
// where it is written, and its aliases stay aliases.
func TestPinChangesOnlyTheImageScalars(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	h := reg.Host
	app := h + "/team/app:v1@" + reg.Push(t, "team/app:v1")
	migrate := h + "/team/migrate:v3@" + reg.Push(t, "team/migrate:v3")
	sidecar := h + "/team/sidecar:v2@" + reg.Push(t, "team/sidecar:v2")
	job := h + "/team/job:v4@" + reg.Push(t, "team/job:v4")
	sweep := h + "/team/sweep:v5@" + reg.Push(t, "team/sweep:v5")
	redis := h + "/team/redis:v7@" + reg.Push(t, "team/redis:v7")

	bundle := []pinned{
		{"image: " + h + "/team/migrate:v3 # runs first", "image: " + migrate + " # runs first", 1},
		{"image: " + h + "/team/app:v1\n", "image: " + app + "\n", 1},
		{"image: " + h + "/team/sweep:v5\n", "image: " + sweep + "\n", 1},
	}
	header := []pinned{
		{"          image: " + h + "/team/app:v1\n", "          image: " + app + "\n", 1},
		{"image: " + h + "/team/redis:v7   # cache", "image: " + redis + "   # cache", 1},
	}
	crlf := func(ps []pinned) []pinned {
		out := make([]pinned, len(ps))
		for i, p := range ps {
			out[i] = pinned{strings.ReplaceAll(p.old, "\n", "\r\n"), strings.ReplaceAll(p.new, "\n", "\r\n"), p.count}
		}
		return out
	}
	for _, tc := range []struct {
		name string
		file string
		crlf bool
		pins []pinned
	}{
		{name: "CRD bundle then workloads, with ... and comments", file: "bundle.yaml", pins: bundle},
		{name: "CRD bundle then workloads, CRLF", file: "bundle.yaml", crlf: true, pins: crlf(bundle)},
		{name: "license header, comments, blank lines, a document with nothing to pin", file: "header.yaml", pins: header},
		{name: "license header and comments, CRLF", file: "header.yaml", crlf: true, pins: crlf(header)},
		{name: "flow style", file: "flow.yaml", pins: []pinned{
			{"image: " + h + "/team/app:v1}", "image: " + app + "}", 1},
			{"image: " + h + "/team/sidecar:v2 }", "image: " + sidecar + " }", 1},
			{`image: "` + h + `/team/migrate:v3"}`, `image: "` + migrate + `"}`, 1},
			{`"image": "` + h + `/team/app:v1"}`, `"image": "` + app + `"}`, 1},
			{"image: '" + h + "/team/job:v4',", "image: '" + job + "',", 1},
		}},
		{name: "anchors, aliases and merge keys", file: "anchors.yaml", pins: []pinned{
			{"image: " + h + "/team/sidecar:v2\n", "image: " + sidecar + "\n", 1},
			{"image: &app " + h + "/team/app:v1\n", "image: &app " + app + "\n", 1},
			{"image: !!str &job " + h + "/team/job:v4\n", "image: !!str &job " + job + "\n", 1},
		}},
		{name: "quoted images keep their quotes", file: "quoted.yaml", pins: []pinned{
			{"image: '" + h + "/team/app:v1'\n", "image: '" + app + "'\n", 1},
			{`image: "` + h + `/team/migrate:v3"   # double quotes stay`, `image: "` + migrate + `"   # double quotes stay`, 1},
			{"image: " + h + "/team/sidecar:v2\n", "image: " + sidecar + "\n", 1},
			{`image: !!str "` + h + `/team/job:v4"`, `image: !!str "` + job + `"`, 1},
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := string(corpus(t, reg, tc.file, tc.crlf))
			want := withPins(t, in, tc.pins)
			code, out, errs := run(t, reg, in, "-f", "-")
			if code != 0 {
				t.Fatalf("exit %d: %s", code, errs)
			}
			if out != want {
				t.Fatalf("output is not the input with only its images pinned; first difference at %s", diffLine(out, want))
			}
			// Pinned output is a fixed point: nothing left to change.
			if code, again, errs := run(t, reg, out, "-f", "-"); code != 0 || again != out {
				t.Fatalf("pinning the output again: exit %d, %s; changed: %v", code, errs, again != out)
			}
		})
	}
}

// Issue 13 item 11: a KRM ResourceList (imagepin pin as a kustomize or
// kpt exec function) comes back as the same ResourceList byte for byte
// but its items' images: comments, the folded description of a CRD item,
// the config.kubernetes.io annotations and the functionConfig stay, and
// an image written as a block scalar keeps its header and line break.
func TestPinResourceListChangesOnlyTheImageScalars(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	h := reg.Host
	app := h + "/team/app:v1@" + reg.Push(t, "team/app:v1")
	migrate := h + "/team/migrate:v3@" + reg.Push(t, "team/migrate:v3")
	in := string(corpus(t, reg, "resourcelist.yaml", false))
	want := withPins(t, in, []pinned{
		{"image: " + h + "/team/app:v1\n", "image: " + app + "\n", 1},
		{"image: >-\n            " + h + "/team/migrate:v3\n", "image: >-\n            " + migrate + "\n", 1},
	})
	code, out, errs := run(t, reg, in, "-f", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out != want {
		t.Fatalf("output is not the ResourceList with only its images pinned; first difference at %s", diffLine(out, want))
	}
}

// Issue 13 item 11: several files (here -f, -f, -f) come out one after
// the other, each byte for byte but its images, with a `---` put between
// two only where the next one does not start its first document with
// `---` itself, and a line break first where a file does not end in one.
func TestPinSeveralFilesKeepsEachFilesBytes(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	h := reg.Host
	app := h + "/team/app:v1@" + reg.Push(t, "team/app:v1")
	redis := h + "/team/redis:v7@" + reg.Push(t, "team/redis:v7")
	dir := t.TempDir()
	crds := corpus(t, reg, "crds.yaml", false)
	header := corpus(t, reg, "header.yaml", false)
	pod := []byte("apiVersion: v1\nkind: Pod\nmetadata: {name: last}\nspec:\n  containers:\n  - {name: app, image: " + h + "/team/app:v1}") // no final line break
	for name, raw := range map[string][]byte{"1-crds.yaml": crds, "2-header.yaml": header, "3-pod.yaml": pod, "4-crds.yaml": crds} {
		if err := os.WriteFile(filepath.Join(dir, name), raw, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	want := string(crds) +
		withPins(t, string(header), []pinned{
			{"          image: " + h + "/team/app:v1\n", "          image: " + app + "\n", 1},
			{"image: " + h + "/team/redis:v7   #", "image: " + redis + "   #", 1},
		}) +
		"---\n" + withPins(t, string(pod), []pinned{{"image: " + h + "/team/app:v1}", "image: " + app + "}", 1}}) +
		"\n" + string(crds) // crds.yaml starts its first document with --- after its header
	code, out, errs := run(t, reg, "", "-f", filepath.Join(dir, "1-crds.yaml"), "-f", filepath.Join(dir, "2-header.yaml"), "-f", dir+"/3-pod.yaml", "-f", filepath.Join(dir, "4-crds.yaml"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	if out != want {
		t.Fatalf("output is not the files one after the other with only their images pinned; first difference at %s", diffLine(out, want))
	}
}

// Issue 13 item 11: --check names each unpinned image by the line it has
// in the file, whatever comes before it: a license header, documents
// ended by `...`, comments between documents, anchors and aliases.
func TestCheckNamesTheFileLineOfEachImage(t *testing.T) {
	reg := registrytest.New()
	defer reg.Close()
	dir := t.TempDir()
	for _, name := range []string{"header.yaml", "anchors.yaml"} {
		if err := os.WriteFile(filepath.Join(dir, name), corpus(t, reg, name, false), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	code, out, _ := run(t, reg, "", "--check", "-f", dir)
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	anchors, header := filepath.Join(dir, "anchors.yaml"), filepath.Join(dir, "header.yaml")
	want := strings.Join([]string{
		anchors + ":13: Deployment/workers container sidecar: " + reg.Host + "/team/sidecar:v2 is not pinned to a digest",
		anchors + ":16: Deployment/workers container worker: " + reg.Host + "/team/app:v1 is not pinned to a digest",
		anchors + ":20: Deployment/workers container worker-b: " + reg.Host + "/team/app:v1 is not pinned to a digest",
		anchors + ":13: Deployment/workers container sidecar-b: " + reg.Host + "/team/sidecar:v2 is not pinned to a digest",
		anchors + ":33: Job/backfill container backfill: " + reg.Host + "/team/job:v4 is not pinned to a digest",
		header + ":51: Deployment/frontend container server: " + reg.Host + "/team/app:v1 is not pinned to a digest",
		header + ":118: StatefulSet/cart container redis: " + reg.Host + "/team/redis:v7 is not pinned to a digest",
	}, "\n") + "\n"
	if out != want {
		t.Fatalf("--check output:\n%s\nwant:\n%s", out, want)
	}
}
