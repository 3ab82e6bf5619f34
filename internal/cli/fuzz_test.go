package cli

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// FuzzCheck runs `imagepin pin --check` on arbitrary YAML from stdin: it
// never panics, exits 0 (all pinned) or 1 (unpinned images, or input that
// is not YAML, with a message), and lists exactly the image fields it
// found without a digest.
func FuzzCheck(f *testing.F) {
	for _, name := range []string{"deployment.yaml", "list.yaml", "resourcelist.yaml", "malformed.yaml", "unresolvable.yaml"} {
		raw, err := os.ReadFile(filepath.Join("testdata", name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(raw)
	}
	for _, s := range []string{
		"", "---", "--- \n---\n", "kind: Pod\nspec: {containers: [{image: a}]}",
		"kind: Pod\nspec:\n  containers:\n  - image: &x a\n  - image: *x\n",
		"kind: List\nitems: [{kind: List, items: [{kind: Pod, spec: {containers: [{image: b}]}}]}]",
		"kind: CronJob\nspec: {jobTemplate: {spec: {template: {spec: {initContainers: [{image: [1]}]}}}}}",
		"kind: ResourceList\nitems: []\nfunctionConfig: {kind: X}",
		"kind: Pod\nspec: {containers: {image: x}}", "- a\n- b", "a: !!binary AAAA", "? [a]\n: b",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var out, errb bytes.Buffer
		code := Pin(context.Background(), []string{"--check", "-f", "-"}, bytes.NewReader(raw), &out, &errb)
		switch code {
		case 0:
			if out.Len() > 0 || errb.Len() > 0 {
				t.Fatalf("exit 0 with output %q, %q", out.String(), errb.String())
			}
		case 1:
			if errb.Len() == 0 {
				t.Fatalf("exit 1 without a message; stdout %q", out.String())
			}
			for _, line := range strings.Split(strings.TrimSuffix(out.String(), "\n"), "\n") {
				if line != "" && !strings.HasPrefix(line, "<stdin>:") {
					t.Fatalf("--check line %q does not name stdin and a line", line)
				}
			}
		default:
			t.Fatalf("exit %d, want 0 or 1; stderr %q", code, errb.String())
		}
	})
}
