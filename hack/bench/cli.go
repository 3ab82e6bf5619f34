package main

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"

	"github.com/imagepin/imagepin/internal/testenv"
)

const secCLI = "6 CLI"

// cliRuns is how many times `imagepin pin` runs; the median wall time is
// reported.
const cliRuns = 3

// cli times `imagepin pin -f` on documents naming the benchmark's tags and
// counts the registry requests each run sends. No manager runs meanwhile,
// so the proxy sees only the CLI.
func (b *bench) cli(ctx context.Context) error {
	dir := filepath.Join(b.dir, "cli")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "config.json"), testenv.DockerConfigJSON(b.proxy.Host, b.reg.User, b.reg.Password), 0o600); err != nil {
		return err
	}
	var in strings.Builder
	for i := range b.o.cliDocuments {
		fmt.Fprintf(&in, "---\napiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: app-%d # service %d\nspec:\n  template:\n    spec:\n      containers:\n      - name: app\n        image: %s\n",
			i, i, b.image(b.tags[i%len(b.tags)]))
	}
	file := filepath.Join(dir, "deployments.yaml")
	if err := os.WriteFile(file, []byte(in.String()), 0o600); err != nil {
		return err
	}

	var walls []time.Duration
	var counts []regCounts
	for run := range cliRuns {
		var stdout, stderr bytes.Buffer
		cmd := exec.CommandContext(ctx, b.bin, "pin", "-f", file, "--registry-ca-file", b.proxy.CAFile)
		// Credentials come from DOCKER_CONFIG only; HOME points away from
		// the user's own docker config.
		cmd.Env = append(os.Environ(), "DOCKER_CONFIG="+dir, "HOME="+dir)
		cmd.Stdout, cmd.Stderr = &stdout, &stderr
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		start := time.Now()
		err := cmd.Run()
		end := time.Now()
		if err != nil {
			return fmt.Errorf("imagepin pin (run %d): %w\n%s", run+1, err, stderr.String())
		}
		if n := strings.Count(stdout.String(), "@sha256:"); n != b.o.cliDocuments {
			return fmt.Errorf("imagepin pin pinned %d images, want %d", n, b.o.cliDocuments)
		}
		walls = append(walls, end.Sub(start))
		counts = append(counts, count(b.proxy.between(start, end.Add(time.Millisecond))))
		logf("cli: run %d: %s; %s", run+1, end.Sub(start).Round(time.Millisecond), counts[run])
	}
	runs := durations(walls)
	sort.Slice(walls, func(i, j int) bool { return walls[i] < walls[j] })
	wall := walls[len(walls)/2]
	c := counts[0]
	for _, x := range counts[1:] {
		if x.Total > c.Total {
			c = x
		}
	}
	tags := float64(len(b.tags))
	const qps, burst = 50, 50 // imagepin pin's defaults
	b.rep.limit(secCLI, fmt.Sprintf("wall time of imagepin pin on %d documents naming %d tags (median of %d)", b.o.cliDocuments, len(b.tags), cliRuns),
		wall.Seconds(), "s", budgetFloor(c.Total, qps, burst),
		"runs: "+runs)
	b.rep.goal(secCLI, "manifest HEADs per distinct tag", float64(c.ManifestHEADs)/tags, "/tag", "1.0", c.ManifestHEADs == len(b.tags), "")
	b.rep.goal(secCLI, "manifest GETs per distinct tag", float64(c.ManifestGETs)/tags, "/tag", "0", c.ManifestGETs == 0, "")
	b.rep.goal(secCLI, "registry requests per distinct tag, all kinds", float64(c.Total)/tags, "/tag", "1.0", c.Total <= len(b.tags),
		fmt.Sprintf("%d pings, %d tokens", c.Pings, c.Tokens))
	b.rep.Methods["cli"] = fmt.Sprintf("the built binary, `imagepin pin -f <file> --registry-ca-file <proxy CA>`, DOCKER_CONFIG holding the credentials, no manager running; wall time from exec to exit; requests counted at the proxy during the run (the run with most: %s)", c)
	return nil
}

func durations(ds []time.Duration) string {
	s := make([]string, len(ds))
	for i, d := range ds {
		s[i] = fmt.Sprintf("%.2f s", d.Seconds())
	}
	return strings.Join(s, ", ")
}
