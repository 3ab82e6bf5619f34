package receiver

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"slices"
	"strings"
)

// The webhook payloads of registry products and services: Harbor, Docker
// Hub, Quay, GitHub's container registry, Azure Container Registry and
// Google Artifact Registry.

// harborPayload is what is read of a Harbor webhook, in either format.
type harborPayload struct {
	Type      string      `json:"type"`
	EventData *harborData `json:"event_data"`
	Data      *harborData `json:"data"`
}

// harborData is a Harbor event's data: the artifacts it concerns.
type harborData struct {
	Resources []struct {
		Tag         string `json:"tag"`
		ResourceURL string `json:"resource_url"`
	} `json:"resources"`
}

// parseHarbor reads a Harbor webhook payload, in its Default or CloudEvents format.
func parseHarbor(body []byte, _ http.Header) ([]Push, error) {
	var p harborPayload
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	data, field := p.EventData, "event_data"
	switch p.Type {
	case "PUSH_ARTIFACT":
	case "harbor.artifact.pushed": // the CloudEvents format
		data, field = p.Data, "data"
	case "":
		return nil, errors.New(`type is missing: want {"type": "PUSH_ARTIFACT", "event_data": {...}}`)
	default:
		return nil, nil // a pull, a deletion, a scan, ...
	}
	if data == nil || len(data.Resources) == 0 {
		return nil, fmt.Errorf("%s.resources is empty", field)
	}
	var c collector
	for i, r := range data.Resources {
		if r.ResourceURL == "" {
			return nil, fmt.Errorf("%s.resources[%d].resource_url is empty", field, i)
		}
		repo, tag, digest := splitRef(trimScheme(r.ResourceURL))
		if tag == "" && digest == "" && !strings.Contains(r.Tag, ":") {
			tag = r.Tag // a digest in tag is the push by digest below
		}
		if tag == "" {
			continue // a push by digest moves no tag
		}
		if err := c.add(repo, tag); err != nil {
			return nil, fmt.Errorf("%s.resources[%d]: %w", field, i, err)
		}
	}
	return c.pushes, nil
}

// dockerHubPayload is what is read of a Docker Hub webhook.
type dockerHubPayload struct {
	PushData struct {
		Tag string `json:"tag"`
	} `json:"push_data"`
	Repository *struct {
		RepoName  string `json:"repo_name"`
		Namespace string `json:"namespace"`
		Name      string `json:"name"`
	} `json:"repository"`
}

// parseDockerHub reads a Docker Hub repository webhook; every one is a push.
func parseDockerHub(body []byte, _ http.Header) ([]Push, error) {
	var p dockerHubPayload
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	if p.Repository == nil {
		return nil, errors.New(`repository is missing: want {"push_data": {...}, "repository": {...}}`)
	}
	path := p.Repository.RepoName
	if path == "" && p.Repository.Name != "" {
		path = p.Repository.Name
		if p.Repository.Namespace != "" {
			path = p.Repository.Namespace + "/" + path
		}
	}
	if path == "" {
		return nil, errors.New("repository.repo_name is empty")
	}
	if !strings.Contains(path, "/") {
		path = "library/" + path // an official image
	}
	var c collector
	if err := c.add("docker.io/"+path, p.PushData.Tag); err != nil {
		return nil, err
	}
	return c.pushes, nil
}

// quayPayload is what is read of a Quay repository push notification.
type quayPayload struct {
	Repository  string          `json:"repository"`
	DockerURL   string          `json:"docker_url"`
	UpdatedTags json.RawMessage `json:"updated_tags"`
}

// parseQuay reads a Quay repository push notification; every one is a push.
func parseQuay(body []byte, _ http.Header) ([]Push, error) {
	var p quayPayload
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	repo := p.DockerURL
	if repo == "" && p.Repository != "" {
		repo = "quay.io/" + p.Repository
	}
	if repo == "" {
		return nil, errors.New("docker_url and repository are empty")
	}
	tags, err := quayTags(p.UpdatedTags)
	if err != nil {
		return nil, err
	}
	if len(tags) == 0 {
		tags = []string{""} // any tag of the repository
	}
	var c collector
	for _, tag := range tags {
		if err := c.add(repo, tag); err != nil {
			return nil, err
		}
	}
	return c.pushes, nil
}

// quayTags reads updated_tags: a list of tags, or in older notifications
// an object whose keys are the tags.
func quayTags(raw json.RawMessage) ([]string, error) {
	if len(raw) == 0 || string(raw) == "null" {
		return nil, nil
	}
	var list []string
	if err := json.Unmarshal(raw, &list); err == nil {
		return list, nil
	}
	var byTag map[string]json.RawMessage
	if err := json.Unmarshal(raw, &byTag); err != nil {
		return nil, errors.New("updated_tags: want an array of tags")
	}
	tags := make([]string, 0, len(byTag))
	for tag := range byTag {
		tags = append(tags, tag)
	}
	slices.Sort(tags)
	return tags, nil
}

// githubEvent is what is read of a GitHub webhook event.
type githubEvent struct {
	Action          string         `json:"action"`
	Zen             *string        `json:"zen"`
	Package         *githubPackage `json:"package"`
	RegistryPackage *githubPackage `json:"registry_package"`
}

// githubPackage is the package of a "package" or "registry_package" event.
type githubPackage struct {
	Name           string `json:"name"`
	Namespace      string `json:"namespace"`
	PackageType    string `json:"package_type"`
	PackageVersion struct {
		PackageURL        string `json:"package_url"`
		ContainerMetadata struct {
			Tag struct {
				Name string `json:"name"`
			} `json:"tag"`
		} `json:"container_metadata"`
	} `json:"package_version"`
}

