package drift

import (
	"strings"
	"testing"
)

// FuzzDigestOfImageID: whatever a runtime (or anything else) writes into a
// container status's imageID, reading it never panics, and a digest it
// returns is a sha256 digest that the imageID names.
func FuzzDigestOfImageID(f *testing.F) {
	for _, id := range []string{
		"docker.io/library/nginx@" + digestA,
		"docker-pullable://nginx@" + digestA,
		"docker-pullable://registry.example.com:5000/team/app@" + digestA,
		"docker://" + digestA,
		digestA,
		" " + digestA + "\n",
		"reg.io/app:v1@" + digestA,
		"localhost:5000/a/b@" + digestA,
		"reg.io/app@sha512:" + strings.Repeat("a", 128),
		"reg.io/app@" + strings.ToUpper(digestA),
		"reg.io/app@sha256:abc",
		"reg.io/app@" + digestA + "@" + digestB,
		"reg.io/app@" + digestA + "x",
		"docker-pullable://docker-pullable://" + digestA,
		"docker://docker-pullable://" + digestA,
		"sha256:", "@", "", "\x00", "docker-pullable://",
	} {
		f.Add(id)
	}
	f.Fuzz(func(t *testing.T, id string) {
		d, ok := DigestOfImageID(id)
		if ok != (d != "") {
			t.Fatalf("DigestOfImageID(%q) = %q, %v: ok must say whether a digest was found", id, d, ok)
		}
		if !ok {
			return
		}
		if !IsDigest(d) || len(d) != len("sha256:")+64 {
			t.Fatalf("DigestOfImageID(%q) = %q, not a sha256 digest", id, d)
		}
		if !strings.Contains(id, d) {
			t.Fatalf("DigestOfImageID(%q) = %q, which the imageID does not name", id, d)
		}
		if !strings.HasSuffix(strings.TrimSpace(id), d) {
			t.Fatalf("DigestOfImageID(%q) = %q, which is not the digest the imageID ends with", id, d)
		}
		if strings.HasPrefix(strings.TrimSpace(id), "docker://") {
			t.Fatalf("DigestOfImageID(%q) = %q: a Docker image ID is a config digest, not a manifest", id, d)
		}
	})
}

// FuzzDigestOfImage: the digest of an image reference, when there is one,
// is a sha256 digest at its end, after an "@".
func FuzzDigestOfImage(f *testing.F) {
	for _, image := range []string{
		"reg.io/app:v1@" + digestA, "reg.io/app@" + digestA, "localhost:5000/app:v1@" + digestA,
		"reg.io/app:v1", "reg.io/app:v1@sha256:short", "@" + digestA, digestA, "a@" + digestA + "@" + digestB, "",
	} {
		f.Add(image)
	}
	f.Fuzz(func(t *testing.T, image string) {
		d := DigestOfImage(image)
		if d == "" {
			if i := strings.LastIndexByte(image, '@'); i >= 0 && IsDigest(image[i+1:]) {
				t.Fatalf("DigestOfImage(%q) found none, but it ends with a digest", image)
			}
			return
		}
		if !IsDigest(d) || !strings.HasSuffix(image, "@"+d) {
			t.Fatalf("DigestOfImage(%q) = %q, not the sha256 digest at its end", image, d)
		}
	})
}
