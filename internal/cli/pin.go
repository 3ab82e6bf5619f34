// Package cli holds imagepin's subcommands. `imagepin pin` pins the images
// of Kubernetes manifests in a CI pipeline, before they reach a cluster,
// with the same resolver as the operator.
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
	"sigs.k8s.io/kustomize/kyaml/kio"
	"sigs.k8s.io/kustomize/kyaml/yaml"

	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
)

// podSpecPaths says where each pod-bearing kind keeps its pod spec.
var podSpecPaths = map[string][]string{
	"Pod":                   {"spec"},
	"PodTemplate":           {"template", "spec"},
	"ReplicationController": {"spec", "template", "spec"},
	"ReplicaSet":            {"spec", "template", "spec"},
	"Deployment":            {"spec", "template", "spec"},
	"StatefulSet":           {"spec", "template", "spec"},
	"DaemonSet":             {"spec", "template", "spec"},
	"Job":                   {"spec", "template", "spec"},
	"CronJob":               {"spec", "jobTemplate", "spec", "template", "spec"},
}

// input is one file (or stdin) and what was read from it.
type input struct {
	name   string
	rw     *kio.ByteReadWriter
	nodes  []*yaml.RNode
	images []imageField
}

// imageField is one image reference in a manifest.
type imageField struct {
	node      *yaml.Node
	file      string
	line      int
	object    string
	container string
}

// where names an image field for a message: "file:line: Kind/name
// container c".
func (f imageField) where() string {
	return fmt.Sprintf("%s:%d: %s container %s", f.file, f.line, printable(f.object), printable(f.container))
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
	fs.Var(&insecure, "insecure-registry", "registry host reached over plain HTTP or TLS without verification; repeatable")
	var allowed registry.AllowedRegistriesFlag
	fs.Var(&allowed, "allowed-registries", registry.AllowedRegistriesUsage)
	caFile := fs.String("registry-ca-file", "", "PEM CA certificates trusted for registries")
	qps := fs.Float64("registry-qps", 50, "requests per second sent to each registry host")
	burst := fs.Int("registry-burst", 50, "requests one registry host may get in a burst")
	fs.Usage = func() {
		say(stderr, "usage: imagepin pin [-f FILE|DIR|-]... [--check]")
		say(stderr, "Pins every container image of the manifests to repo:tag@sha256:... and writes them to stdout.")
		fs.PrintDefaults()
	}
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		sayf(stderr, "imagepin pin: unexpected argument %q (files go after -f)\n", fs.Arg(0))
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
	if len(failures) == 0 {
		for _, f := range unpinned {
			pinned, err := selection.PinnedImage(f.node.Value, digests[f.node.Value])
			if err != nil {
				failures = append(failures, fmt.Sprintf("%s: %v", f.where(), err))
				continue
			}
			f.node.Value = pinned
		}
	}
	if len(failures) > 0 {
		for _, f := range failures {
			say(stderr, "imagepin pin:", f)
		}
		return 1
	}
	for i, in := range inputs {
		var buf bytes.Buffer
		in.rw.Writer = &buf
		if err := in.rw.Write(in.nodes); err != nil {
			sayf(stderr, "imagepin pin: write %s: %v\n", in.name, err)
			return 1
		}
		if i > 0 && in.rw.FunctionConfig == nil && !bytes.HasPrefix(buf.Bytes(), []byte("---")) {
			say(stdout, "---")
		}
		if _, err := stdout.Write(buf.Bytes()); err != nil {
			return 1
		}
	}
	return 0
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
	in := &input{name: name, rw: &kio.ByteReadWriter{
		Reader: bytes.NewReader(raw), PreserveSeqIndent: true,
	}}
	in.nodes, err = in.rw.Read()
	if err != nil {
		return nil, fmt.Errorf("%s: not valid YAML: %w", name, err)
	}
	offsets := documentOffsets(raw)
	for i, n := range in.nodes {
		offset := 0
		if in.rw.FunctionConfig == nil && i < len(offsets) {
			offset = offsets[i]
		}
		collect(n, name, offset, &in.images)
	}
	return in, nil
}

// documentOffsets returns, per YAML document, the line before its first
// line, for line numbers relative to the file.
func documentOffsets(raw []byte) []int {
	offsets := []int{0}
	lines := strings.Split(string(raw), "\n")
	for i, l := range lines {
		if strings.HasPrefix(l, "---") && i > 0 {
			offsets = append(offsets, i+1)
		}
	}
	if strings.HasPrefix(strings.TrimSpace(string(raw)), "---") {
		offsets = offsets[1:]
	}
	return offsets
}

// collect finds every image field of a pod-bearing object, and in the
// items of a List.
func collect(n *yaml.RNode, file string, offset int, out *[]imageField) {
	kind := n.GetKind()
	if kind == "List" || strings.HasSuffix(kind, "List") {
		items, err := n.Pipe(yaml.Lookup("items"))
		if err != nil || items == nil {
			return
		}
		elems, _ := items.Elements()
		for _, e := range elems {
			collect(e, file, offset, out)
		}
		return
	}
	path, ok := podSpecPaths[kind]
	if !ok {
		return
	}
	spec, err := n.Pipe(yaml.Lookup(path...))
	if err != nil || spec == nil {
		return
	}
	object := kind + "/" + n.GetName()
	for _, list := range []string{"initContainers", "containers", "ephemeralContainers"} {
		seq, err := spec.Pipe(yaml.Lookup(list))
		if err != nil || seq == nil {
			continue
		}
		elems, _ := seq.Elements()
		for _, c := range elems {
			img, err := c.Pipe(yaml.Lookup("image"))
			if err != nil || img == nil || img.YNode().Value == "" {
				continue
			}
			name := ""
			if nn, _ := c.Pipe(yaml.Lookup("name")); nn != nil {
				name = nn.YNode().Value
			}
			*out = append(*out, imageField{node: img.YNode(), file: file, line: offset + img.YNode().Line, object: object, container: name})
		}
	}
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
