// Package config loads Freeway's YAML configuration strictly: an unknown
// key, a value of the wrong type (a fraction where a whole number goes
// included) or a value that fails validation is
// reported with the file name, line and column, and the line itself. So
// are what go-yaml would mishandle: YAML tags (not used here) and aliases
// of no anchor. A file of nothing but comments is empty; a second
// document (after ---) is refused rather than ignored. Decoding never
// panics (internal/freeway fuzzes it with whole files).
package config

import (
	"bytes"
	"errors"
	"fmt"
	"math"
	"reflect"
	"sort"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/parser"
	"github.com/goccy/go-yaml/token"
)

// FieldError is a validation error at a YAML path such as
// "$.apps[1].aggregates[0].fn". A component's Validate gives paths
// relative to its own section ("batch_bytes", "tail[0].path"), which the
// wiring places under the section with Under.
type FieldError struct {
	Path string
	Msg  string
	// Also are the paths of other keys the error is about, where it is
	// placed when the file does not hold Path (a limit left at its
	// default that a key set in the file exceeds).
	Also []string
	// Column, when not 0, is the 1-based byte column within the key's
	// value that the error is at (in a where expression), where the
	// file's error is placed when the value is written on one line.
	Column int
}

func (e *FieldError) Error() string {
	if e.Column > 0 {
		return fmt.Sprintf("%s: column %d: %s", strings.TrimPrefix(e.Path, "$."), e.Column, e.Msg)
	}
	return strings.TrimPrefix(e.Path, "$.") + ": " + e.Msg
}

// Errorf returns a FieldError at path.
func Errorf(path, format string, args ...any) error {
	return &FieldError{Path: path, Msg: fmt.Sprintf(format, args...)}
}

// Under places the FieldErrors in err whose paths are relative (not
// starting with "$") under section: with section "$.agent", "batch_bytes"
// becomes "$.agent.batch_bytes" and "" the section itself. Errors joined
// by errors.Join are placed one by one; any other error, and a path
// already absolute, is left as it is.
func Under(section string, err error) error {
	switch e := err.(type) { //nolint:errorlint // rebuilds err's own structure; a wrapped FieldError is left as it is (above)
	case nil:
		return nil
	case *FieldError:
		out := *e
		out.Path = under(section, e.Path)
		out.Also = nil
		for _, p := range e.Also {
			out.Also = append(out.Also, under(section, p))
		}
		return &out
	case interface{ Unwrap() []error }:
		var errs []error
		for _, x := range e.Unwrap() {
			errs = append(errs, Under(section, x))
		}
		return errors.Join(errs...)
	}
	return err
}

func under(section, path string) string {
	switch {
	case strings.HasPrefix(path, "$"):
		return path
	case path == "":
		return section
	case strings.HasPrefix(path, "["):
		return section + path
	}
	return section + "." + path
}

// Key returns path extended by a mapping key, quoted when the key holds
// what a YAML path would read otherwise ("$.categories.'web.v2'").
func Key(path, key string) string {
	plain := key != ""
	for _, c := range key {
		if !(c == '_' || c == '-' || c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z') {
			plain = false
			break
		}
	}
	if plain {
		return path + "." + key
	}
	return path + ".'" + strings.NewReplacer(`\`, `\\`, `'`, `\'`).Replace(key) + "'"
}

// Error is an error in a configuration file, with its position.
type Error struct {
	File         string
	Line, Column int // 0 when unknown
	Msg          string
	Source       string // the offending lines, with a marker
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d:%d", e.Line, e.Column)
	}
	b.WriteString(": ")
	b.WriteString(e.Msg)
	if e.Source != "" {
		b.WriteString("\n")
		b.WriteString(e.Source)
	}
	return b.String()
}

