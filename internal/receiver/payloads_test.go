package receiver

import (
	"encoding/base64"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-containerregistry/pkg/name"
)

// payloadCase is one body for one endpoint and what its parser says of it.
type payloadCase struct {
	name    string
	file    string // under testdata/<endpoint>/; body is used when empty
	body    string
	event   string // the X-GitHub-Event header
	want    []Push
	wantErr string // a part of the error; empty when none is wanted
}

func runPayloadCases(t *testing.T, endpoint string, cases []payloadCase) {
	t.Helper()
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			body := []byte(tc.body)
			if tc.file != "" {
				var err error
				if body, err = os.ReadFile(filepath.Join("testdata", endpoint, tc.file)); err != nil {
					t.Fatal(err)
				}
			}
			h := http.Header{}
			if tc.event != "" {
				h.Set("X-GitHub-Event", tc.event)
			}
			got, err := parsers[endpoint](body, h)
			checkParsed(t, endpoint, got, err)
			switch {
			case tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)):
				t.Fatalf("error %v, want one with %q", err, tc.wantErr)
			case tc.wantErr == "" && err != nil:
				t.Fatalf("unexpected error: %v", err)
			case !slices.Equal(got, tc.want):
				t.Errorf("pushes\n got %v\nwant %v", got, tc.want)
			}
		})
	}
}

// checkParsed holds for every body: an error is one short line that names
// the body; pushes are distinct, at most MaxPushes, in canonical form.
func checkParsed(t *testing.T, endpoint string, pushes []Push, err error) {
	t.Helper()
	if err != nil {
		msg := err.Error()
		if pushes != nil || strings.ContainsAny(msg, "\r\n") || len(msg) > 2000 || !strings.Contains(msg, ": ") {
			t.Fatalf("%s: pushes %v with error %q: want none, and one short line", endpoint, pushes, msg)
		}
		return
	}
	if len(pushes) > MaxPushes {
		t.Fatalf("%s: %d pushes, over MaxPushes", endpoint, len(pushes))
	}
	seen := map[Push]bool{}
	for _, p := range pushes {
		if seen[p] {
			t.Fatalf("%s: %v twice", endpoint, p)
		}
		seen[p] = true
		if canonical, err := repository(p.Repository, true); err != nil || canonical != p.Repository {
			t.Fatalf("%s: repository %q is not canonical (%q, %v)", endpoint, p.Repository, canonical, err)
		}
		if p.Tag != "" {
			if _, err := name.NewTag(p.Repository+":"+p.Tag, name.StrictValidation); err != nil {
				t.Fatalf("%s: %v: %v", endpoint, p, err)
			}
		}
	}
}

func pushOf(repo, tag string) Push { return Push{Repository: repo, Tag: tag} }

// distEventJSON is one distribution event pushed to registry.example.com.
func distEventJSON(action, mediaType, repo, tag string) string {
	return fmt.Sprintf(`{"action": %q, "target": {"mediaType": %q, "repository": %q, "tag": %q}, "request": {"host": "registry.example.com"}}`,
		action, mediaType, repo, tag)
}

func distEnvelopeOf(events ...string) string {
	return `{"events": [` + strings.Join(events, ", ") + `]}`
}

const ociManifest = "application/vnd.oci.image.manifest.v1+json"

