package cli

import (
	"bytes"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/kustomize/kyaml/yaml"
)

// FuzzScalarSpan checks the one thing byte-for-byte pinning rests on
// (issue 13 item 11): the bytes found at the position the parser gives a
// scalar are that scalar, and replacing them with another value in the
// same quoting style yields YAML with that value at the same place. A
// scalar that cannot be found must be refused, never edited elsewhere.
func FuzzScalarSpan(f *testing.F) {
	for _, dir := range []string{"testdata", filepath.Join("testdata", "corpus")} {
		names, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
		if err != nil {
			f.Fatal(err)
		}
		for _, name := range names {
			raw, err := os.ReadFile(name)
			if err != nil {
				f.Fatal(err)
			}
			f.Add(raw)
		}
	}
	for _, s := range []string{
		"image: &a x\nb: *a\n", "image: !!str &a 'x'\n", "\xef\xbb\xbfa: b\n", "a: b\r\nc: \"d\"\r\n",
		"é: {ü: 'x''y', b: \"q\\\"r\"}\n", "a: b\u2028c: d\n", "a: b\rc: d\n", "a: b\u0085c: d\n",
		"a: >-\n  x\nb: |\n\n  y\n", "- [a, 'b', \"c\"]\n- {k: v}\n", "a: !t\n  x\n", "a: &x # c\n  y\n",
		"a: \"x\n  y\"\n", "a:\tb\n", "--- a\n...\n--- 'b'\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		scalars, ok := decodeScalars(raw)
		if !ok {
			return
		}
		src := newSource(raw)
		for i, n := range scalars {
			if i == 20 {
				break
			}
			if n.Value == "" || n.Tag == "!!null" {
				continue // imagepin pin never edits an empty image
			}
			start, end, err := src.scalarSpan(n)
			plain := n.Style&(yaml.SingleQuotedStyle|yaml.DoubleQuotedStyle|yaml.LiteralStyle|yaml.FoldedStyle) == 0
			if err != nil {
				if plain && !strings.ContainsAny(n.Value, " \t\n\r") {
					t.Fatalf("plain scalar %q at %d:%d not found: %v", n.Value, n.Line, n.Column, err)
				}
				continue
			}
			token := raw[start:end]
			if plain && string(token) != n.Value {
				t.Fatalf("plain scalar %q at %d:%d found as %q", n.Value, n.Line, n.Column, token)
			}
			if bytes.ContainsAny(token, "\r\n") {
				continue
			}
			var buf bytes.Buffer
			if err := writeEdited(&buf, raw, []edit{{start: start, end: end, text: replacement(n.Style, "x9")}}); err != nil {
				t.Fatal(err)
			}
			edited := buf.Bytes()
			again, ok := decodeScalars(edited)
			if !ok {
				t.Fatalf("replacing %q at %d:%d with x9 made invalid YAML:\n%s", token, n.Line, n.Column, edited)
			}
			found := false
			for _, m := range again {
				found = found || (m.Line == n.Line && m.Column == n.Column && strings.TrimRight(m.Value, "\n") == "x9")
			}
			if !found {
				t.Fatalf("replacing %q at %d:%d with x9: no such scalar there after:\n%s", token, n.Line, n.Column, edited)
			}
		}
	})
}

// decodeScalars returns every scalar of every document of raw, or false
// when raw is not YAML.
func decodeScalars(raw []byte) ([]*yaml.Node, bool) {
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	var out []*yaml.Node
	var walk func(n *yaml.Node)
	walk = func(n *yaml.Node) {
		if n.Kind == yaml.ScalarNode {
			out = append(out, n)
		}
		for _, c := range n.Content {
			walk(c)
		}
	}
	for {
		var doc yaml.Node
		err := dec.Decode(&doc)
		if errors.Is(err, io.EOF) {
			return out, true
		}
		if err != nil {
			return nil, false
		}
		walk(&doc)
	}
}