// Decode strictly decodes the YAML in data (read from file) into dst,
// which holds the defaults, then calls validate. Every error is an *Error
// with the position of the offending node; a FieldError from validate is
// placed at its path (or at its nearest existing parent).
func Decode(file string, data []byte, dst any, validate func() error) error {
	if strings.TrimSpace(string(data)) == "" {
		return &Error{File: file, Msg: "the file is empty"}
	}
	// YAML reads "\r\n" and a lone "\r" as line breaks, and a scalar's line
	// breaks as "\n"; go-yaml counts lines wrong when they mix (a
	// position one or more lines off), so they are made "\n" first.
	data = bytes.ReplaceAll(bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n")), []byte("\r"), []byte("\n"))
	// A byte order mark, which editors on Windows write, may start a YAML
	// stream; go-yaml read it as part of the first key ("unknown key
	// \"\ufeffapps\"").
	data = bytes.TrimPrefix(data, []byte("\ufeff"))
	astFile, err := parser.ParseBytes(data, 0)
	if err != nil {
		return positioned(file, data, err)
	}
	body := documentBody(astFile)
	if body == nil {
		return &Error{File: file, Msg: "the file is empty (nothing but comments)"}
	}
	if tok := laterDocument(astFile); tok != nil {
		return &Error{File: file, Line: tok.Position.Line, Column: tok.Position.Column, Source: source(data, tok),
			Msg: "a second YAML document starts here: the configuration is one document, and the keys after this --- would be ignored; put them in the first"}
	}
	if err := checkNodes(body); err != nil {
		return positioned(file, data, err)
	}
	if err := nodeToValue(body, dst); err != nil {
		e := positioned(file, data, err)
		var uf *yaml.UnknownFieldError
		if ce, ok := e.(*Error); ok && errors.As(err, &uf) && uf.Token != nil { //nolint:errorlint // positioned's own *Error
			ce.Msg += knownKeys(uf.Token.Value, keysBeside(body, reflect.TypeOf(dst), uf.Token))
		}
		return e
	}
	if err := checkWhole(body, reflect.TypeOf(dst)); err != nil {
		return positioned(file, data, err)
	}
	if validate == nil {
		return nil
	}
	err = validate()
	if err == nil {
		return nil
	}
	var fe *FieldError
	if !errors.As(err, &fe) {
		return &Error{File: file, Msg: err.Error()}
	}
	tok, exact := nodeAt(astFile, fe.Path)
	for _, p := range fe.Also {
		if tok != nil {
			break
		}
		tok, _ = nodeAt(astFile, p)
	}
	msg := fe.Error()
	if tok == nil {
		return &Error{File: file, Msg: msg}
	}
	e := &Error{File: file, Line: tok.Position.Line, Column: tok.Position.Column, Msg: msg, Source: source(data, tok)}
	if fe.Column > 0 && exact {
		// One position, the file's, rather than the value's start and a
		// column within it.
		if col, ok := valueColumn(data, tok, fe.Column); ok {
			at := *tok
			at.Position = &token.Position{Line: tok.Position.Line, Column: col}
			e.Column, e.Msg, e.Source = col, strings.TrimPrefix(fe.Path, "$.")+": "+fe.Msg, source(data, &at)
		}
	}
	return e
}

// documentBody is the first document of f, nil if it has none (only
// comments, or a bare "---").
func documentBody(f *ast.File) ast.Node {
	if len(f.Docs) == 0 || f.Docs[0].Body == nil {
		return nil
	}
	return f.Docs[0].Body
}

// laterDocument is where a document of f after the first that holds
// anything starts (its "---"), nil if none does.
func laterDocument(f *ast.File) *token.Token {
	for _, d := range f.Docs[1:] {
		tok := d.Start
		if tok == nil && d.Body != nil {
			tok = d.Body.GetToken()
		}
		if d.Body != nil && tok != nil && tok.Position != nil {
			return tok
		}
	}
	return nil
}

// checkNodes refuses, at their position, what go-yaml mishandles: a tag
// (a tagged value where a list or a section is expected, "apps: !x 1",
// crashed its decoder; the configuration has no use for tags), and an
// alias of no anchor (refused without a position).
func checkNodes(body ast.Node) error {
	c := &nodeChecker{anchors: map[string]bool{}}
	ast.Walk(c, body)
	return c.err
}

type nodeChecker struct {
	anchors map[string]bool
	err     error
}

func (c *nodeChecker) Visit(n ast.Node) ast.Visitor {
	if c.err != nil || n == nil {
		return nil
	}
	switch n := n.(type) {
	case *ast.TagNode:
		c.err = &nodeError{n, fmt.Errorf("YAML tags (%s) are not supported in the configuration", n.GetToken().Value)}
		return nil
	case *ast.AnchorNode:
		// An anchor is defined once its value is: an alias inside the
		// value it names (`&x {<<: *x}`) refers to nothing yet.
		if n.Value != nil {
			ast.Walk(c, n.Value)
		}
		if n.Name != nil && c.err == nil {
			c.anchors[n.Name.GetToken().Value] = true
		}
		return nil
	case *ast.AliasNode:
		if n.Value != nil && !c.anchors[n.Value.GetToken().Value] {
			c.err = &nodeError{n, fmt.Errorf("alias *%s names no anchor defined before it", n.Value.GetToken().Value)}
			return nil
		}
	}
	return c
}

// checkWhole refuses a number with a fraction where t, the type the
// node was decoded into, holds whole numbers: go-yaml drops the fraction
// ("buckets: 2.5" ran with 2 buckets, "max_cells: 0.5" was "must be at
// least 1"). Types that decode themselves (sizes, durations) and keys
// that name no field are left to the decoder.
func checkWhole(n ast.Node, t reflect.Type) error {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || decodesItself(t) {
		return nil
	}
	switch n := n.(type) {
	case *ast.AnchorNode:
		return checkWhole(n.Value, t)
	case *ast.FloatNode:
		if isWhole(t.Kind()) && n.Value != math.Trunc(n.Value) {
			return &nodeError{n, fmt.Errorf("want a whole number, not %s", n.GetToken().Value)}
		}
	case *ast.SequenceNode:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return nil
		}
		for _, v := range n.Values {
			if err := checkWhole(v, t.Elem()); err != nil {
				return err
			}
		}
	case *ast.MappingNode:
		for _, v := range n.Values {
			if err := checkWhole(v, t); err != nil {
				return err
			}
		}
	case *ast.MappingValueNode:
		if n.Key == nil {
			return nil
		}
		var vt reflect.Type
		switch t.Kind() {
		case reflect.Map:
			vt = t.Elem()
		case reflect.Struct:
			if tok := n.Key.GetToken(); tok != nil {
				vt = fieldType(t, tok.Value)
			}
		}
		if vt != nil {
			return checkWhole(n.Value, vt)
		}
	}
	return nil
}