func TestDistributionPayloads(t *testing.T) {
	runPayloadCases(t, Distribution, []payloadCase{
		{name: "push of a tagged index", file: "push.json", want: []Push{pushOf("registry.example.com:5000/team/app", "v1.4.2")}},
		{name: "blob push, pull and a push by digest are skipped", file: "mixed.json", want: []Push{pushOf("registry.example.com/library/test", "2.0.1")}},
		{name: "pull", file: "pull.json"},
		{name: "delete", file: "delete.json"},
		{name: "malformed", file: "malformed.json", wantErr: "distribution envelope: not JSON"},
		{name: "push missing its repository", file: "missing-repository.json", wantErr: "distribution envelope: events[0]: target.repository is empty"},
		{name: "another registry's body", body: `{"type": "PUSH_ARTIFACT"}`, wantErr: "events is missing"},
		{name: "an array", body: `[]`, wantErr: "want a JSON object, got array"},
		{name: "events of the wrong type", body: `{"events": "push"}`, wantErr: "events: want array, got string"},
		{name: "no events", body: `{"events": []}`},
		{name: "mount", body: distEnvelopeOf(distEventJSON("mount", ociManifest, "team/app", "v1"))},
		{name: "repeated pushes are named once, in order", body: distEnvelopeOf(
			distEventJSON("push", ociManifest, "team/app", "v2"),
			distEventJSON("push", "", "team/app", "v1"),
			distEventJSON("push", ociManifest+"; charset=utf-8", "team/app", "v2")),
			want: []Push{pushOf("registry.example.com/team/app", "v2"), pushOf("registry.example.com/team/app", "v1")}},
		{name: "host from the target's URL", body: `{"events": [{"action": "push", "target": {"repository": "team/app", "tag": "v1", "url": "https://Mirror.Example.com:5000/v2/team/app/manifests/v1"}}]}`,
			want: []Push{pushOf("mirror.example.com:5000/team/app", "v1")}},
		{name: "no host", body: `{"events": [{"action": "push", "target": {"repository": "team/app", "tag": "v1"}}]}`, wantErr: "events[0]: request.host is empty"},
		{name: "invalid tag", body: distEnvelopeOf(distEventJSON("push", ociManifest, "team/app", "v1!")), wantErr: `events[0]: tag "v1!" is not valid`},
		{name: "invalid repository", body: distEnvelopeOf(distEventJSON("push", ociManifest, "Team/App", "v1")), wantErr: `events[0]: repository "registry.example.com/Team/App" is not valid`},
	})
}

func TestHarborPayloads(t *testing.T) {
	runPayloadCases(t, Harbor, []payloadCase{
		{name: "push artifact", file: "push.json", want: []Push{pushOf("harbor.example.com/library/nginx", "1.27.3")}},
		{name: "push artifact as a CloudEvent", file: "cloudevents-push.json", want: []Push{pushOf("harbor.example.com:8443/platform/api", "2026.03.02")}},
		{name: "push by digest", file: "cloudevents-digest-push.json"},
		{name: "pull artifact", file: "pull.json"},
		{name: "malformed", file: "malformed.json", wantErr: "harbor payload: not JSON"},
		{name: "push missing its resource_url", file: "missing-resource-url.json", wantErr: "harbor payload: event_data.resources[0].resource_url is empty"},
		{name: "no type", body: `{"event_data": {}}`, wantErr: "type is missing"},
		{name: "push without resources", body: `{"type": "PUSH_ARTIFACT", "event_data": {"resources": []}}`, wantErr: "event_data.resources is empty"},
		{name: "tag only in the resource", body: `{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"tag": "v1", "resource_url": "harbor.example.com/team/app"}]}}`,
			want: []Push{pushOf("harbor.example.com/team/app", "v1")}},
		{name: "resource_url without host", body: `{"type": "PUSH_ARTIFACT", "event_data": {"resources": [{"resource_url": "team/app:v1"}]}}`,
			wantErr: `event_data.resources[0]: repository "team/app" names no registry host`},
	})
}

