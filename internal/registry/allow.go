package registry

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// AllowedRegistriesUsage is the help text of --allowed-registries, for
// every command that builds a resolver.
const AllowedRegistriesUsage = "only these registries are contacted; comma-separated and/or repeatable: " +
	"host (default port only), host:port, *.domain (subdomains of any depth, not the domain) or *.domain:port, case-insensitive; " +
	"docker.io, index.docker.io and registry-1.docker.io each allow Docker Hub, which images without a registry (nginx) name. " +
	"An image of any other registry is reported unresolvable and nothing is sent to it. Default: every registry"

// NotAllowedError says an image names a registry that --allowed-registries
// does not list; nothing was sent to it.
type NotAllowedError struct {
	// Registry is the registry as the image names it ("docker.io" for
	// Docker Hub).
	Registry string
}

func (e *NotAllowedError) Error() string {
	return fmt.Sprintf("registry %s is not in --allowed-registries; not contacted", e.Registry)
}

// dockerHub are the names of Docker Hub: one registry to the allow-list.
var dockerHub = []string{"docker.io", "index.docker.io", "registry-1.docker.io"}

// allowEntry is one --allowed-registries entry.
type allowEntry struct {
	host     string // lowercase; for a wildcard, the domain after "*."
	wildcard bool
	port     string // "" is the default port
}

var hostPattern = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]*[a-z0-9])?)(\.[a-z0-9]([a-z0-9-]*[a-z0-9])?)*$|^\[[0-9a-f:.]+\]$`)

// parseAllowEntry reads "host", "host:port", "*.domain" or "*.domain:port".
func parseAllowEntry(s string) (allowEntry, error) {
	v := strings.ToLower(strings.TrimSpace(s))
	bad := func(why string) (allowEntry, error) {
		return allowEntry{}, fmt.Errorf("--allowed-registries entry %q: %s; want host, host:port, *.domain or *.domain:port", s, why)
	}
	if v == "" {
		return bad("empty")
	}
	if strings.Contains(v, "://") || strings.ContainsAny(v, "/@") {
		return bad("a registry host, not a URL or repository")
	}
	host, port := splitHostPort(v)
	if port != "" {
		n, err := strconv.Atoi(port)
		if err != nil || n < 1 || n > 65535 {
			return bad("bad port")
		}
		port = strconv.Itoa(n)
	}
	host = strings.TrimSuffix(host, ".")
	e := allowEntry{host: host, port: normalPort(port)}
	if rest, ok := strings.CutPrefix(host, "*."); ok {
		e.host, e.wildcard = rest, true
	}
	if !hostPattern.MatchString(e.host) || (e.wildcard && strings.HasPrefix(e.host, "[")) {
		return bad("not a host name")
	}
	return e, nil
}

// splitHostPort splits "host:port", "[v6]:port", "host" or "[v6]".
func splitHostPort(v string) (host, port string) {
	if strings.HasPrefix(v, "[") {
		if i := strings.Index(v, "]"); i >= 0 {
			host, rest := v[:i+1], v[i+1:]
			return host, strings.TrimPrefix(rest, ":")
		}
		return v, ""
	}
	if i := strings.LastIndexByte(v, ':'); i >= 0 {
		return v[:i], v[i+1:]
	}
	return v, ""
}

// normalPort makes the default HTTPS port the same as no port.
func normalPort(p string) string {
	if p == "443" {
		return ""
	}
	return p
}

func (e allowEntry) matches(host, port string) bool {
	if e.port != port {
		return false
	}
	if e.wildcard {
		return strings.HasSuffix(host, "."+e.host)
	}
	return host == e.host
}

// allowList is --allowed-registries compiled; empty allows every registry.
type allowList []allowEntry

func newAllowList(entries []string) (allowList, error) {
	var out allowList
	for _, s := range entries {
		for _, part := range strings.Split(s, ",") {
			if strings.TrimSpace(part) == "" {
				continue
			}
			e, err := parseAllowEntry(part)
			if err != nil {
				return nil, err
			}
			out = append(out, e)
		}
	}
	return out, nil
}

// check returns a *NotAllowedError unless registry (as go-containerregistry
// names it: "index.docker.io" for Docker Hub, "host:port") is allowed.
func (l allowList) check(registry string) error {
	if len(l) == 0 {
		return nil
	}
	host, port := splitHostPort(strings.ToLower(registry))
	host, port = strings.TrimSuffix(host, "."), normalPort(port)
	names := []string{host}
	shown := registry
	if port == "" && isDockerHub(host) {
		names, shown = dockerHub, "docker.io"
	}
	for _, e := range l {
		for _, n := range names {
			if e.matches(n, port) {
				return nil
			}
		}
	}
	return &NotAllowedError{Registry: shown}
}

func isDockerHub(host string) bool { return slices.Contains(dockerHub, host) }

// AllowedRegistriesFlag is the flag.Value of --allowed-registries:
// comma-separated and repeatable, each entry checked when it is set.
type AllowedRegistriesFlag []string

func (f *AllowedRegistriesFlag) String() string {
	if f == nil {
		return ""
	}
	return strings.Join(*f, ",")
}

// Set adds the comma-separated entries of v.
func (f *AllowedRegistriesFlag) Set(v string) error {
	for _, part := range strings.Split(v, ",") {
		if strings.TrimSpace(part) == "" {
			continue
		}
		if _, err := parseAllowEntry(part); err != nil {
			return err
		}
		*f = append(*f, strings.TrimSpace(part))
	}
	return nil
}
