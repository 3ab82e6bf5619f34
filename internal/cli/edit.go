package cli

import (
	"bytes"
	"fmt"
	"io"
	"sort"
	"strings"
	"unicode/utf8"

	"sigs.k8s.io/kustomize/kyaml/yaml"
)

// An edit replaces raw[start:end] with text.
type edit struct {
	start, end int
	text       string
}

// writeEdited writes raw to w with every edit made, without building the
// edited copy; edits must not overlap.
func writeEdited(w io.Writer, raw []byte, edits []edit) error {
	sort.Slice(edits, func(i, j int) bool { return edits[i].start < edits[j].start })
	at := 0
	for _, e := range edits {
		if _, err := w.Write(raw[at:e.start]); err != nil {
			return err
		}
		if _, err := io.WriteString(w, e.text); err != nil {
			return err
		}
		at = e.end
	}
	_, err := w.Write(raw[at:])
	return err
}

// source maps the parser's line and column (1-based; columns count
// characters) to byte offsets of the text it parsed.
type source struct {
	raw []byte
	// marks[k] is the offset of line k*lineStride+1: a sparse table, so
	// that a large input's line index stays small (a full one took 8
	// bytes a line). Line breaks are those of the YAML scanner: CRLF, CR,
	// LF, NEL, LS and PS.
	marks []int
	// lines is how many lines raw has.
	lines int
}

// lineStride is how many lines apart source's marks are: finding an
// offset walks at most this many lines.
const lineStride = 64

func newSource(raw []byte) *source {
	start := 0
	if bytes.HasPrefix(raw, []byte("\xef\xbb\xbf")) {
		start = 3 // the scanner skips a UTF-8 byte order mark
	}
	s := &source{raw: raw, marks: []int{start}, lines: 1}
	for i := start; i < len(raw); {
		n := lineBreak(raw[i:])
		if n == 0 {
			i++
			continue
		}
		i += n
		if s.lines%lineStride == 0 {
			s.marks = append(s.marks, i)
		}
		s.lines++
	}
	return s
}

// lineBreak returns the length of the line break at the start of b, or 0.
func lineBreak(b []byte) int {
	switch {
	case bytes.HasPrefix(b, []byte("\r\n")):
		return 2
	case b[0] == '\n' || b[0] == '\r':
		return 1
	case bytes.HasPrefix(b, []byte("\u0085")):
		return 2
	case bytes.HasPrefix(b, []byte("\u2028")), bytes.HasPrefix(b, []byte("\u2029")):
		return 3
	}
	return 0
}

// offset returns the byte offset of a node's line and column.
func (s *source) offset(line, column int) (int, error) {
	if line < 1 || line > s.lines || column < 1 {
		return 0, fmt.Errorf("position %d:%d is outside the input", line, column)
	}
	at := s.marks[(line-1)/lineStride]
	for range (line - 1) % lineStride {
		for at < len(s.raw) && lineBreak(s.raw[at:]) == 0 {
			at++
		}
		if at >= len(s.raw) {
			return 0, fmt.Errorf("position %d:%d is outside the input", line, column)
		}
		at += lineBreak(s.raw[at:])
	}
	for range column - 1 {
		if at >= len(s.raw) {
			return 0, fmt.Errorf("position %d:%d is outside the input", line, column)
		}
		_, size := utf8.DecodeRune(s.raw[at:])
		at += size
	}
	return at, nil
}