func TestDockerHubPayloads(t *testing.T) {
	runPayloadCases(t, DockerHub, []payloadCase{
		{name: "push", file: "push.json", want: []Push{pushOf("docker.io/acmecorp/billing-api", "v3.8.0")}},
		{name: "official image", file: "official.json", want: []Push{pushOf("docker.io/library/nginx", "1.27-alpine")}},
		{name: "official image by its library path", body: `{"push_data": {"tag": "1"}, "repository": {"repo_name": "library/nginx"}}`, want: []Push{pushOf("docker.io/library/nginx", "1")}},
		{name: "namespace and name", body: `{"push_data": {"tag": "1"}, "repository": {"namespace": "acme", "name": "app"}}`, want: []Push{pushOf("docker.io/acme/app", "1")}},
		{name: "no tag", body: `{"repository": {"repo_name": "acme/app"}}`, want: []Push{pushOf("docker.io/acme/app", "")}},
		{name: "malformed", file: "malformed.json", wantErr: "docker hub payload: not JSON"},
		{name: "push missing its repository", file: "missing-repository.json", wantErr: "docker hub payload: repository.repo_name is empty"},
		{name: "no repository object", body: `{"push_data": {"tag": "1"}}`, wantErr: "repository is missing"},
	})
}

func TestQuayPayloads(t *testing.T) {
	runPayloadCases(t, Quay, []payloadCase{
		{name: "repository push", file: "push.json", want: []Push{pushOf("quay.io/acmecorp/api", "v2.3.1"), pushOf("quay.io/acmecorp/api", "latest")}},
		{name: "updated_tags as an object", file: "push-updated-tags-object.json", want: []Push{pushOf("quay.io/acmecorp/worker", "2026.03"), pushOf("quay.io/acmecorp/worker", "stable")}},
		{name: "self-hosted", body: `{"docker_url": "quay.example.com/platform/api", "updated_tags": ["1.0"]}`, want: []Push{pushOf("quay.example.com/platform/api", "1.0")}},
		{name: "repository without docker_url", body: `{"repository": "acmecorp/api", "updated_tags": ["1.0"]}`, want: []Push{pushOf("quay.io/acmecorp/api", "1.0")}},
		{name: "no updated tags", body: `{"docker_url": "quay.io/acmecorp/api"}`, want: []Push{pushOf("quay.io/acmecorp/api", "")}},
		{name: "updated_tags of the wrong type", body: `{"docker_url": "quay.io/acmecorp/api", "updated_tags": "latest"}`, wantErr: "updated_tags: want an array of tags"},
		{name: "malformed", file: "malformed.json", wantErr: "quay payload: not JSON"},
		{name: "push missing its repository", file: "missing-repository.json", wantErr: "quay payload: docker_url and repository are empty"},
	})
}

func TestGHCRPayloads(t *testing.T) {
	runPayloadCases(t, GHCR, []payloadCase{
		{name: "package published", file: "package-published.json", event: "package", want: []Push{pushOf("ghcr.io/octo-org/hello-world", "v2.1.0")}},
		{name: "registry_package updated, named by namespace and name", file: "registry-package-updated.json", event: "registry_package", want: []Push{pushOf("ghcr.io/octo-org/worker", "nightly")}},
		{name: "without the event header", file: "package-published.json", want: []Push{pushOf("ghcr.io/octo-org/hello-world", "v2.1.0")}},
		{name: "ping", file: "ping.json", event: "ping"},
		{name: "ping without the event header", file: "ping.json"},
		{name: "another event", file: "package-published.json", event: "push"},
		{name: "untagged version", file: "untagged.json", event: "package"},
		{name: "npm package", file: "npm-published.json", event: "package"},
		{name: "package deleted", body: `{"action": "deleted", "package": {"package_type": "CONTAINER", "namespace": "o", "name": "n"}}`, event: "package"},
		{name: "malformed", file: "malformed.json", event: "package", wantErr: "github package event: not JSON"},
		{name: "push missing its repository", file: "missing-repository.json", event: "package", wantErr: "github package event: package: package_version.package_url is empty"},
		{name: "no package", body: `{"action": "published"}`, event: "package", wantErr: "package is missing"},
	})
}

