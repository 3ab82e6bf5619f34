package workload

import (
	"slices"
	"sort"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"sigs.k8s.io/controller-runtime/pkg/client"
)

// maxKeyLength is the longest template key status takes.
const maxKeyLength = 253

// Wildcard is the path segment that stands for every key of a map, or
// every item of a list, of replica specs.
const Wildcard = "*"

// SpecPath is where a kind keeps one pod spec (or, with wildcards, one
// pod spec per replica spec).
type SpecPath struct {
	// Name names the template among the kind's, when it has several
	// paths ("leader", "worker"); empty for a kind with one.
	Name string
	// Fields are the field names from the object's root; Wildcard for
	// each key of a map or each item of a list.
	Fields []string
}

func (p SpecPath) String() string {
	s := strings.Join(p.Fields, ".")
	if p.Name != "" {
		return p.Name + ":" + s
	}
	return s
}

// Template is one pod spec of one object.
type Template struct {
	// Key names the template among its object's: "" for a kind with one,
	// else the path's name and what each wildcard stood for (a map's key;
	// a list item's name, or its index when it has none), "/"-joined:
	// "Worker" for spec.pytorchReplicaSpecs.*.template.spec.
	Key string
	// Pointer is the JSON pointer of the pod spec in the object.
	Pointer string
	// Spec is the pod spec: in place for a typed kind, a decoded copy for
	// an unstructured one (read it, do not write it).
	Spec *corev1.PodSpec
}

// Templates returns the pod specs of obj, an object of the kind, in the
// order of its spec paths (and of map keys, sorted, and list items within
// one); none when obj is not of the kind or holds no pod spec where the
// paths say. A value that is not a pod spec is left out.
func (k *Kind) Templates(obj client.Object) []Template {
	if k.Type != nil {
		spec := k.PodSpec(obj)
		if spec == nil {
			return nil
		}
		return []Template{{Pointer: pointerOf(k.Specs[0].Fields), Spec: spec}}
	}
	u, ok := obj.(*unstructured.Unstructured)
	if !ok || u.GroupVersionKind().GroupKind() != k.GVK.GroupKind() {
		return nil
	}
	var out []Template
	for _, p := range k.Specs {
		expand(u.Object, p.Fields, nil, nil, func(at, keys []string, raw map[string]any) {
			var spec corev1.PodSpec
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(raw, &spec); err != nil {
				return
			}
			out = append(out, Template{Key: TemplateKey(p.Name, keys), Pointer: pointerOf(at), Spec: &spec})
		})
	}
	return out
}

// TemplateKey is the key of a template found through a spec path named
// name (or not), its wildcards standing for keys: "/"-joined, 253 bytes at
// most (what status holds).
func TemplateKey(name string, keys []string) string {
	if name != "" {
		keys = append([]string{name}, keys...)
	}
	key := strings.Join(keys, "/")
	if len(key) > maxKeyLength {
		key = key[:maxKeyLength]
	}
	return key
}

// ItemKeys are the keys of the n items of a list of replica specs under a
// wildcard: their names (name(i), "" for none) when every item has a
// distinct one, as JobSet requires, else their indices, so that two
// templates never share a key.
func ItemKeys(n int, name func(i int) string) []string {
	keys := make([]string, n)
	seen := map[string]bool{}
	for i := range keys {
		if keys[i] = name(i); keys[i] == "" || seen[keys[i]] {
			for j := range keys {
				keys[j] = strconv.Itoa(j)
			}
			return keys
		}
		seen[keys[i]] = true
	}
	return keys
}

// expand walks fields through v, calling found with the concrete path,
// what each wildcard stood for, and the map at the end.
func expand(v any, fields, at, keys []string, found func(at, keys []string, raw map[string]any)) {
	if len(fields) == 0 {
		if m, ok := v.(map[string]any); ok {
			found(at, keys, m)
		}
		return
	}
	step, rest := fields[0], fields[1:]
	switch x := v.(type) {
	case map[string]any:
		if step != Wildcard {
			if next, ok := x[step]; ok {
				expand(next, rest, append(at, step), keys, found)
			}
			return
		}
		names := make([]string, 0, len(x))
		for name := range x {
			names = append(names, name)
		}
		sort.Strings(names)
		for _, name := range names {
			expand(x[name], rest, append(slices.Clone(at), name), append(slices.Clone(keys), name), found)
		}
	case []any:
		if step != Wildcard {
			return
		}
		itemKeys := ItemKeys(len(x), func(i int) string {
			m, _ := x[i].(map[string]any)
			name, _ := m["name"].(string)
			return name
		})
		for i, item := range x {
			expand(item, rest, append(slices.Clone(at), strconv.Itoa(i)), append(slices.Clone(keys), itemKeys[i]), found)
		}
	}
}

// JSON pointer (RFC 6901) escapes.
var (
	escapePointer   = strings.NewReplacer("~", "~0", "/", "~1")
	unescapePointer = strings.NewReplacer("~1", "/", "~0", "~")
)

// pointerOf is the JSON pointer of a path of field names.
func pointerOf(fields []string) string {
	var b strings.Builder
	for _, f := range fields {
		b.WriteByte('/')
		b.WriteString(escapePointer.Replace(f))
	}
	return b.String()
}

// ValueAt returns the value at a JSON pointer (a Template's) in an
// unstructured object, through maps and lists, or nil.
func ValueAt(obj map[string]any, pointer string) any {
	var v any = obj
	if pointer == "" {
		return v
	}
	for _, step := range strings.Split(strings.TrimPrefix(pointer, "/"), "/") {
		step = unescapePointer.Replace(step)
		switch x := v.(type) {
		case map[string]any:
			v = x[step]
		case []any:
			i, err := strconv.Atoi(step)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}
