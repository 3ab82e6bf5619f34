package main

import (
	"crypto/sha256"
	"debug/buildinfo"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// The SPDX 2.3 document (https://spdx.github.io/spdx-spec/v2.3/): only the
// fields this SBOM fills. Licenses are NOASSERTION but the manager's own:
// the binary does not say, and guessing them would be worse than nothing.
type spdxDoc struct {
	SPDXVersion       string             `json:"spdxVersion"`
	DataLicense       string             `json:"dataLicense"`
	SPDXID            string             `json:"SPDXID"`
	Name              string             `json:"name"`
	DocumentNamespace string             `json:"documentNamespace"`
	CreationInfo      spdxCreationInfo   `json:"creationInfo"`
	Packages          []spdxPackage      `json:"packages"`
	Relationships     []spdxRelationship `json:"relationships"`
}

type spdxCreationInfo struct {
	Created  string   `json:"created"`
	Creators []string `json:"creators"`
}

type spdxPackage struct {
	Name                  string            `json:"name"`
	SPDXID                string            `json:"SPDXID"`
	VersionInfo           string            `json:"versionInfo"`
	DownloadLocation      string            `json:"downloadLocation"`
	FilesAnalyzed         bool              `json:"filesAnalyzed"`
	LicenseConcluded      string            `json:"licenseConcluded"`
	LicenseDeclared       string            `json:"licenseDeclared"`
	CopyrightText         string            `json:"copyrightText"`
	PrimaryPackagePurpose string            `json:"primaryPackagePurpose,omitempty"`
	Comment               string            `json:"comment,omitempty"`
	ExternalRefs          []spdxExternalRef `json:"externalRefs,omitempty"`
}

type spdxExternalRef struct {
	ReferenceCategory string `json:"referenceCategory"`
	ReferenceType     string `json:"referenceType"`
	ReferenceLocator  string `json:"referenceLocator"`
}

type spdxRelationship struct {
	Element string `json:"spdxElementId"`
	Type    string `json:"relationshipType"`
	Related string `json:"relatedSpdxElement"`
}

const noAssertion = "NOASSERTION"

// spdxDocument describes the binary at binPath (bin is its content) from
// the build information the Go linker put in it: the main module, the
// standard library of its toolchain, and every module linked in, each with
// its version and package URL. The namespace is derived from the binary's
// hash, so the document is as reproducible as the binary.
func spdxDocument(c config, p v1.Platform, binPath string, bin []byte) ([]byte, error) {
	bi, err := buildinfo.ReadFile(binPath)
	if err != nil {
		return nil, fmt.Errorf("read the build information of %s: %w", binPath, err)
	}
	sum := sha256.Sum256(bin)
	plat := strings.ReplaceAll(p.String(), "/", "-")
	doc := spdxDoc{
		SPDXVersion:       "SPDX-2.3",
		DataLicense:       "CC0-1.0",
		SPDXID:            "SPDXRef-DOCUMENT",
		Name:              "imagepin-" + c.version + "-" + plat,
		DocumentNamespace: fmt.Sprintf("%s/spdx/%s/%s-%s", c.source, c.version, plat, hex.EncodeToString(sum[:])),
		CreationInfo: spdxCreationInfo{
			Created:  c.created.UTC().Format(time.RFC3339),
			Creators: []string{"Tool: imagepin-hack-image", "Organization: The imagepin Authors"},
		},
	}
	ids := spdxIDs{}
	mainID := ids.id(bi.Main.Path)
	doc.Packages = append(doc.Packages, spdxPackage{
		Name:                  bi.Main.Path,
		SPDXID:                mainID,
		VersionInfo:           c.version,
		DownloadLocation:      "git+" + c.source + "@" + c.revision,
		LicenseConcluded:      "Apache-2.0",
		LicenseDeclared:       "Apache-2.0",
		CopyrightText:         noAssertion,
		PrimaryPackagePurpose: "APPLICATION",
		Comment:               "built with " + buildSettings(bi),
		// A purl's version of a module built from source is its commit.
		ExternalRefs: purlRef(bi.Main.Path, c.revision),
	})
	doc.Relationships = append(doc.Relationships, spdxRelationship{"SPDXRef-DOCUMENT", "DESCRIBES", mainID})

	goVersion, _, _ := strings.Cut(bi.GoVersion, " ") // "go1.26.8 X:exp" names experiments after a space
	deps := []spdxPackage{dependency(ids, "stdlib", goVersion, stdlibSemver(goVersion))}
	for _, m := range bi.Deps {
		if m.Replace != nil {
			m = m.Replace
		}
		deps = append(deps, dependency(ids, m.Path, m.Version, m.Version))
	}
	for _, d := range deps {
		doc.Packages = append(doc.Packages, d)
		doc.Relationships = append(doc.Relationships, spdxRelationship{mainID, "DEPENDS_ON", d.SPDXID})
	}
	out, err := json.MarshalIndent(doc, "", "  ")
	if err != nil {
		return nil, fmt.Errorf("SPDX document: %w", err)
	}
	return append(out, '\n'), nil
}

// dependency is a module linked into the binary. The standard library is
// "stdlib", with its Go release as version and, in its package URL, as the
// semantic version Go's vulnerability database files it under.
func dependency(ids spdxIDs, path, version, purlVersion string) spdxPackage {
	return spdxPackage{
		Name:             path,
		SPDXID:           ids.id(path),
		VersionInfo:      version,
		DownloadLocation: noAssertion,
		LicenseConcluded: noAssertion,
		LicenseDeclared:  noAssertion,
		CopyrightText:    noAssertion,
		ExternalRefs:     purlRef(path, purlVersion),
	}
}

// stdlibSemver is a Go release as a semantic version, "go1.26.8" as
// "v1.26.8"; empty for a pre-release, which has none.
func stdlibSemver(goVersion string) string {
	v := strings.TrimPrefix(goVersion, "go")
	if v == "" || strings.Trim(v, "0123456789.") != "" {
		return ""
	}
	if strings.Count(v, ".") == 1 {
		v += ".0" // go1.20 and before named a release's first "go1.20"
	}
	return "v" + v
}

// buildSettings are the toolchain and the flags the binary was built with.
func buildSettings(bi *buildinfo.BuildInfo) string {
	parts := []string{bi.GoVersion}
	for _, s := range bi.Settings {
		parts = append(parts, s.Key+"="+s.Value)
	}
	return strings.Join(parts, " ")
}

// purlRef is the package URL of a Go module. The module path keeps its
// case, as Go's own tools (govulncheck) write it: module paths are case
// sensitive, which the purl spec's lowercasing would lose.
func purlRef(path, version string) []spdxExternalRef {
	segs := strings.Split(path, "/")
	for i, s := range segs {
		segs[i] = purlEscape(s)
	}
	purl := "pkg:golang/" + strings.Join(segs, "/")
	if version != "" {
		purl += "@" + purlEscape(version)
	}
	return []spdxExternalRef{{ReferenceCategory: "PACKAGE-MANAGER", ReferenceType: "purl", ReferenceLocator: purl}}
}

// purlEscape percent-encodes all but the unreserved characters, "+" of
// "+incompatible" versions among them.
func purlEscape(s string) string {
	var b strings.Builder
	for _, c := range []byte(s) {
		if 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' || strings.IndexByte("-._~", c) >= 0 {
			b.WriteByte(c)
		} else {
			fmt.Fprintf(&b, "%%%02X", c)
		}
	}
	return b.String()
}

// spdxIDs hands out SPDX identifiers ([A-Za-z0-9.-]+) named after module
// paths, unique within one document.
type spdxIDs map[string]bool

func (ids spdxIDs) id(path string) string {
	base := "SPDXRef-Package-" + strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '-' {
			return r
		}
		return '-'
	}, path)
	id := base
	for n := 2; ids[id]; n++ {
		id = fmt.Sprintf("%s-%d", base, n)
	}
	ids[id] = true
	return id
}
