package e2e

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// Issue 19 item 1, as it is checked: `imagepin pin` on 1,000 Deployments
// naming 50 tags in 50 repositories, against the distribution registry
// with htpasswd auth and TLS, sends at most 51 requests: a HEAD per tag
// and one ping for the host (basic auth needs no token). The registry's
// access log counts them by the CLI's User-Agent.
func TestPinSendsOneRequestPerTag(t *testing.T) {
	const docs, tags = 1000, 50
	var in strings.Builder
	for i := range tags {
		push(t, fmt.Sprintf("clireq/app%02d:v1", i), fmt.Sprintf("cli %d", i))
	}
	for i := range docs {
		fmt.Fprintf(&in, "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-%d\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: %s/clireq/app%02d:v1\n",
			i, local.Registry.Host, i%tags)
	}
	// Access-log lines only ("GET /v2/ HTTP/2.0"): the registry's own
	// log lines name the User-Agent too.
	before, err := local.Registry.AccessLogLines(`"imagepin pin `, " HTTP/")
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(local.Binary(), "pin", "--registry-ca-file", local.Registry.CAFile)
	cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+local.DockerConfig, "HOME="+t.TempDir())
	cmd.Stdin = strings.NewReader(in.String())
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("imagepin pin: %v\n%s", err, stderr.String())
	}
	if n := strings.Count(stdout.String(), "@sha256:"); n != docs {
		t.Fatalf("%d images pinned, want %d", n, docs)
	}
	// The registry logs a request once it has answered it: wait for the
	// HEADs' lines.
	var sent []string
	var pings, heads, other int
	poll(t, "the CLI's requests in the registry's access log", 10*time.Second, func() error {
		after, err := local.Registry.AccessLogLines(`"imagepin pin `, " HTTP/")
		if err != nil {
			return err
		}
		sent = after[len(before):]
		pings, heads, other = 0, 0, 0
		for _, l := range sent {
			switch {
			case strings.Contains(l, `"GET /v2/ `):
				pings++
			case strings.Contains(l, `"HEAD /v2/clireq/`) && strings.Contains(l, "/manifests/v1 "):
				heads++
			default:
				other++
			}
		}
		if heads < tags {
			return fmt.Errorf("%d HEADs logged", heads)
		}
		return nil
	})
	if len(sent) > tags+1 || heads != tags || other != 0 {
		t.Errorf("imagepin pin sent %d requests (%d pings, %d HEADs, %d others), want at most %d: a HEAD per tag and one ping\n%s",
			len(sent), pings, heads, other, tags+1, strings.Join(sent, "\n"))
	}
}
