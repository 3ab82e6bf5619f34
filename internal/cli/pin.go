// Package cli holds imagepin's subcommands. `imagepin pin` pins the images
// of Kubernetes manifests in a CI pipeline, before they reach a cluster,
// with the same resolver as the operator. It writes its input back byte
// for byte but the image scalars it pins (manifest.go finds them, edit.go
// replaces them where the parser says they are): CI users diff and commit
// what it writes.
package cli

import (
	"bufio"
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

	"github.com/imagepin/imagepin/internal/registry"
	"github.com/imagepin/imagepin/internal/selection"
	"github.com/imagepin/imagepin/internal/workload"
)

// where names an image field for a message: "file:line: Kind/name
// container c".
func (f *imageField) where() string {
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

	// Resolving starts as soon as a document names a reference, while the
	// rest is still being read (not for --check, which asks no registry).
	var res *resolution
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if !*check {
		resolver, err := registry.New(registry.Options{InsecureRegistries: insecure, AllowedRegistries: allowed, CAFile: *caFile, Timeout: *timeout, QPS: *qps, Burst: *burst, UserAgent: userAgent})
		if err != nil {
			say(stderr, "imagepin pin:", err)
			return 1
		}
		keychain, err := registry.CLIKeychain(ctx)
		if err != nil {
			say(stderr, "imagepin pin:", err)
			return 1
		}
		res = newResolution(ctx, resolver, keychain)
	}
	var found func(string)
	if res != nil {
		found = res.start
	}
	inputs, err := readInputs(files, stdin, found)
	if err != nil {
		cancel() // what was started is of no use
	}
	if res != nil {
		res.wait() // no resolution outlives Pin
	}
	if err != nil {
		say(stderr, "imagepin pin:", err)
		return 1
	}
	if *check {
		unpinned := 0
		for _, in := range inputs {
			for i := range in.images {
				if f := &in.images[i]; !f.pinned() {
					unpinned++
					sayf(stdout, "%s: %s is not pinned to a digest\n", f.where(), printable(f.ref))
				}
			}
		}
		if unpinned > 0 {
			sayf(stderr, "imagepin pin --check: %d unpinned %s\n", unpinned, plural(unpinned, "image"))
			return 1
		}
		return 0
	}

	failures := res.failures(inputs)
	edits := make([][]edit, len(inputs))
	if len(failures) == 0 {
		for i, in := range inputs {
			var errs []string
			edits[i], errs = pinEdits(in, res.digests)
			failures = append(failures, errs...)
		}
	}
	if len(failures) > 0 {
		for _, f := range failures {
			say(stderr, "imagepin pin:", f)
		}
		return 1
	}
	w := bufio.NewWriterSize(stdout, 64<<10)
	if err := writeAll(w, inputs, edits); err != nil {
		return 1
	}
	if err := w.Flush(); err != nil {
		return 1
	}
	return 0
}

// writeAll writes each input with its edits made, one after the other,
// with only what keeps their documents apart in between: a line break
// where one does not end in one, and "---" before one whose first document
// does not start with it (in the file's own line ending). An edit replaces
// a scalar's text with a reference, so it changes none of what decides
// these: the input's own bytes do.
func writeAll(w io.Writer, inputs []*input, edits [][]edit) error {
	written := false // whether a document may be open at the end of what was written
	for i, in := range inputs {
		raw := in.raw
		eol := "\n"
		if bytes.Contains(raw, []byte("\r\n")) {
			eol = "\r\n"
		}
		var between string
		if i > 0 && len(inputs[i-1].raw) > 0 && !bytes.HasSuffix(inputs[i-1].raw, []byte("\n")) {
			between = eol
		}
		if written && !in.resourceList && len(bytes.TrimSpace(raw)) > 0 && !startsWithMarker(raw) {
			between += "---" + eol
		}
		if _, err := io.WriteString(w, between); err != nil {
			return err
		}
		if err := writeEdited(w, raw, edits[i]); err != nil {
			return err
		}
		written = written || len(bytes.TrimSpace(raw)) > 0
	}
	return nil
}

