/*
Copyright 2026 The imagepin Authors.

Licensed under the Apache License, Version 2.0 (the "License");
you may not use this file except in compliance with the License.
You may obtain a copy of the License at

    http://www.apache.org/licenses/LICENSE-2.0

Unless required by applicable law or agreed to in writing, software
distributed under the License is distributed on an "AS IS" BASIS,
WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
See the License for the specific language governing permissions and
limitations under the License.
*/

package driftcmd

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"unicode"

	"sigs.k8s.io/yaml"

	imagesv1alpha1 "github.com/imagepin/imagepin/api/v1alpha1"
)

// write prints the rows in the format of -o.
func write(w io.Writer, rows []row, o options) error {
	switch o.output {
	case outputJSON, outputYAML:
		return writeList(w, rows, o.output)
	default:
		return writeTable(w, rows, o.allNamespaces, o.output == outputWide)
	}
}

// writeTable prints the rows as kubectl prints a table: upper-case
// headers, columns aligned with three spaces between them, nothing else.
func writeTable(w io.Writer, rows []row, allNamespaces, wide bool) error {
	if len(rows) == 0 {
		return nil
	}
	tw := tabwriter.NewWriter(w, 6, 4, 3, ' ', 0)
	header := []string{"WORKLOAD", "CONTAINER", "IMAGE", "TAG NOW", "RUNNING", "DRIFT", "PIN"}
	if allNamespaces {
		header = append([]string{"NAMESPACE"}, header...)
	}
	if wide {
		header = append(header, "PINNED", "NODES")
	}
	_, _ = fmt.Fprintln(tw, strings.Join(header, "\t"))
	for _, r := range rows {
		cells := []string{
			workloadCell(r.w),
			containerCell(r.w),
			cell(r.image),
			tagCell(r, wide),
			runningCell(r.w.Running, wide),
			driftCell(r.w.Drift),
			cell(r.source.Kind + "/" + r.source.Name),
		}
		if allNamespaces {
			cells = append([]string{cell(r.namespace)}, cells...)
		}
		if wide {
			cells = append(cells, digestCell(r.w.PinnedDigest, true), nodesCell(r.w.Running))
		}
		_, _ = fmt.Fprintln(tw, strings.Join(cells, "\t"))
	}
	return tw.Flush()
}

// workloadCell is Kind/name, with [template] for a kind with several pod
// templates.
func workloadCell(w imagesv1alpha1.WorkloadImage) string {
	s := string(w.Kind) + "/" + w.Name
	if w.Template != "" {
		s += "[" + w.Template + "]"
	}
	return cell(s)
}

// containerCell is the container's name, init:name for an init container,
// volume:name for an image volume.
func containerCell(w imagesv1alpha1.WorkloadImage) string {
	switch {
	case w.Volume:
		return cell("volume:" + w.Container)
	case w.Init:
		return cell("init:" + w.Container)
	default:
		return cell(w.Container)
	}
}

// tagCell is the digest the tag resolves to now; <error> when it could not
// be resolved and no earlier digest is kept.
func tagCell(r row, wide bool) string {
	if r.tagDigest == "" && r.err != "" {
		return "<error>"
	}
	return digestCell(r.tagDigest, wide)
}

// digestCell is a digest, sha256: and its first 12 hex characters unless
// full; - for none.
func digestCell(d imagesv1alpha1.Digest, full bool) string {
	if d == "" {
		return "-"
	}
	if full {
		return cell(string(d))
	}
	return cell(shortDigest(d))
}

func shortDigest(d imagesv1alpha1.Digest) string {
	algo, hex, ok := strings.Cut(string(d), ":")
	if !ok || len(hex) <= 12 {
		return string(d)
	}
	return algo + ":" + hex[:12]
}