// scalarSpan returns where the source text of scalar n is: from its first
// character (past any anchor or tag) to the end of its closing quote, if
// it has one. It checks that the text found there is the scalar's value,
// so a position that does not match the bytes is an error, never a
// misplaced edit.
func (s *source) scalarSpan(n *yaml.Node) (start, end int, err error) {
	if n.Kind != yaml.ScalarNode {
		return 0, 0, fmt.Errorf("not a scalar")
	}
	start, err = s.offset(n.Line, n.Column)
	if err != nil {
		return 0, 0, err
	}
	start = s.skipProperties(start)
	raw := s.raw
	switch {
	case n.Style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		return s.blockContent(n, start)
	case n.Style&yaml.DoubleQuotedStyle != 0:
		end = quotedEnd(raw, start, '"')
	case n.Style&yaml.SingleQuotedStyle != 0:
		end = quotedEnd(raw, start, '\'')
	default:
		end = start + len(n.Value)
		if end > len(raw) || string(raw[start:end]) != n.Value {
			return 0, 0, fmt.Errorf("the text at line %d, column %d is not the value %q", n.Line, n.Column, n.Value)
		}
		return start, end, nil
	}
	if end < 0 {
		return 0, 0, fmt.Errorf("no closing quote after line %d, column %d", n.Line, n.Column)
	}
	var v string
	if err := yaml.Unmarshal(raw[start:end], &v); err != nil || v != n.Value {
		return 0, 0, fmt.Errorf("the text at line %d, column %d is not the value %q", n.Line, n.Column, n.Value)
	}
	return start, end, nil
}

// blockContent returns where the text of a one-line block scalar (| or >)
// is: its header line stays as written, and so does the line break and
// chomping, so that only the text is replaced.
func (s *source) blockContent(n *yaml.Node, at int) (start, end int, err error) {
	raw := s.raw
	text := strings.TrimRight(n.Value, "\n")
	if text == "" || strings.ContainsAny(text, "\n\r") || at >= len(raw) || (raw[at] != '|' && raw[at] != '>') {
		return 0, 0, fmt.Errorf("a block scalar (| or >) of more than one line at line %d is not edited in place; write the image on one line", n.Line)
	}
	for at < len(raw) && raw[at] != '\n' && raw[at] != '\r' {
		at++ // the header: indicators and a comment
	}
	for at < len(raw) && isSpace(raw[at]) {
		at++ // the line break, blank lines and the indentation
	}
	end = at + len(text)
	if end > len(raw) || string(raw[at:end]) != text {
		return 0, 0, fmt.Errorf("the text at line %d, column %d is not the value %q", n.Line, n.Column, n.Value)
	}
	return at, end, nil
}

// skipProperties returns the offset past an anchor (&a) and a tag (!t)
// before a scalar's text, and the space, line breaks and comments after
// them.
func (s *source) skipProperties(at int) int {
	raw := s.raw
	for at < len(raw) && (raw[at] == '&' || raw[at] == '!') {
		for at < len(raw) && !isSpace(raw[at]) {
			at++
		}
		at = s.skipSpace(at)
	}
	return at
}

// skipSpace returns the offset past space, line breaks and comments.
func (s *source) skipSpace(at int) int {
	raw := s.raw
	for at < len(raw) {
		switch {
		case isSpace(raw[at]):
			at++
		case raw[at] == '#':
			for at < len(raw) && raw[at] != '\n' && raw[at] != '\r' {
				at++
			}
		default:
			return at
		}
	}
	return at
}

func isSpace(b byte) bool { return b == ' ' || b == '\t' || b == '\n' || b == '\r' }

// quotedEnd returns the offset just past the quote that closes the scalar
// opened by quote at start, or -1.
func quotedEnd(raw []byte, start int, quote byte) int {
	if start >= len(raw) || raw[start] != quote {
		return -1
	}
	for i := start + 1; i < len(raw); i++ {
		switch {
		case quote == '"' && raw[i] == '\\':
			i++ // whatever is escaped cannot close the scalar
		case raw[i] != quote:
		case quote == '\'' && i+1 < len(raw) && raw[i+1] == '\'':
			i++ // '' is a quote inside a single-quoted scalar
		default:
			return i + 1
		}
	}
	return -1
}

// replacement returns value written in a scalar's quoting style: plain stays
// plain, 'single' single, "double" double. value must be an image
// reference, which needs no escaping in any of them.
func replacement(style yaml.Style, value string) string {
	switch {
	case style&(yaml.LiteralStyle|yaml.FoldedStyle) != 0:
		return value // the text only; the header and line breaks stay
	case style&yaml.DoubleQuotedStyle != 0:
		return `"` + value + `"`
	case style&yaml.SingleQuotedStyle != 0:
		return "'" + value + "'"
	}
	return value
}
