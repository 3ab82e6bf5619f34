package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/kustomize/kyaml/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

// kindOfObject returns the kind of internal/workload's table a document
// is an object of, or nil: every kind imagepin knows, those the controller
// and the webhook leave alone included, so that a CI gate covers them all,
// and those configured with --workload-kind. A built-in kind is matched by
// its kind alone; a configured one by its kind and its apiVersion's group
// as well, so that a custom resource named like another kind (a Knative
// Service) does not capture that kind's documents (a core Service), nor
// the other way round. A kind with no pod spec (a custom kind a
// configured one only names in via=) has nothing to pin.
func kindOfObject(n *yaml.Node) *workload.Kind {
	k := workload.KindNamed(imagesv1alpha1.WorkloadKind(kindOf(n)))
	if k == nil || len(k.Specs) == 0 {
		return nil
	}
	if k.Configured {
		gv, err := schema.ParseGroupVersion(scalarAt(n, "apiVersion"))
		if err != nil || gv.Version == "" || gv.Group != k.GVK.Group {
			return nil
		}
	}
	return k
}

// podSpec is one pod spec of an object: its mapping and its template key
// (workload.Template's Key): "" for a kind with one spec path and no
// wildcard, else the path's name and what each wildcard stood for, a
// map's key or a list item's name (its index when it has none),
// "/"-joined.
type podSpec struct {
	key  string
	node *yaml.Node
}

// maxSpecWalk bounds the nodes one object's spec paths visit, so that
// aliases nested under wildcards cannot make the walk exponential.
const maxSpecWalk = 1 << 14

// podSpecs returns every pod spec of n, an object of kind k, through each
// of the kind's spec paths in turn: a wildcard expands over a mapping's
// keys in document order (its own, then those its merge keys bring) and a
// sequence's items in order, aliases followed as lookup does.
func podSpecs(n *yaml.Node, k *workload.Kind) ([]podSpec, error) {
	var out []podSpec
	budget := maxSpecWalk
	var walk func(n *yaml.Node, fields, keys []string) error
	walk = func(n *yaml.Node, fields, keys []string) error {
		if budget--; budget < 0 {
			return fmt.Errorf("its spec paths reach more than %d nodes (aliases under wildcards?)", maxSpecWalk)
		}
		n = dealias(n)
		if n == nil {
			return nil
		}
		if len(fields) == 0 {
			if n.Kind == yaml.MappingNode {
				out = append(out, podSpec{key: workload.TemplateKey("", keys), node: n})
			}
			return nil
		}
		step, rest := fields[0], fields[1:]
		if step != workload.Wildcard {
			if v := lookupField(n, step); v != nil {
				return walk(v, rest, keys)
			}
			return nil
		}
		switch n.Kind {
		case yaml.MappingNode:
			for _, e := range mappingEntries(n) {
				if err := walk(e.value, rest, append(slices.Clone(keys), e.key)); err != nil {
					return err
				}
			}
		case yaml.SequenceNode:
			// Keyed as the controller keys them.
			itemKeys := workload.ItemKeys(len(n.Content), func(i int) string {
				if name := lookup(n.Content[i], "name"); name != nil && name.Kind == yaml.ScalarNode && name.ShortTag() == "!!str" {
					return name.Value
				}
				return ""
			})
			for i, item := range n.Content {
				if err := walk(item, rest, append(slices.Clone(keys), itemKeys[i])); err != nil {
					return err
				}
			}
		}
		return nil
	}
	for _, p := range k.Specs {
		var keys []string
		if p.Name != "" {
			keys = []string{p.Name}
		}
		if err := walk(n, p.Fields, keys); err != nil {
			return nil, err
		}
	}
	return out, nil
}

// entry is one key of a mapping and its value as written.
type entry struct {
	key   string
	value *yaml.Node
}