// runningCell is each digest the pods run with their count, digest×pods,
// comma-separated; - for none.
func runningCell(running []imagesv1alpha1.RunningDigest, full bool) string {
	if len(running) == 0 {
		return "-"
	}
	parts := make([]string, len(running))
	for i, rd := range running {
		parts[i] = digestCell(rd.Digest, full) + "×" + strconv.Itoa(int(rd.Pods))
	}
	return strings.Join(parts, ",")
}

// nodesCell says per running digest where its pods run: digest×pods on
// node-a,node-b, separated by "; ". The digest is the short one: the
// RUNNING column beside it has it in full.
func nodesCell(running []imagesv1alpha1.RunningDigest) string {
	if len(running) == 0 {
		return "-"
	}
	parts := make([]string, len(running))
	for i, rd := range running {
		parts[i] = digestCell(rd.Digest, false) + "×" + strconv.Itoa(int(rd.Pods))
		if len(rd.Nodes) > 0 {
			parts[i] += " on " + cell(strings.Join(rd.Nodes, ","))
		}
	}
	return strings.Join(parts, "; ")
}

func driftCell(drift []imagesv1alpha1.DriftReason) string {
	if len(drift) == 0 {
		return "-"
	}
	names := make([]string, len(drift))
	for i, r := range drift {
		names[i] = string(r)
	}
	return cell(strings.Join(names, ","))
}

// cell returns s as it is, or quoted when it holds a control character or
// a space, so that a value read from a status cannot break the table's
// columns or lines.
func cell(s string) string {
	if strings.ContainsFunc(s, func(r rune) bool { return !unicode.IsGraphic(r) || unicode.IsSpace(r) }) {
		return strconv.Quote(s)
	}
	return s
}

// list is what -o json and -o yaml print.
type list struct {
	Items []item `json:"items"`
}

// item is one row, digests in full.
type item struct {
	Namespace    string                       `json:"namespace"`
	Kind         string                       `json:"kind"`
	Name         string                       `json:"name"`
	Template     string                       `json:"template,omitempty"`
	Container    string                       `json:"container"`
	Init         bool                         `json:"init,omitempty"`
	Volume       bool                         `json:"volume,omitempty"`
	Image        string                       `json:"image"`
	TagDigest    imagesv1alpha1.Digest        `json:"tagDigest"`
	PinnedDigest imagesv1alpha1.Digest        `json:"pinnedDigest,omitempty"`
	Running      []running                    `json:"running"`
	Drift        []imagesv1alpha1.DriftReason `json:"drift"`
	Source       source                       `json:"source"`
	Error        string                       `json:"error,omitempty"`
}

type running struct {
	Digest imagesv1alpha1.Digest `json:"digest"`
	Pods   int32                 `json:"pods"`
	Nodes  []string              `json:"nodes"`
}

func writeList(w io.Writer, rows []row, format string) error {
	l := list{Items: make([]item, 0, len(rows))}
	for _, r := range rows {
		it := item{
			Namespace:    r.namespace,
			Kind:         string(r.w.Kind),
			Name:         r.w.Name,
			Template:     r.w.Template,
			Container:    r.w.Container,
			Init:         r.w.Init,
			Volume:       r.w.Volume,
			Image:        r.image,
			TagDigest:    r.tagDigest,
			PinnedDigest: r.w.PinnedDigest,
			Running:      make([]running, len(r.w.Running)),
			Drift:        append([]imagesv1alpha1.DriftReason{}, r.w.Drift...),
			Source:       r.source,
			Error:        r.err,
		}
		for i, rd := range r.w.Running {
			it.Running[i] = running{Digest: rd.Digest, Pods: rd.Pods, Nodes: append([]string{}, rd.Nodes...)}
		}
		l.Items = append(l.Items, it)
	}
	var out []byte
	var err error
	if format == outputYAML {
		out, err = yaml.Marshal(l)
	} else {
		out, err = json.MarshalIndent(l, "", "    ")
		out = append(out, '\n')
	}
	if err != nil {
		return err
	}
	_, err = w.Write(out)
	return err
}
