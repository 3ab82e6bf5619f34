// Package cli holds imagepin's subcommands. `imagepin pin` pins the images
// of Kubernetes manifests in a CI pipeline, before they reach a cluster,
// with the same resolver as the operator. It writes its input back byte
// for byte but the image scalars it pins (manifest.go finds them, edit.go
// replaces them where the parser says they are): CI users diff and commit
// what it writes.
package cli

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode"

	"github.com/google/go-containerregistry/pkg/authn"
	"sigs.k8s.io/kustomize/kyaml/yaml"

	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// where names an image field for a message: "file:line: Kind/name
// container c".
func (f imageField) where() string {
	what := "container"
	if f.volume {
		what = "image volume"
	}
	return fmt.Sprintf("%s:%d: %s %s %s", f.file, f.line, printable(f.object), what, printable(f.container))
}

// printable returns s as it is, or quoted when it holds a control
// character or a space, so that a value from a manifest cannot break the
// one-line "file:line: message" format CI tools read.
func printable(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) || unicode.IsSpace(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// Pin runs `imagepin pin` and returns its exit code.
func Pin(ctx context.Context, args []string, stdin io.Reader, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("imagepin pin", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var files stringList
	var insecure stringList
	fs.Var(&files, "f", "a YAML file, a directory of them, or - for stdin; repeatable (default: stdin)")
	check := fs.Bool("check", false, "change nothing; list every unpinned image with file and line and exit 1 if there is one")
	timeout := fs.Duration("registry-timeout", registry.DefaultTimeout, "deadline of one tag resolution")
	fs.Var(&insecure, "insecure-registry", "registry host reached over plain HTTP or TLS without verification; repeatable. The only registries ever reached over plain HTTP, loopback included")
	var allowed registry.AllowedRegistriesFlag
	fs.Var(&allowed, "allowed-registries", registry.AllowedRegistriesUsage)
	caFile := fs.String("registry-ca-file", "", "PEM CA certificates trusted for registries")
	qps := fs.Float64("registry-qps", 50, "requests per second sent to each registry host")
	burst := fs.Int("registry-burst", 50, "requests one registry host may get in a burst")
	var kinds workload.KindFlag
	fs.Var(&kinds, "workload-kind", workload.KindFlagUsage)
	fs.Usage = func() {
		say(stderr, "usage: imagepin pin [-f FILE|DIR|-]... [--check] [--workload-kind <group>/<version>/<Kind>,spec=<path>]...")
		say(stderr, "Pins every container image of the manifests to repo:tag@sha256:... and writes them to stdout.")
		say(stderr, "Built-in workload kinds are pinned by kind; a --workload-kind one by kind and apiVersion group, in each of its templates.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		sayf(stderr, "imagepin pin: unexpected argument %q (files go after -f)\n", fs.Arg(0))
		return 2
	}
	// Before the inputs are read: their kinds are looked up in the table.
	if err := workload.Configure(kinds); err != nil {
		say(stderr, "imagepin pin:", err)
		return 2
	}
	if len(files) == 0 {
		files = stringList{"-"}
	}

	inputs, err := readInputs(files, stdin)
	if err != nil {
		say(stderr, "imagepin pin:", err)
		return 1
	}
	var unpinned []imageField
	for _, in := range inputs {
		for _, f := range in.images {
			if !strings.Contains(f.node.Value, "@") {
				unpinned = append(unpinned, f)
			}
		}
	}
	if *check {
		for _, f := range unpinned {
			sayf(stdout, "%s: %s is not pinned to a digest\n", f.where(), printable(f.node.Value))
		}
		if len(unpinned) > 0 {
			sayf(stderr, "imagepin pin --check: %d unpinned %s\n", len(unpinned), plural(len(unpinned), "image"))
			return 1
		}
		return 0
	}

	resolver, err := registry.New(registry.Options{InsecureRegistries: insecure, AllowedRegistries: allowed, CAFile: *caFile, Timeout: *timeout, QPS: *qps, Burst: *burst})
	if err != nil {
		say(stderr, "imagepin pin:", err)
		return 1
	}
	keychain, err := registry.CLIKeychain(ctx)
	if err != nil {
		say(stderr, "imagepin pin:", err)
		return 1
	}
	digests, failures := resolveAll(ctx, resolver, keychain, unpinned)
	if len(failures) > 0 {
		for _, f := range failures {
			say(stderr, "imagepin pin:", f)
		}
		return 1
	}
	outputs := make([][]byte, len(inputs))
	for i, in := range inputs {
		out, errs := pinInput(in, digests)
		failures = append(failures, errs...)
		outputs[i] = out
	}
	if len(failures) > 0 {
		for _, f := range failures {
			say(stderr, "imagepin pin:", f)
		}
		return 1
	}
	if err := writeAll(stdout, inputs, outputs); err != nil {
		return 1
	}
	return 0
}

// writeAll writes the outputs one after the other, each exactly as it is,
// with only what keeps their documents apart in between: a line break
// where one does not end in one, and "---" before one whose first document
// does not start with it (in the file's own line ending).
func writeAll(w io.Writer, inputs []*input, outputs [][]byte) error {
	written := false // whether a document may be open at the end of what was written
	for i, out := range outputs {
		eol := "\n"
		if bytes.Contains(out, []byte("\r\n")) {
			eol = "\r\n"
		}
		var between string
		if i > 0 && len(outputs[i-1]) > 0 && !bytes.HasSuffix(outputs[i-1], []byte("\n")) {
			between = eol
		}
		if written && !inputs[i].resourceList && len(bytes.TrimSpace(out)) > 0 && !startsWithMarker(out) {
			between += "---" + eol
		}
		if _, err := io.WriteString(w, between); err != nil {
			return err
		}
		if _, err := w.Write(out); err != nil {
			return err
		}
		written = written || len(bytes.TrimSpace(out)) > 0
	}
	return nil
}

// pinInput returns the input's bytes with every unpinned image scalar
// replaced by its pinned reference, in the scalar's own quoting style; not
// one other byte changes.
func pinInput(in *input, digests map[string]string) ([]byte, []string) {
	var src *source
	var edits []edit
	var failures []string
	done := map[*yaml.Node]bool{} // a scalar named by several aliases is edited once
	for _, f := range in.images {
		if done[f.node] || strings.Contains(f.node.Value, "@") {
			continue
		}
		done[f.node] = true
		pinned, err := selection.PinnedImage(f.node.Value, digests[f.node.Value])
		if err == nil && strings.ContainsFunc(pinned, notReferenceChar) {
			err = fmt.Errorf("cannot pin %q: %q would need quoting", f.node.Value, pinned)
		}
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", f.where(), err))
			continue
		}
		if src == nil {
			src = newSource(in.raw)
		}
		start, end, err := src.scalarSpan(f.node)
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: cannot edit the image in place: %v", f.where(), err))
			continue
		}
		edits = append(edits, edit{start: start, end: end, text: replacement(f.node, pinned)})
	}
	if len(edits) == 0 {
		return in.raw, failures
	}
	return applyEdits(in.raw, edits), failures
}

// notReferenceChar reports a character no pinned image reference has, so
// that what is written never needs quoting or escaping.
func notReferenceChar(r rune) bool {
	return (r < 'a' || r > 'z') && (r < 'A' || r > 'Z') && (r < '0' || r > '9') && !strings.ContainsRune("._-/:@", r)
}

// startsWithMarker reports whether the first document of a file starts
// with "---" (after comments and blank lines), so that it needs no "---"
// to keep it apart from the file before it.
func startsWithMarker(raw []byte) bool {
	for line := range bytes.Lines(raw) {
		t := bytes.TrimRight(line, " \t\r\n")
		switch {
		case len(bytes.TrimSpace(t)) == 0 || bytes.TrimSpace(t)[0] == '#':
			continue
		case string(t) == "---" || bytes.HasPrefix(t, []byte("--- ")) || bytes.HasPrefix(t, []byte("---\t")):
			return true
		}
		return false
	}
	return false
}

// resolveAll resolves each distinct reference once, concurrently.
func resolveAll(ctx context.Context, r *registry.Resolver, kc authn.Keychain, fields []imageField) (map[string]string, []string) {
	refs := map[string][]imageField{}
	for _, f := range fields {
		refs[f.node.Value] = append(refs[f.node.Value], f)
	}
	names := make([]string, 0, len(refs))
	for ref := range refs {
		names = append(names, ref)
	}
	sort.Strings(names)

	var mu sync.Mutex
	digests := map[string]string{}
	var failures []string
	work := make(chan string)
	var wg sync.WaitGroup
	for range min(8, len(names)) {
		wg.Go(func() {
			for ref := range work {
				res, err := r.Resolve(ctx, registry.Request{Image: ref, Keychain: kc, TTL: time.Hour})
				mu.Lock()
				if err != nil {
					f := refs[ref][0]
					failures = append(failures, fmt.Sprintf("%s: %v", f.where(), err))
				} else {
					digests[ref] = res.Digest
				}
				mu.Unlock()
			}
		})
	}
	for _, ref := range names {
		work <- ref
	}
	close(work)
	wg.Wait()
	sort.Strings(failures)
	return digests, failures
}

// readInputs reads every file, directory and stdin named by -f.
func readInputs(files []string, stdin io.Reader) ([]*input, error) {
	var inputs []*input
	for _, f := range files {
		paths := []string{f}
		if f != "-" {
			info, err := os.Stat(f)
			if err != nil {
				return nil, err
			}
			if info.IsDir() {
				if paths, err = yamlFiles(f); err != nil {
					return nil, err
				}
			}
		}
		for _, p := range paths {
			in, err := readInput(p, stdin)
			if err != nil {
				return nil, err
			}
			inputs = append(inputs, in)
		}
	}
	return inputs, nil
}

func yamlFiles(dir string) ([]string, error) {
	var out []string
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.IsDir() && (strings.HasSuffix(p, ".yaml") || strings.HasSuffix(p, ".yml")) {
			out = append(out, p)
		}
		return nil
	})
	sort.Strings(out)
	return out, err
}

func readInput(path string, stdin io.Reader) (*input, error) {
	name := path
	var raw []byte
	var err error
	if path == "-" {
		name = "<stdin>"
		raw, err = io.ReadAll(stdin)
	} else {
		raw, err = os.ReadFile(path)
	}
	if err != nil {
		return nil, err
	}
	return parseInput(name, raw)
}

type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

func plural(n int, word string) string {
	if n == 1 {
		return word
	}
	return word + "s"
}

// say and sayf write a line for the user; a failing terminal is not worth
// an error of its own.
func say(w io.Writer, args ...any) { _, _ = fmt.Fprintln(w, args...) }

func sayf(w io.Writer, format string, args ...any) { _, _ = fmt.Fprintf(w, format, args...) }
