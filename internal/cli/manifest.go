package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"strings"

	"sigs.k8s.io/kustomize/kyaml/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
	"github.com/imagepin/imagepin/internal/workload"
)

// podSpecPath says where a kind keeps its pod spec: every kind imagepin
// knows (internal/workload's table), those the controller and the webhook
// leave alone included, so that a CI gate covers them all.
func podSpecPath(kind string) ([]string, bool) {
	k := workload.KindNamed(imagesv1alpha1.WorkloadKind(kind))
	if k == nil {
		return nil, false
	}
	return k.PodSpecPath, true
}

// containerLists are the pod spec fields whose items carry an image.
var containerLists = []string{"initContainers", "containers", "ephemeralContainers"}

// input is one file (or stdin): its bytes exactly as read, and the image
// fields found in them. Output is these bytes with only the image scalars
// replaced, so nothing is ever re-serialized.
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
	// node is the scalar that holds the reference: for `image: *ref`, the
	// anchored scalar the alias names, which is where the bytes are.
	node      *yaml.Node
	file      string
	line      int
	object    string
	container string
	// volume: container names an image volume.
	volume bool
}

// parseInput decodes every document of raw once, with positions relative
// to the whole stream, and collects its image fields.
func parseInput(name string, raw []byte) (*input, error) {
	in := &input{name: name, raw: raw}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var roots []*yaml.Node
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("%s: not valid YAML: %w", name, err)
		}
		if len(doc.Content) > 0 {
			roots = append(roots, doc.Content[0])
		}
	}
	in.resourceList = len(roots) == 1 && kindOf(roots[0]) == "ResourceList"
	for _, root := range roots {
		collect(root, name, &in.images)
	}
	return in, nil
}

// collect finds every image field of a pod-bearing object, and in the
// items of a List (a ResourceList's included).
func collect(n *yaml.Node, file string, out *[]imageField) {
	kind := kindOf(n)
	if strings.HasSuffix(kind, "List") {
		if items := lookup(n, "items"); items != nil && items.Kind == yaml.SequenceNode {
			for _, item := range items.Content {
				collect(item, file, out)
			}
		}
		return
	}
	path, ok := podSpecPath(kind)
	if !ok {
		return
	}
	spec := lookup(n, path...)
	if spec == nil {
		return
	}
	object := kind + "/" + scalarAt(n, "metadata", "name")
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
			*out = append(*out, imageField{node: img, file: file, line: field.Line, object: object, container: scalarAt(c, "name")})
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
			*out = append(*out, imageField{node: img, file: file, line: field.Line, object: object, container: scalarAt(v, "name"), volume: true})
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
	for _, m := range merges {
		m = dealias(m)
		sources := []*yaml.Node{m}
		if m.Kind == yaml.SequenceNode {
			sources = m.Content
		}
		for _, s := range sources {
			if v := lookupFieldDepth(s, key, depth+1); v != nil {
				return v
			}
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
