package registry

import (
	"context"
	"testing"
	"time"
)

func TestHintMakesEveryCredentialsAnswerUnfreshOnce(t *testing.T) {
	f := newFixture(t)
	first := f.reg.push("team/app:v1")
	image := f.reg.image("team/app:v1")
	resolve := func(kc staticKeychain, wantDigest string) {
		t.Helper()
		req := Request{Image: image, TTL: time.Hour}
		if kc.user != "" {
			req.Keychain = kc
		}
		res, err := f.resolver.Resolve(context.Background(), req)
		if err != nil {
			t.Fatal(err)
		}
		if res.Digest != wantDigest {
			t.Fatalf("digest = %s, want %s", res.Digest, wantDigest)
		}
	}
	resolve(staticKeychain{}, first)
	resolve(staticKeychain{"alice", "a"}, first)
	second := f.reg.push("team/app:v1") // and the counts start again
	f.clock.Step(time.Second)
	resolve(staticKeychain{}, first) // within the TTL: the cache answers
	if got := f.reg.count("HEAD manifests"); got != 0 {
		t.Fatalf("HEADs within the TTL = %d, want 0", got)
	}

	ref, err := TagRefOf(image)
	if err != nil {
		t.Fatal(err)
	}
	if !f.resolver.Knows(ref) || !f.resolver.Knows(TagRef{Repository: ref.Repository}) {
		t.Fatalf("the resolver does not know %s, which it resolved", ref)
	}
	for range 1000 {
		f.resolver.Hint(ref)
	}
	resolve(staticKeychain{}, second)
	resolve(staticKeychain{}, second)
	resolve(staticKeychain{"alice", "a"}, second)
	if got := f.reg.count("HEAD manifests"); got != 2 {
		t.Fatalf("HEADs after 1000 hints and three resolutions = %d, want 2: one per credential, then the cache", got)
	}
	if got := f.reg.count("GET manifests"); got != 0 {
		t.Errorf("GET manifests = %d, want 0: a hint costs a HEAD", got)
	}
}

func TestRepositoryHintCoversEveryTagAndOtherTagsAreLeftAlone(t *testing.T) {
	f := newFixture(t)
	f.reg.push("team/app:v1")
	f.reg.push("team/app:v2")
	f.reg.push("team/other:v1")
	for _, img := range []string{"team/app:v1", "team/app:v2", "team/other:v1"} {
		f.mustResolve(t, f.reg.image(img), time.Hour)
	}
	f.reg.resetCounts()
	f.clock.Step(time.Second)
	ref, err := ParseTagRef(f.reg.host+"/team/app", "")
	if err != nil {
		t.Fatal(err)
	}
	f.resolver.Hint(ref)
	for _, img := range []string{"team/app:v1", "team/app:v2", "team/other:v1"} {
		f.mustResolve(t, f.reg.image(img), time.Hour)
	}
	if got := f.reg.count("HEAD manifests"); got != 2 {
		t.Fatalf("HEADs = %d, want 2: the hinted repository's two tags again, the other repository from cache", got)
	}
	unknown, _ := ParseTagRef(f.reg.host+"/team/nobody", "v1")
	if f.resolver.Knows(unknown) {
		t.Errorf("the resolver claims to know %s, which nobody asked about", unknown)
	}
}

func TestTagRefsNameOneTagOneWay(t *testing.T) {
	tests := []struct {
		name       string
		image      string
		repository string
		tag        string
	}{
		{"Docker Hub short name", "nginx", "docker.io/library/nginx", "latest"},
		{"Docker Hub with digest", "docker.io/library/nginx:1.27@sha256:0000000000000000000000000000000000000000000000000000000000000000", "index.docker.io/library/nginx", "1.27"},
		{"registry with port", "registry.example.com:5000/team/app:v1", "registry.example.com:5000/team/app", "v1"},
		{"host names are case-blind, tags are not", "Registry.Example.com/team/app:V1", "registry.example.COM/team/app", "V1"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fromImage, err := TagRefOf(tt.image)
			if err != nil {
				t.Fatal(err)
			}
			fromEvent, err := ParseTagRef(tt.repository, tt.tag)
			if err != nil {
				t.Fatal(err)
			}
			if fromImage != fromEvent {
				t.Errorf("image %q is %v, event %q:%q is %v; want one", tt.image, fromImage, tt.repository, tt.tag, fromEvent)
			}
		})
	}
	if _, err := ParseTagRef("Not A Repo", "v1"); err == nil {
		t.Error("an invalid repository was accepted")
	}
	if _, err := ParseTagRef("registry.example.com/team/app", "bad tag!"); err == nil {
		t.Error("an invalid tag was accepted")
	}
}