// keysBeside is the keys of the section that holds the key at token
// at, nil if it is not found.
func keysBeside(n ast.Node, t reflect.Type, at *token.Token) []string {
	for t != nil && t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if t == nil || decodesItself(t) {
		return nil
	}
	switch n := n.(type) {
	case *ast.AnchorNode:
		return keysBeside(n.Value, t, at)
	case *ast.SequenceNode:
		if t.Kind() != reflect.Slice && t.Kind() != reflect.Array {
			return nil
		}
		for _, v := range n.Values {
			if k := keysBeside(v, t.Elem(), at); k != nil {
				return k
			}
		}
	case *ast.MappingNode:
		for _, v := range n.Values {
			if k := keysBeside(v, t, at); k != nil {
				return k
			}
		}
	case *ast.MappingValueNode:
		if n.Key == nil || n.Key.GetToken() == nil {
			return nil
		}
		kt := n.Key.GetToken()
		switch t.Kind() {
		case reflect.Map:
			return keysBeside(n.Value, t.Elem(), at)
		case reflect.Struct:
			if kt.Position.Line == at.Position.Line && kt.Position.Column == at.Position.Column {
				return structKeys(t)
			}
			if vt := fieldType(t, kt.Value); vt != nil {
				return keysBeside(n.Value, vt, at)
			}
		}
	}
	return nil
}

// yamlFields calls fn with the YAML key and the type of each exported
// field of struct t, inlined structs' fields included, until fn returns
// false; it reports whether fn never did.
func yamlFields(t reflect.Type, fn func(key string, ft reflect.Type) bool) bool {
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if strings.Contains(","+opts+",", ",inline,") {
			ft := f.Type
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			if ft.Kind() == reflect.Struct && !yamlFields(ft, fn) {
				return false
			}
			continue
		}
		if name == "-" {
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		if !fn(name, f.Type) {
			return false
		}
	}
	return true
}