// parseGHCR reads a GitHub "package" or "registry_package" webhook event.
func parseGHCR(body []byte, h http.Header) ([]Push, error) {
	event := h.Get("X-GitHub-Event")
	switch event {
	case "", "package", "registry_package":
	default:
		return nil, nil // ping, or an event of another kind: nothing was pushed
	}
	var e githubEvent
	if err := decode(body, &e); err != nil {
		return nil, err
	}
	if event == "" && e.Zen != nil {
		return nil, nil // a ping sent without its header
	}
	pkg, field := e.Package, "package"
	if pkg == nil {
		pkg, field = e.RegistryPackage, "registry_package"
	}
	switch {
	case pkg == nil:
		return nil, errors.New(`package is missing: want a "package" or "registry_package" event`)
	case e.Action != "published" && e.Action != "updated":
		return nil, nil // a deletion: no tag moved to anything
	case !strings.EqualFold(pkg.PackageType, "container"):
		return nil, nil // an npm, Maven, RubyGems, ... package
	}
	version := pkg.PackageVersion
	repo, tag := "", version.ContainerMetadata.Tag.Name
	switch {
	case version.PackageURL != "":
		var urlTag string
		repo, urlTag, _ = splitRef(trimScheme(version.PackageURL))
		if tag == "" {
			tag = urlTag
		}
	case pkg.Namespace != "" && pkg.Name != "":
		repo = "ghcr.io/" + pkg.Namespace + "/" + pkg.Name
	default:
		return nil, fmt.Errorf("%s: package_version.package_url is empty, and so is namespace or name", field)
	}
	if tag == "" {
		return nil, nil // an untagged version, such as one platform's image of an index
	}
	var c collector
	if err := c.add(strings.ToLower(repo), tag); err != nil { // the container registry's names are lower case
		return nil, fmt.Errorf("%s: %w", field, err)
	}
	return c.pushes, nil
}

// acrEvent is what is read of an Azure Container Registry webhook event.
type acrEvent struct {
	Action string `json:"action"`
	Target struct {
		Repository string `json:"repository"`
		Tag        string `json:"tag"`
	} `json:"target"`
	Request struct {
		Host string `json:"host"`
	} `json:"request"`
}

// parseACR reads an Azure Container Registry webhook event.
func parseACR(body []byte, _ http.Header) ([]Push, error) {
	var e acrEvent
	if err := decode(body, &e); err != nil {
		return nil, err
	}
	switch {
	case e.Action == "":
		return nil, errors.New(`action is missing: want {"action": "push", "target": {...}, "request": {...}}`)
	case e.Action != "push":
		return nil, nil // ping, delete, chart_push, ...
	case e.Target.Repository == "":
		return nil, errors.New("target.repository is empty")
	case e.Request.Host == "":
		return nil, errors.New("request.host is empty")
	case strings.ContainsAny(e.Request.Host, "/@"):
		return nil, fmt.Errorf("request.host %s is not a host[:port]", quote(e.Request.Host))
	case e.Target.Tag == "":
		return nil, nil // a push by digest moves no tag
	}
	var c collector
	if err := c.add(e.Request.Host+"/"+e.Target.Repository, e.Target.Tag); err != nil {
		return nil, err
	}
	return c.pushes, nil
}

// garNotice is an Artifact Registry notification, the data of a Pub/Sub message.
type garNotice struct {
	Action string `json:"action"`
	Tag    string `json:"tag"`
}

// pubsubPush is the body of a Pub/Sub push subscription's request.
type pubsubPush struct {
	Message *struct {
		Data string `json:"data"`
	} `json:"message"`
	garNotice // a subscription that pushes messages unwrapped sends the data alone
}

// parseGAR reads an Artifact Registry notification pushed by a Pub/Sub subscription.
func parseGAR(body []byte, _ http.Header) ([]Push, error) {
	var p pubsubPush
	if err := decode(body, &p); err != nil {
		return nil, err
	}
	note, where := p.garNotice, ""
	switch {
	case p.Message == nil && p.Action == "":
		return nil, errors.New(`message is missing: want {"message": {"data": "<base64>", ...}, "subscription": "..."}`)
	case p.Message != nil:
		where = "message.data: "
		if p.Message.Data == "" {
			return nil, errors.New("message.data is empty")
		}
		data, err := base64.StdEncoding.DecodeString(p.Message.Data)
		if err != nil {
			return nil, fmt.Errorf("message.data is not base64: %s", oneLine(err.Error()))
		}
		note = garNotice{}
		if err := decode(data, &note); err != nil {
			return nil, fmt.Errorf("message.data: %w", err)
		}
		if note.Action == "" {
			return nil, errors.New("message.data: action is missing")
		}
	}
	if note.Action != "INSERT" || note.Tag == "" {
		return nil, nil // a deletion, or an insert by digest: no tag moved
	}
	repo, tag, digest := splitRef(trimScheme(note.Tag))
	if repo == "" || tag == "" || digest != "" {
		return nil, fmt.Errorf("%stag %s is not <repository>:<tag>", where, quote(note.Tag))
	}
	var c collector
	if err := c.add(repo, tag); err != nil {
		return nil, fmt.Errorf("%s%w", where, err)
	}
	return c.pushes, nil
}