// pinEdits returns the edits that replace every unpinned image scalar of
// the input with its pinned reference, in the scalar's own quoting style;
// not one other byte changes.
func pinEdits(in *input, digests map[string]string) ([]edit, []string) {
	var edits []edit
	var failures []string
	done := map[int]bool{} // a scalar named by several aliases is edited once
	for i := range in.images {
		f := &in.images[i]
		if f.pinned() {
			continue
		}
		if f.spanErr == nil {
			if done[f.start] {
				continue
			}
			done[f.start] = true
		}
		pinned, err := selection.PinnedImage(f.ref, digests[f.ref])
		if err == nil && strings.ContainsFunc(pinned, notReferenceChar) {
			err = fmt.Errorf("cannot pin %q: %q would need quoting", f.ref, pinned)
		}
		if err != nil {
			failures = append(failures, fmt.Sprintf("%s: %v", f.where(), err))
			continue
		}
		if f.spanErr != nil {
			failures = append(failures, fmt.Sprintf("%s: cannot edit the image in place: %v", f.where(), f.spanErr))
			continue
		}
		edits = append(edits, edit{start: f.start, end: f.end, text: replacement(f.style, pinned)})
	}
	return edits, failures
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

// userAgent tells a registry's logs the CI command from the operator
// ("imagepin", or "imagepin shard/<name>").
const userAgent = "imagepin pin"

// resolveWorkers bounds the resolutions in flight; the registry budget
// (--registry-qps, --registry-burst) bounds what reaches each registry.
const resolveWorkers = 16

// resolution resolves each distinct reference once, concurrently, as
// references are found.
type resolution struct {
	ctx context.Context
	r   *registry.Resolver
	kc  authn.Keychain
	sem chan struct{}
	wg  sync.WaitGroup

	mu      sync.Mutex
	seen    map[string]bool
	digests map[string]string
	errs    map[string]error
}

func newResolution(ctx context.Context, r *registry.Resolver, kc authn.Keychain) *resolution {
	return &resolution{ctx: ctx, r: r, kc: kc, sem: make(chan struct{}, resolveWorkers),
		seen: map[string]bool{}, digests: map[string]string{}, errs: map[string]error{}}
}

// start resolves ref in the background, unless it was already asked for.
func (rs *resolution) start(ref string) {
	rs.mu.Lock()
	defer rs.mu.Unlock()
	if rs.seen[ref] {
		return
	}
	rs.seen[ref] = true
	rs.wg.Go(func() {
		rs.sem <- struct{}{}
		defer func() { <-rs.sem }()
		res, err := rs.r.Resolve(rs.ctx, registry.Request{Image: ref, Keychain: rs.kc, TTL: time.Hour})
		rs.mu.Lock()
		defer rs.mu.Unlock()
		if err != nil {
			rs.errs[ref] = err
		} else {
			rs.digests[ref] = res.Digest
		}
	})
}

// wait returns when every resolution started has ended.
func (rs *resolution) wait() { rs.wg.Wait() }

// failures names each reference that did not resolve, at the first field
// that names it, sorted.
func (rs *resolution) failures(inputs []*input) []string {
	var out []string
	told := map[string]bool{}
	for _, in := range inputs {
		for i := range in.images {
			f := &in.images[i]
			if err := rs.errs[f.ref]; err != nil && !f.pinned() && !told[f.ref] {
				told[f.ref] = true
				out = append(out, fmt.Sprintf("%s: %v", f.where(), err))
			}
		}
	}
	sort.Strings(out)
	return out
}

// readInputs reads every file, directory and stdin named by -f, calling
// found with each unpinned reference as it is read.
func readInputs(files []string, stdin io.Reader, found func(string)) ([]*input, error) {
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
			in, err := readInput(p, stdin, found)
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

func readInput(path string, stdin io.Reader, found func(string)) (*input, error) {
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
	return scanInput(name, raw, found)
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