func TestACRPayloads(t *testing.T) {
	runPayloadCases(t, ACR, []payloadCase{
		{name: "push", file: "push.json", want: []Push{pushOf("acmecorp.azurecr.io/payments/gateway", "v5.0.2")}},
		{name: "ping", file: "ping.json"},
		{name: "delete", file: "delete.json"},
		{name: "push by digest", body: `{"action": "push", "target": {"repository": "payments/gateway"}, "request": {"host": "acmecorp.azurecr.io"}}`},
		{name: "malformed", file: "malformed.json", wantErr: "acr event: not JSON"},
		{name: "push missing its repository", file: "missing-repository.json", wantErr: "acr event: target.repository is empty"},
		{name: "push missing its host", body: `{"action": "push", "target": {"repository": "payments/gateway", "tag": "v1"}}`, wantErr: "request.host is empty"},
		{name: "no action", body: `{}`, wantErr: "action is missing"},
	})
}

func garPush(notice string) string {
	return `{"message": {"data": "` + base64.StdEncoding.EncodeToString([]byte(notice)) + `", "messageId": "1"}, "subscription": "projects/p/subscriptions/s"}`
}

func TestGARPayloads(t *testing.T) {
	runPayloadCases(t, GAR, []payloadCase{
		{name: "insert of a tag", file: "push.json", want: []Push{pushOf("us-east1-docker.pkg.dev/acme-prod/images/api", "1.1")}},
		{name: "unwrapped message", file: "unwrapped.json", want: []Push{pushOf("europe-west4-docker.pkg.dev/acme-prod/images/worker", "2026.03.02")}},
		{name: "insert by digest", file: "digest-only.json"},
		{name: "delete", file: "delete.json"},
		{name: "data not base64", file: "bad-base64.json", wantErr: "gar pub/sub push: message.data is not base64"},
		{name: "malformed", file: "malformed.json", wantErr: "gar pub/sub push: not JSON"},
		{name: "insert missing its repository", file: "missing-repository.json", wantErr: `gar pub/sub push: message.data: tag "1.1" is not <repository>:<tag>`},
		{name: "no message", body: `{"subscription": "projects/p/subscriptions/s"}`, wantErr: "message is missing"},
		{name: "data not JSON", body: garPush("INSERT gcr.io/p/app:1"), wantErr: "message.data: not JSON"},
		{name: "data without action", body: garPush(`{"tag": "gcr.io/p/app:1"}`), wantErr: "message.data: action is missing"},
		{name: "gcr.io", body: garPush(`{"action": "INSERT", "tag": "gcr.io/acme-prod/app:1"}`), want: []Push{pushOf("gcr.io/acme-prod/app", "1")}},
	})
}

func TestGenericPayloads(t *testing.T) {
	runPayloadCases(t, Generic, []payloadCase{
		{name: "image", file: "image.json", want: []Push{pushOf("registry.example.com/team/app", "v1")}},
		{name: "images", file: "images.json", want: []Push{
			pushOf("registry.example.com/team/app", "v1"), pushOf("docker.io/library/nginx", "1.27"), pushOf("ghcr.io/octo-org/hello-world", "latest")}},
		{name: "repository and tag", file: "repository.json", want: []Push{pushOf("registry.example.com:5000/team/app", "v2")}},
		{name: "any tag of a repository", file: "repository-any-tag.json", want: []Push{pushOf("registry.example.com/team/app", "")}},
		{name: "nothing named", file: "empty.json", wantErr: "generic body: names no image"},
		{name: "tag missing its repository", file: "missing-repository.json", wantErr: "generic body: tag without repository"},
		{name: "malformed", file: "malformed.json", wantErr: "generic body: not JSON"},
		{name: "image of the wrong type", body: `{"image": 42}`, wantErr: "image: want string, got number"},
		{name: "invalid digest", body: `{"image": "registry.example.com/team/app:v1@sha256:abc"}`, wantErr: `image: digest "sha256:abc" is not valid`},
		{name: "empty tag", body: `{"image": "registry.example.com/team/app:"}`, wantErr: "has an empty tag or digest"},
		{name: "empty digest", body: `{"image": "registry.example.com/team/app:v1@"}`, wantErr: "has an empty tag or digest"},
		{name: "empty image", body: `{"images": ["registry.example.com/team/app:v1", " "]}`, wantErr: "images[1]: image reference is empty"},
		{name: "invalid repository", body: `{"image": "registry.example.com/Team/App:v1"}`, wantErr: "is not valid"},
		{name: "line break", body: `{"image": "registry.example.com/team/app\n:v1"}`, wantErr: `app\n`},
	})
}