// mappingEntries returns the scalar keys of mapping n and their values as
// lookupField finds them: its own keys in document order, then those its
// `<<` merge keys bring that it does not have itself (an earlier merge
// source winning over a later one).
func mappingEntries(n *yaml.Node) []entry {
	var out []entry
	seen := map[string]bool{}
	visited := map[*yaml.Node]bool{}
	var add func(n *yaml.Node, depth int)
	add = func(n *yaml.Node, depth int) {
		n = dealias(n)
		if n == nil || n.Kind != yaml.MappingNode || depth > 16 || visited[n] {
			return
		}
		visited[n] = true
		var merges []*yaml.Node
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, v := dealias(n.Content[i]), n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				continue
			}
			if k.Tag == yaml.MergeTag {
				merges = append(merges, v)
				continue
			}
			if !seen[k.Value] {
				seen[k.Value] = true
				out = append(out, entry{key: k.Value, value: v})
			}
		}
		for _, s := range mergeSources(merges) {
			add(s, depth+1)
		}
	}
	add(n, 0)
	return out
}

// mergeSources are the mappings `<<` merge keys with the values merges
// bring, in precedence order: `<<: *a` one, `<<: [*a, *b]` each.
func mergeSources(merges []*yaml.Node) []*yaml.Node {
	var out []*yaml.Node
	for _, m := range merges {
		m = dealias(m)
		if m.Kind == yaml.SequenceNode {
			out = append(out, m.Content...)
			continue
		}
		out = append(out, m)
	}
	return out
}

// containerLists are the pod spec fields whose items carry an image.
var containerLists = []string{"initContainers", "containers", "ephemeralContainers"}

// input is one file (or stdin): its bytes exactly as read, and the image
// fields found in them. Output is these bytes with only the image scalars
// replaced, so nothing is ever re-serialized. No parsed document is kept:
// each is decoded, searched and dropped, so that memory grows with the
// input's bytes and its image fields, not with its parse trees.
type input struct {
	name string
	raw  []byte
	// resourceList is set when the input is one KRM ResourceList (the
	// input of a kustomize or kpt exec function).
	resourceList bool
	images       []imageField
}

// imageField is one image reference in a manifest.
type imageField struct {
	// ref is the reference as the manifest holds it; for `image: *ref`,
	// the anchored scalar's value.
	ref       string
	file      string
	line      int
	object    string
	container string
	// volume: container names an image volume.
	volume bool
	// For an unpinned reference: where the scalar's text is in the
	// input (for `image: *ref`, the anchored scalar, which is where the
	// bytes are), its quoting style, or why it cannot be edited in place.
	start, end int
	style      yaml.Style
	spanErr    error
	// node is the scalar while its document is being searched; nil after.
	node *yaml.Node
}

// pinned reports whether the reference already names a digest.
func (f *imageField) pinned() bool { return strings.Contains(f.ref, "@") }

// scanInput decodes the documents of raw one at a time, with positions
// relative to the whole stream, collects their image fields and calls
// found with each unpinned reference as soon as its document is read, so
// that resolving can start while the rest is parsed. With found nil
// (--check), nothing will be edited: where the scalars are is not worked
// out. Each document's tree
// is dropped before the next is decoded.
func scanInput(name string, raw []byte, found func(ref string)) (*input, error) {
	in := &input{name: name, raw: raw}
	var src *source
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	docs := 0
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: not valid YAML: %w", name, err)
		}
		if len(doc.Content) == 0 {
			continue
		}
		root := doc.Content[0]
		docs++
		in.resourceList = docs == 1 && kindOf(root) == "ResourceList"
		first := len(in.images)
		if err := collect(root, name, &in.images); err != nil {
			return nil, err
		}
		for i := first; i < len(in.images); i++ {
			f := &in.images[i]
			if !f.pinned() && found != nil {
				if src == nil {
					src = newSource(raw)
				}
				f.start, f.end, f.spanErr = src.scalarSpan(f.node)
				f.style = f.node.Style
				found(f.ref)
			}
			f.node = nil
		}
	}
	return in, nil
}

