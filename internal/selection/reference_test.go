package selection

import (
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"

	"github.com/imagepin/imagepin/internal/drift"
)

var (
	digestA = "sha256:" + strings.Repeat("a", 64)
	digestB = "sha256:" + strings.Repeat("b", 64)
)

func TestPinnedImage(t *testing.T) {
	tests := []struct {
		image, digest string
		want          string // "" for an error
	}{
		{"reg.io/app:v1", digestA, "reg.io/app:v1@" + digestA},
		{"nginx:1.27", digestA, "nginx:1.27@" + digestA},
		{"docker.io/library/nginx:1.27", digestA, "docker.io/library/nginx:1.27@" + digestA},
		// Issue 13 item 4: an untagged image keeps the tag it implies, so
		// that there is still a tag to follow.
		{"nginx", digestA, "nginx:latest@" + digestA},
		{"reg.io/team/app", digestA, "reg.io/team/app:latest@" + digestA},
		// Registry ports and nested paths.
		{"localhost:5000/a/b:v1", digestA, "localhost:5000/a/b:v1@" + digestA},
		{"localhost:5000/a/b", digestA, "localhost:5000/a/b:latest@" + digestA},
		{"127.0.0.1:5000/team/sub/app:1.2.3-rc.1", digestA, "127.0.0.1:5000/team/sub/app:1.2.3-rc.1@" + digestA},
		{"[::1]:5000/app:v1", digestA, "[::1]:5000/app:v1@" + digestA},
		{"Registry.Example.com/app:V1_x", digestA, "Registry.Example.com/app:V1_x@" + digestA},
		{"reg.io/my_app/web-ui__x:v1", digestA, "reg.io/my_app/web-ui__x:v1@" + digestA},
		// Re-pinning replaces the digest; pinning again is a no-op.
		{"reg.io/app:v1@" + digestA, digestB, "reg.io/app:v1@" + digestB},
		{"reg.io/app:v1@" + digestA, digestA, "reg.io/app:v1@" + digestA},
		{"reg.io/app@" + digestA, digestB, "reg.io/app@" + digestB},

		// Bad digests.
		{"reg.io/app:v1", "", ""},
		{"reg.io/app:v1", "sha256:abc", ""},
		{"reg.io/app:v1", strings.ToUpper(digestA), ""},
		{"reg.io/app:v1", "sha256:" + strings.Repeat("A", 64), ""},
		{"reg.io/app:v1", "sha512:" + strings.Repeat("a", 128), ""},
		{"reg.io/app:v1", strings.Repeat("a", 64), ""},
		{"reg.io/app:v1", digestA + "\n", ""},
		{"reg.io/app:v1", "@" + digestA, ""},
		// Bad images.
		{"", digestA, ""},
		{"Reg/App:v1", digestA, ""},
		{"reg.io/App:v1", digestA, ""},
		{"reg.io/app:", digestA, ""},
		{"reg.io/app:-v1", digestA, ""},
		{"reg.io/app:.v1", digestA, ""},
		{"reg.io/app:v1 ", digestA, ""},
		{" reg.io/app:v1", digestA, ""},
		{"reg.io//app:v1", digestA, ""},
		{"reg.io/app/:v1", digestA, ""},
		{"reg.io/-app:v1", digestA, ""},
		{"reg.io/app:v1:v2", digestA, ""},
		{"localhost:port/app:v1", digestA, ""},
		{"reg.io/app:" + strings.Repeat("x", 129), digestA, ""},
		{"reg.io/" + strings.Repeat("a", 256), digestA, ""},
		{"reg.io/app:v1@", digestA, ""},
		{"reg.io/app:v1@sha256:short", digestA, ""},
		{"reg.io/app:v1@" + digestA + "@" + digestA, digestB, ""},
		{"@" + digestA, digestA, ""},
		{"reg.io/app:v1\x00", digestA, ""},
		{"reg.io/äpp:v1", digestA, ""},
	}
	for _, tt := range tests {
		got, err := PinnedImage(tt.image, tt.digest)
		if tt.want == "" {
			if err == nil {
				t.Errorf("PinnedImage(%q, %q) = %q, want an error", tt.image, tt.digest, got)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("PinnedImage(%q, %q) = %q, %v; want %q", tt.image, tt.digest, got, err, tt.want)
		}
	}
}

func TestPinnedImageErrorNamesTheCause(t *testing.T) {
	_, err := PinnedImage("reg.io/App:v1", digestA)
	if err == nil || !strings.Contains(err.Error(), "lowercase") || !strings.Contains(err.Error(), `"reg.io/App:v1"`) {
		t.Errorf("error = %v, want the image and that it must be lowercase", err)
	}
	_, err = PinnedImage("reg.io/app:v1", "sha256:abc")
	if err == nil || !strings.Contains(err.Error(), "not a sha256 digest") {
		t.Errorf("error = %v, want that the digest is not one", err)
	}
}

// FuzzPinnedImage: for any image and digest, PinnedImage never panics, and
// whatever it returns without an error is a digest reference that names
// exactly that digest, keeps the reference it was given up to the digest,
// and is pinned already (pinning it again changes nothing).
func FuzzPinnedImage(f *testing.F) {
	for _, image := range []string{
		"reg.io/app:v1", "nginx", "nginx:1.27", "docker.io/library/nginx:latest",
		"localhost:5000/a/b:v1", "localhost:5000/a/b", "[::1]:5000/app:v1", "127.0.0.1:5000/x/y/z:1.0",
		"reg.io/app:v1@" + digestB, "reg.io/app@" + digestB, "Reg.io/app:v1", "reg.io/App:v1",
		"reg.io/app:", "reg.io//app", "reg.io/app:v1@sha256:short", "a@b@c", "", " ", ":", "@", "/",
		"reg.io/app:v1 ", "reg.io/app:-x", "localhost:port/x",
	} {
		for _, digest := range []string{digestA, "sha256:abc", "", strings.ToUpper(digestA), "sha512:" + strings.Repeat("a", 128)} {
			f.Add(image, digest)
		}
	}
	f.Fuzz(func(t *testing.T, image, digest string) {
		out, err := PinnedImage(image, digest)
		if err != nil {
			if out != "" {
				t.Fatalf("PinnedImage(%q, %q) returned %q with error %v", image, digest, out, err)
			}
			return
		}
		d, perr := name.NewDigest(out)
		if perr != nil {
			t.Fatalf("PinnedImage(%q, %q) = %q, which does not parse as a digest reference: %v", image, digest, out, perr)
		}
		if d.DigestStr() != digest {
			t.Fatalf("PinnedImage(%q, %q) = %q names digest %q", image, digest, out, d.DigestStr())
		}
		if _, perr := name.ParseReference(out); perr != nil {
			t.Fatalf("PinnedImage(%q, %q) = %q, which does not parse as a reference: %v", image, digest, out, perr)
		}
		// A fully qualified reference (registry, path, tag or none) stays
		// one under go-containerregistry's strict validation.
		base := drift.StripDigest(out)
		_, tagErr := name.NewTag(base, name.StrictValidation)
		_, repoErr := name.NewRepository(base, name.StrictValidation)
		if tagErr == nil || repoErr == nil {
			if _, perr := name.ParseReference(out, name.StrictValidation); perr != nil {
				t.Fatalf("PinnedImage(%q, %q) = %q, which does not pass strict validation: %v", image, digest, out, perr)
			}
		}
		if !referenceName.MatchString(base) {
			t.Fatalf("PinnedImage(%q, %q) = %q, whose name is not in the distribution grammar", image, digest, out)
		}
		want := WithImpliedTag(drift.StripDigest(image))
		if strings.Contains(image, "@") {
			want = drift.StripDigest(image)
		}
		if drift.StripDigest(out) != want {
			t.Fatalf("PinnedImage(%q, %q) = %q: StripDigest %q, want %q", image, digest, out, drift.StripDigest(out), want)
		}
		again, err := PinnedImage(out, digest)
		if err != nil || again != out {
			t.Fatalf("PinnedImage(%q, %q) = %q, %v; pinning %q again should return it", out, digest, again, err, out)
		}
	})
}