func TestEveryEndpointHasAParser(t *testing.T) {
	endpoints := []string{Distribution, Harbor, DockerHub, Quay, GHCR, ACR, GAR, Generic}
	names := make([]string, 0, len(parsers))
	for e := range parsers {
		names = append(names, e)
	}
	sort.Strings(endpoints)
	sort.Strings(names)
	if !slices.Equal(endpoints, names) {
		t.Errorf("parsers for %v, want %v", names, endpoints)
	}
}

// manyPushes is a body naming n distinct tags, or n times one tag when same.
var manyPushes = map[string]func(n int, same bool) string{
	Distribution: func(n int, same bool) string {
		events := make([]string, n)
		for i := range events {
			events[i] = distEventJSON("push", ociManifest, "team/app", tagN(i, same))
		}
		return distEnvelopeOf(events...)
	},
	Generic: func(n int, same bool) string {
		images := make([]string, n)
		for i := range images {
			images[i] = fmt.Sprintf("%q", "registry.example.com/team/app:"+tagN(i, same))
		}
		return `{"images": [` + strings.Join(images, ",") + `]}`
	},
	Quay: func(n int, same bool) string {
		tags := make([]string, n)
		for i := range tags {
			tags[i] = fmt.Sprintf("%q", tagN(i, same))
		}
		return `{"docker_url": "quay.io/acme/app", "updated_tags": [` + strings.Join(tags, ",") + `]}`
	},
}

func tagN(i int, same bool) string {
	if same {
		return "v"
	}
	return fmt.Sprintf("v%d", i)
}

func TestMaxPushes(t *testing.T) {
	for endpoint, body := range manyPushes {
		for _, tc := range []struct {
			name string
			n    int
			same bool
			want int
		}{
			{name: "MaxPushes", n: MaxPushes, want: MaxPushes},
			{name: "MaxPushes+1", n: MaxPushes + 1, want: -1},
			{name: "MaxPushes+1 of one tag", n: MaxPushes + 1, same: true, want: 1},
		} {
			t.Run(endpoint+"/"+tc.name, func(t *testing.T) {
				got, err := parsers[endpoint]([]byte(body(tc.n, tc.same)), http.Header{})
				switch {
				case tc.want < 0 && (err == nil || !strings.Contains(err.Error(), "more than 256 pushes")):
					t.Fatalf("%d pushes, error %v: want an error", len(got), err)
				case tc.want >= 0 && (err != nil || len(got) != tc.want):
					t.Fatalf("%d pushes, error %v: want %d", len(got), err, tc.want)
				}
			})
		}
	}
}

// FuzzParsers runs every parser on arbitrary bytes: none panics, and each
// answers pushes or an error as checkParsed says.
func FuzzParsers(f *testing.F) {
	files, err := filepath.Glob(filepath.Join("testdata", "*", "*.json"))
	if err != nil || len(files) == 0 {
		f.Fatalf("no fixtures: %v", err)
	}
	for _, file := range files {
		body, err := os.ReadFile(file)
		if err != nil {
			f.Fatal(err)
		}
		f.Add("", body)
		if filepath.Base(filepath.Dir(file)) == GHCR {
			f.Add("package", body)
			f.Add("ping", body)
		}
	}
	f.Fuzz(func(t *testing.T, event string, body []byte) {
		h := http.Header{}
		h.Set("X-GitHub-Event", event)
		for endpoint, parse := range parsers {
			pushes, err := parse(body, h)
			checkParsed(t, endpoint, pushes, err)
		}
	})
}