// collect finds every image field of a pod-bearing object, in each of its
// pod specs, and in the items of a List (a ResourceList's included).
func collect(n *yaml.Node, file string, out *[]imageField) error {
	kind := kindOf(n)
	k := kindOfObject(n)
	if k == nil && strings.HasSuffix(kind, "List") {
		if items := lookup(n, "items"); items != nil && items.Kind == yaml.SequenceNode {
			for _, item := range items.Content {
				if err := collect(item, file, out); err != nil {
					return err
				}
			}
		}
		return nil
	}
	if k == nil {
		return nil
	}
	object := kind + "/" + scalarAt(n, "metadata", "name")
	specs, err := podSpecs(n, k)
	if err != nil {
		return fmt.Errorf("%s:%d: %s: %w", file, n.Line, printable(object), err)
	}
	for _, s := range specs {
		collectSpec(s, file, object, out)
	}
	return nil
}

// collectSpec finds the image fields of one pod spec of object. Their
// container (or volume) names carry the template's key, "Worker/pytorch",
// when it has one, so that messages tell replica specs apart.
func collectSpec(s podSpec, file, object string, out *[]imageField) {
	name := func(n *yaml.Node) string {
		if s.key == "" {
			return scalarAt(n, "name")
		}
		return s.key + "/" + scalarAt(n, "name")
	}
	spec := s.node
	for _, list := range containerLists {
		seq := lookup(spec, list)
		if seq == nil || seq.Kind != yaml.SequenceNode {
			continue
		}
		for _, c := range seq.Content {
			field := lookupField(c, "image")
			if field == nil {
				continue
			}
			img := dealias(field)
			if img.Kind != yaml.ScalarNode || img.Value == "" || img.Tag == "!!null" {
				continue
			}
			*out = append(*out, imageField{ref: img.Value, node: img, file: file, line: field.Line, object: object, container: name(c)})
		}
	}
	// Image volumes (Kubernetes 1.33+): volumes[].image.reference.
	if seq := lookup(spec, "volumes"); seq != nil && seq.Kind == yaml.SequenceNode {
		for _, v := range seq.Content {
			source := lookup(v, "image")
			if source == nil {
				continue
			}
			field := lookupField(source, "reference")
			if field == nil {
				continue
			}
			img := dealias(field)
			if img.Kind != yaml.ScalarNode || img.Value == "" || img.Tag == "!!null" {
				continue
			}
			*out = append(*out, imageField{ref: img.Value, node: img, file: file, line: field.Line, object: object, container: name(v), volume: true})
		}
	}
}

// kindOf returns a document's kind, or "" when it has none.
func kindOf(n *yaml.Node) string { return scalarAt(n, "kind") }

// scalarAt returns the scalar at path below n, or "".
func scalarAt(n *yaml.Node, path ...string) string {
	v := lookup(n, path...)
	if v == nil || v.Kind != yaml.ScalarNode {
		return ""
	}
	return v.Value
}

// lookup follows path through mappings below n (aliases and merge keys
// included) and returns the node there, aliases resolved, or nil.
func lookup(n *yaml.Node, path ...string) *yaml.Node {
	for _, key := range path {
		v := lookupField(n, key)
		if v == nil {
			return nil
		}
		n = dealias(v)
	}
	return dealias(n)
}

// lookupField returns the value of key in mapping n as written (an alias
// is not resolved, so that its own line can be reported), looking into
// `<<` merge keys when n does not have the key itself.
func lookupField(n *yaml.Node, key string) *yaml.Node {
	return lookupFieldDepth(n, key, 0)
}

func lookupFieldDepth(n *yaml.Node, key string, depth int) *yaml.Node {
	n = dealias(n)
	if n == nil || n.Kind != yaml.MappingNode || depth > 16 {
		return nil
	}
	var merges []*yaml.Node
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := dealias(n.Content[i]), n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			continue
		}
		if k.Value == key && k.Tag != yaml.MergeTag {
			return v
		}
		if k.Tag == yaml.MergeTag {
			merges = append(merges, v)
		}
	}
	for _, s := range mergeSources(merges) {
		if v := lookupFieldDepth(s, key, depth+1); v != nil {
			return v
		}
	}
	return nil
}

// dealias returns the node an alias names, or n itself.
func dealias(n *yaml.Node) *yaml.Node {
	for i := 0; n != nil && n.Kind == yaml.AliasNode && i < 16; i++ {
		n = n.Alias
	}
	return n
}