// structKeys is the YAML keys of struct t, inlined structs' included.
func structKeys(t reflect.Type) []string {
	var keys []string
	yamlFields(t, func(key string, _ reflect.Type) bool {
		keys = append(keys, key)
		return true
	})
	return keys
}

// knownKeys says which of keys an unknown key was likely meant to be,
// or, none being close, what keys there are.
func knownKeys(key string, keys []string) string {
	if len(keys) == 0 {
		return ""
	}
	best, bestD := "", 3 // at most two edits away
	for _, k := range keys {
		if d := editDistance(strings.ToLower(key), k); d < bestD {
			best, bestD = k, d
		}
	}
	if best != "" {
		return fmt.Sprintf(" (did you mean %s?)", best)
	}
	sorted := append([]string(nil), keys...)
	sort.Strings(sorted)
	return fmt.Sprintf(" (want one of %s)", strings.Join(sorted, ", "))
}

// editDistance is the Levenshtein distance of a and b, in bytes.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}

func isWhole(k reflect.Kind) bool {
	switch k {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// decodesItself reports whether t has its own YAML or text decoding.
func decodesItself(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	for _, m := range []string{"UnmarshalYAML", "UnmarshalText"} {
		if _, ok := pt.MethodByName(m); ok {
			return true
		}
	}
	return false
}

// fieldType is the type of struct t's field of YAML key key (searching
// inlined structs), nil if none.
func fieldType(t reflect.Type, key string) reflect.Type {
	var found reflect.Type
	yamlFields(t, func(k string, ft reflect.Type) bool {
		if k == key {
			found = ft
			return false
		}
		return true
	})
	return found
}

// nodeToValue decodes body into dst; a panic of the decoder on input no
// check foresaw is an error, not the end of the process (a reload reads
// the file while the process runs).
func nodeToValue(body ast.Node, dst any) (err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the YAML decoder failed on this file: %v", r)
		}
	}()
	return yaml.NodeToValue(body, dst, yaml.DisallowUnknownField())
}

// positioned turns a go-yaml error about data into an Error.
func positioned(file string, data []byte, err error) error {
	var ne *nodeError
	if errors.As(err, &ne) && ne.node.GetToken() != nil {
		tok := ne.node.GetToken()
		return &Error{File: file, Line: tok.Position.Line, Column: tok.Position.Column, Msg: ne.err.Error(), Source: source(data, tok)}
	}
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil {
		tok := ye.GetToken()
		msg := ye.GetMessage()
		var uf *yaml.UnknownFieldError
		var te *yaml.TypeError
		var oe *yaml.OverflowError
		var ut *yaml.UnexpectedNodeTypeError
		switch {
		case errors.As(err, &uf):
			msg = strings.Replace(msg, "unknown field", "unknown key", 1)
		case errors.As(err, &te) && te.DstType != nil:
			// go-yaml names Go types and, for a key of a section, the
			// section's Go field ("Go struct field Config.Agent of type
			// bool" for agent.tls): the reader knows neither.
			msg = fmt.Sprintf("want %s, not %s", kindName(te.DstType), written(tok, te.SrcType))
		case errors.As(err, &oe):
			msg = fmt.Sprintf("%s is out of range", oe.SrcNum)
		case errors.As(err, &ut):
			msg = fmt.Sprintf("want %s, not %s", nodeTypeName(ut.Expected), nodeTypeName(ut.Actual))
			if ut.Actual != ast.MappingType && ut.Actual != ast.SequenceType && tok.Value != "" {
				msg = fmt.Sprintf("want %s, not %q", nodeTypeName(ut.Expected), tok.Value)
			}
		}
		return &Error{File: file, Line: tok.Position.Line, Column: tok.Position.Column, Msg: msg, Source: source(data, tok)}
	}
	return &Error{File: file, Msg: err.Error()}
}

// kindName says what a value of type t is written as.
func kindName(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "a whole number"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "text"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a section of keys"
	case reflect.Pointer:
		return kindName(t.Elem())
	}
	return t.String()
}

// written says what was written where a value of another type was
// wanted: the scalar itself, or the kind of a list or section.
func written(tok *token.Token, src reflect.Type) string {
	if src != nil {
		switch src.Kind() {
		case reflect.Slice, reflect.Array:
			return "a list"
		case reflect.Map:
			return "a section of keys"
		}
	}
	if tok.Value == "" {
		return "an empty value"
	}
	return strconv.Quote(tok.Value)
}

// nodeTypeName names a YAML node type for the reader.
func nodeTypeName(t ast.NodeType) string {
	switch t {
	case ast.SequenceType:
		return `a list ("- item" lines or [a, b])`
	case ast.MappingType:
		return "a section of keys"
	case ast.NullType:
		return "an empty value"
	}
	return "a single value"
}

// sourceContext is how many lines before the offending one source shows.
const sourceContext = 3

// source shows tok's line of data and the lines before it, with a
// marker under tok's column. It is drawn from data rather than by
// go-yaml, whose drawing of a token that spans lines (an unclosed quote,
// a mis-indented key) put the marker under another line and numbered two
// lines alike.
func source(data []byte, tok *token.Token) string {
	lines := strings.Split(string(data), "\n")
	n, col := tok.Position.Line, tok.Position.Column
	if n < 1 || n > len(lines) {
		return ""
	}
	width := max(2, len(fmt.Sprint(n))) // as wide as go-yaml drew it, which the README shows
	var b strings.Builder
	for i := max(1, n-sourceContext); i <= n; i++ {
		mark := " "
		if i == n {
			mark = ">"
		}
		fmt.Fprintf(&b, "%s %*d | %s\n", mark, width, i, lines[i-1])
	}
	// The marker's indent copies the line's tabs, so that it stands
	// under the column whatever the terminal's tab stops.
	b.WriteString(strings.Repeat(" ", width+5))
	for i, r := range []rune(lines[n-1]) {
		if i >= col-1 {
			break
		}
		if r == '\t' {
			b.WriteRune('\t')
		} else {
			b.WriteByte(' ')
		}
	}
	b.WriteByte('^')
	return b.String()
}

// nodeAt finds the token of path in f, backing off to parents for paths
// that name a missing key; exact is whether it is path's own.
func nodeAt(f *ast.File, path string) (tok *token.Token, exact bool) {
	for p := path; p != "" && p != "$"; p = parentPath(p) {
		yp, err := pathString(p)
		if err != nil {
			continue
		}
		n, err := yp.FilterFile(f)
		if err == nil && n != nil {
			return n.GetToken(), p == path
		}
	}
	return nil, false
}

// valueColumn is the file's column of byte column col of the scalar
// tok, when the file holds its value as it is on tok's line (plain, or
// quoted without escapes); ok is false otherwise (a value over several
// lines, an escape), where no column of the file is col's.
func valueColumn(data []byte, tok *token.Token, col int) (int, bool) {
	lines := strings.Split(string(data), "\n")
	n, start := tok.Position.Line, tok.Position.Column
	if n < 1 || n > len(lines) || col > len(tok.Value)+1 {
		return 0, false
	}
	line := []rune(lines[n-1])
	if start < 1 || start > len(line) {
		return 0, false
	}
	rest := string(line[start-1:])
	if q := rest[0]; q == '"' || q == '\'' {
		rest, start = rest[1:], start+1
	}
	if !strings.HasPrefix(rest, tok.Value) {
		return 0, false
	}
	return start + utf8.RuneCountInString(tok.Value[:col-1]), true
}

// pathString is yaml.PathString, which panics on some paths ("$.a[0"):
// such a path is no path.
func pathString(p string) (yp *yaml.Path, err error) {
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("bad YAML path %q: %v", p, r)
		}
	}()
	return yaml.PathString(p)
}

func parentPath(p string) string {
	i := strings.LastIndexAny(p, ".[")
	if i <= 0 {
		return ""
	}
	return p[:i]
}
