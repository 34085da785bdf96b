package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"
	"github.com/spf13/cobra"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/freeway"
)

// The tests of this file hold the docs an operator reads (the README,
// the Docker README, the example configurations and every subcommand's
// --help; for metrics, the packages' doc.go too) to the code: each
// metric (with its labels), configuration key (and the default a doc
// gives it), command line and HTTP path they name must exist. And the
// other way: every metric the code registers is named by a doc, and
// every configuration key is shown by examples/freeway.yaml. Their
// failures name the doc's file and line.

const repoRoot = "../.."

// operatorDocs are the Markdown docs checked, relative to repoRoot.
var operatorDocs = []string{"README.md", "deploy/docker/README.md"}

// doc is one doc's text, by line.
type doc struct {
	name  string
	lines []string
}

// where names a line of the doc (1-based) for a failure message.
func (d doc) where(line int) string {
	if line < 1 || line > len(d.lines) {
		return d.name
	}
	text := []rune(strings.TrimSpace(d.lines[line-1]))
	if len(text) > 160 {
		text = append(text[:160], '…')
	}
	return fmt.Sprintf("%s:%d: %s", d.name, line, string(text))
}

func readDoc(t *testing.T, name string) doc {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(repoRoot, name))
	if err != nil {
		t.Fatal(err)
	}
	return doc{name: name, lines: strings.Split(string(b), "\n")}
}

// markdownDocs are the Markdown docs; exampleDocs the example configs.
func markdownDocs(t *testing.T) []doc {
	var ds []doc
	for _, n := range operatorDocs {
		ds = append(ds, readDoc(t, n))
	}
	return ds
}

func exampleDocs(t *testing.T) []doc {
	t.Helper()
	names, err := filepath.Glob(filepath.Join(repoRoot, "examples", "*.yaml"))
	if err != nil || len(names) == 0 {
		t.Fatalf("no examples/*.yaml: %v", err)
	}
	var ds []doc
	for _, n := range names {
		rel, _ := filepath.Rel(repoRoot, n)
		ds = append(ds, readDoc(t, filepath.ToSlash(rel)))
	}
	return ds
}

// packageDocs are the packages' doc.go files, which say what each
// package counts.
func packageDocs(t *testing.T) []doc {
	t.Helper()
	var ds []doc
	err := filepath.WalkDir(repoRoot, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if e.IsDir() && (strings.HasPrefix(e.Name(), ".") && path != repoRoot || e.Name() == "gen") {
			return filepath.SkipDir
		}
		if e.Name() == "doc.go" {
			rel, _ := filepath.Rel(repoRoot, path)
			ds = append(ds, readDoc(t, filepath.ToSlash(rel)))
		}
		return nil
	})
	if err != nil || len(ds) < 10 {
		t.Fatalf("found %d doc.go files: %v", len(ds), err)
	}
	return ds
}

// helpDocs are the --help texts of freeway and of every subcommand.
func helpDocs(t *testing.T) []doc {
	t.Helper()
	var ds []doc
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		args := strings.Fields(c.CommandPath())[1:]
		args = append(args, "--help")
		out, err := run(t, args...)
		if err != nil {
			t.Fatalf("%s --help: %v", c.CommandPath(), err)
		}
		ds = append(ds, doc{name: c.CommandPath() + " --help", lines: strings.Split(out, "\n")})
		for _, s := range c.Commands() {
			if s.Name() != "help" {
				walk(s)
			}
		}
	}
	walk(newRoot())
	return ds
}

// span is a piece of a doc: an inline code span or a line of a fenced
// block, with the line it starts on.
type span struct {
	line int
	text string
	lang string // the fence's language; "" for an inline span
	// fenced: a line of a fenced block.
	fenced bool
}

var inlineCode = regexp.MustCompile("`([^`]+)`")

// spans returns the inline code spans of a Markdown doc (which may run
// over a line break) and the lines of its fenced blocks.
func spans(d doc) []span {
	var out []span
	var para []string // the lines of the paragraph, outside fences
	paraStart := 0
	flush := func() {
		text := strings.Join(para, "\n")
		for _, m := range inlineCode.FindAllStringSubmatchIndex(text, -1) {
			line := paraStart + strings.Count(text[:m[0]], "\n")
			out = append(out, span{line: line, text: strings.ReplaceAll(text[m[2]:m[3]], "\n", " ")})
		}
		para = nil
	}
	lang, inFence := "", false
	for i, l := range d.lines {
		trimmed := strings.TrimSpace(l)
		if strings.HasPrefix(trimmed, "```") {
			flush()
			inFence = !inFence
			lang = strings.TrimPrefix(trimmed, "```")
			continue
		}
		if inFence {
			out = append(out, span{line: i + 1, text: l, lang: lang, fenced: true})
			continue
		}
		if trimmed == "" {
			flush()
			continue
		}
		if len(para) == 0 {
			paraStart = i + 1
		}
		para = append(para, l)
	}
	flush()
	return out
}

// fencedBlocks returns each fenced block of lang with its first line.
func fencedBlocks(d doc, lang string) (blocks []string, lines []int) {
	var cur []string
	in := false
	for i, l := range d.lines {
		trimmed := strings.TrimSpace(l)
		switch {
		case !in && trimmed == "```"+lang:
			in, cur = true, nil
			lines = append(lines, i+2)
		case in && trimmed == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n")+"\n")
		case in:
			cur = append(cur, l)
		}
	}
	return blocks, lines
}

// ---- Metrics ----

// registeredMetrics finds every metric the code registers: a string
// literal freeway_... in a non-test Go file, and the label names given
// beside it (the []string of a Vec or Desc, the keys of
// prometheus.Labels, an fb303 mapping's By).
//
// values holds, for each metric, the string literals of the packages
// that register it: the label values the doc may name are among them.
func registeredMetrics(t *testing.T) (metrics map[string]map[string]bool, values map[string]map[string]bool) {
	t.Helper()
	name := regexp.MustCompile(`^freeway_[a-z0-9_]*[a-z0-9]$`)
	metrics = map[string]map[string]bool{}
	literals := map[string]map[string]bool{} // by directory
	dirsOf := map[string]map[string]bool{}   // metric -> directories
	err := filepath.WalkDir(repoRoot, func(path string, e fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(repoRoot, path)
		if e.IsDir() {
			switch rel = filepath.ToSlash(rel); {
			// bench reads the metrics (by name), it registers none.
			case strings.HasPrefix(e.Name(), ".") && rel != ".", rel == "bench", rel == "thrift/gen", e.Name() == "testdata", e.Name() == "node_modules":
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(path, ".go") || strings.HasSuffix(path, "_test.go") {
			return nil
		}
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, parser.SkipObjectResolution)
		if err != nil {
			return err
		}
		consts, labelVars := stringConsts(f), labelVars(f)
		var stack []ast.Node
		ast.Inspect(f, func(n ast.Node) bool {
			if n == nil {
				stack = stack[:len(stack)-1]
				return true
			}
			stack = append(stack, n)
			lit, ok := n.(*ast.BasicLit)
			if !ok || lit.Kind != token.STRING {
				return true
			}
			s, err := strconv.Unquote(lit.Value)
			if err != nil {
				return true
			}
			dir := filepath.Dir(path)
			if literals[dir] == nil {
				literals[dir] = map[string]bool{}
			}
			literals[dir][s] = true
			if !name.MatchString(s) {
				return true
			}
			if dirsOf[s] == nil {
				dirsOf[s] = map[string]bool{}
			}
			dirsOf[s][dir] = true
			labels := metrics[s]
			if labels == nil {
				labels = map[string]bool{}
				metrics[s] = labels
			}
			// The innermost call that holds the name (NewCounterVec,
			// NewDesc, a helper) or, in a table without one, the
			// innermost composite literal.
			var holder ast.Node
		up:
			for i := len(stack) - 2; i >= 0; i-- {
				switch n := stack[i].(type) {
				case *ast.CallExpr:
					holder = n
					break up
				case *ast.CompositeLit:
					if holder == nil {
						holder = n
					}
				case ast.Stmt, ast.Decl, *ast.FuncLit:
					break up
				}
			}
			if holder != nil {
				collectLabels(holder, consts, labelVars, labels)
			}
			return true
		})
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if len(metrics) < 50 {
		t.Fatalf("found only %d metrics in the code: the scan is broken", len(metrics))
	}
	values = map[string]map[string]bool{}
	for m, dirs := range dirsOf {
		values[m] = map[string]bool{}
		for d := range dirs {
			for l := range literals[d] {
				values[m][l] = true
			}
		}
	}
	return metrics, values
}

// stringConsts are the file's string constants, for labels named by one.
func stringConsts(f *ast.File) map[string]string {
	out := map[string]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		vs, ok := n.(*ast.ValueSpec)
		if !ok {
			return true
		}
		for i, id := range vs.Names {
			if i < len(vs.Values) {
				if lit, ok := vs.Values[i].(*ast.BasicLit); ok && lit.Kind == token.STRING {
					out[id.Name], _ = strconv.Unquote(lit.Value)
				}
			}
		}
		return true
	})
	return out
}

// labelVars are the file's variables holding label names: l :=
// prometheus.Labels{"path": p}, by name.
func labelVars(f *ast.File) map[string][]string {
	out := map[string][]string{}
	ast.Inspect(f, func(n ast.Node) bool {
		as, ok := n.(*ast.AssignStmt)
		if !ok || len(as.Lhs) != len(as.Rhs) {
			return true
		}
		for i, l := range as.Lhs {
			id, ok := l.(*ast.Ident)
			if !ok {
				continue
			}
			found := map[string]bool{}
			collectLabels(as.Rhs[i], nil, nil, found)
			for k := range found {
				out[id.Name] = append(out[id.Name], k)
			}
		}
		return true
	})
	return out
}

func collectLabels(n ast.Node, consts map[string]string, vars map[string][]string, labels map[string]bool) {
	str := func(e ast.Expr) (string, bool) {
		switch e := e.(type) {
		case *ast.BasicLit:
			s, err := strconv.Unquote(e.Value)
			return s, err == nil
		case *ast.Ident:
			s, ok := consts[e.Name]
			return s, ok
		}
		return "", false
	}
	ast.Inspect(n, func(n ast.Node) bool {
		if id, ok := n.(*ast.Ident); ok {
			for _, l := range vars[id.Name] {
				labels[l] = true
			}
		}
		cl, ok := n.(*ast.CompositeLit)
		if !ok {
			return true
		}
		switch typ := cl.Type.(type) {
		case *ast.ArrayType:
			if id, ok := typ.Elt.(*ast.Ident); ok && id.Name == "string" {
				for _, e := range cl.Elts {
					if s, ok := str(e); ok {
						labels[s] = true
					}
				}
			}
		case *ast.SelectorExpr:
			if typ.Sel.Name == "Labels" {
				for _, e := range cl.Elts {
					if kv, ok := e.(*ast.KeyValueExpr); ok {
						if s, ok := str(kv.Key); ok {
							labels[s] = true
						}
					}
				}
			}
		}
		for _, e := range cl.Elts {
			if kv, ok := e.(*ast.KeyValueExpr); ok {
				if id, ok := kv.Key.(*ast.Ident); ok && id.Name == "By" {
					if s, ok := str(kv.Value); ok {
						labels[s] = true
					}
				}
			}
		}
		return true
	})
}

// docMetric matches a metric a doc names: freeway_..., or "..._rest"
// after one (the previous name's prefix elided), with its braces:
// {label,label=value|value} or {,_suffix,_suffix}; or a prefix with *.
var docMetric = regexp.MustCompile(`(freeway_[a-z0-9_]*[a-z0-9]|\.\.\.(_[a-z0-9_]*[a-z0-9]))(\*|_\*)?(\{[^}]*\})?`)

type metricRef struct {
	name   string
	labels []string
	// values are the label values the doc gives: reason=too_large|busy.
	values map[string][]string
	prefix bool // name_* : some metric starts with name
}

// metricRefs parses the metrics a doc line names. prev is the last full
// name seen in the doc, for "..._suffix".
func metricRefs(line string, prev *string, registered map[string]map[string]bool) ([]metricRef, []string) {
	var refs []metricRef
	var bad []string
	for _, m := range docMetric.FindAllStringSubmatchIndex(line, -1) {
		end := m[1]
		if end < len(line) && (line[end] == '_' || line[end] == '-') && m[6] < 0 {
			continue // a prefix (a table prefix such as freeway_split_), not a metric
		}
		name, elided := "", m[4] >= 0
		if elided {
			suffix := line[m[4]:m[5]]
			// The longest prefix of the previous name, cut at an
			// underscore, that makes a metric.
			parts := strings.Split(*prev, "_")
			for i := len(parts) - 1; i >= 1 && name == ""; i-- {
				if c := strings.Join(parts[:i], "_") + suffix; registered[c] != nil {
					name = c
				}
			}
			if name == "" {
				bad = append(bad, fmt.Sprintf("...%s: no metric of the code ends so and starts as %s does", suffix, *prev))
				continue
			}
		} else {
			name = line[m[2]:m[3]]
			*prev = name
		}
		if m[6] >= 0 {
			refs = append(refs, metricRef{name: strings.TrimSuffix(name, "_"), prefix: true})
			continue
		}
		var labels []string
		var values map[string][]string
		suffixes := []string{""}
		if m[8] >= 0 {
			items := strings.Split(strings.Trim(line[m[8]:m[9]], "{}"), ",")
			if slices.ContainsFunc(items, func(s string) bool { return s == "" || strings.HasPrefix(s, "_") }) {
				suffixes = items
			} else {
				values = map[string][]string{}
				for _, it := range items {
					l, v, hasValue := strings.Cut(it, "=")
					l = strings.TrimSpace(l)
					labels = append(labels, l)
					if hasValue {
						for _, alt := range strings.Split(v, "|") {
							values[l] = append(values[l], strings.Trim(strings.TrimSpace(alt), `"`))
						}
					}
				}
			}
		}
		for _, s := range suffixes {
			refs = append(refs, metricRef{name: name + s, labels: labels, values: values})
		}
	}
	return refs, bad
}

// TestDocsNameRegisteredMetrics: every freeway_ metric a doc names is
// registered by the code, with the labels (and label values) the doc
// gives it; and every metric the code registers is named by a doc.
func TestDocsNameRegisteredMetrics(t *testing.T) {
	registered, literals := registeredMetrics(t)
	mentioned := map[string]bool{}
	docs := append(append(markdownDocs(t), exampleDocs(t)...), helpDocs(t)...)
	docs = append(docs, packageDocs(t)...)
	for _, d := range docs {
		prev := ""
		for i, l := range d.lines {
			refs, bad := metricRefs(l, &prev, registered)
			for _, b := range bad {
				t.Errorf("%s\n\t%s", d.where(i+1), b)
			}
			for _, r := range refs {
				if r.prefix {
					found := false
					for n := range registered {
						if strings.HasPrefix(n, r.name) {
							found, mentioned[n] = true, true
						}
					}
					if !found {
						t.Errorf("%s\n\tno metric of the code starts with %s", d.where(i+1), r.name)
					}
					continue
				}
				labels, ok := registered[r.name]
				if !ok {
					t.Errorf("%s\n\tmetric %s is not registered by the code", d.where(i+1), r.name)
					continue
				}
				mentioned[r.name] = true
				for _, l := range r.labels {
					if !labels[l] {
						t.Errorf("%s\n\tmetric %s has no label %q (its labels: %s)", d.where(i+1), r.name, l, strings.Join(sortedKeys(labels), ", "))
					}
					for _, v := range r.values[l] {
						if !literals[r.name][v] {
							t.Errorf("%s\n\tmetric %s: label value %s=%q is no string of the code that registers it", d.where(i+1), r.name, l, v)
						}
					}
				}
			}
		}
	}
	// And the other way: an operator finds every metric in the docs
	// (README, "Metrics").
	for _, n := range sortedKeys(registered) {
		if mentioned[n] {
			continue
		}
		t.Errorf("metric %s is registered by the code but named by no doc (README, \"Metrics\")", n)
	}
}

func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// ---- Configuration keys ----

// sectionKeys are the dotted keys' first parts a doc writes
// (puma.max_cells).
var dottedKey = regexp.MustCompile(`^(agent|calligraphus|puma|serving|copier|tls|auth|log)\.([a-z_]+)$`)

// keyField is the field of the configuration at the YAML path, or false.
func keyField(path ...string) (reflect.Type, bool) {
	typ := reflect.TypeOf(freeway.Config{})
	for _, k := range path {
		for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
			typ = typ.Elem()
		}
		if typ.Kind() != reflect.Struct {
			return nil, false
		}
		f, ok := yamlField(typ, k)
		if !ok {
			return nil, false
		}
		typ = f.Type
	}
	return typ, true
}

func yamlField(typ reflect.Type, key string) (reflect.StructField, bool) {
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		if tag == "" && strings.Contains(opts, "inline") {
			if g, ok := yamlField(f.Type, key); ok {
				return g, true
			}
			continue
		}
		if tag == key {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

// decodeStrict decodes YAML over the defaults, refusing unknown keys,
// without validating (a doc's example may name files that do not exist).
func decodeStrict(name, text string) (freeway.Config, error) {
	cfg := freeway.DefaultConfig()
	err := config.Decode(name, []byte(text), &cfg, func() error { return nil })
	return cfg, err
}

// topLevelScalar reports whether key is a top-level key holding a value
// (dfs_retention, not agent:).
func topLevelScalar(key string) bool {
	typ, ok := keyField(key)
	return ok && typ.Kind() != reflect.Struct && typ.Kind() != reflect.Slice && typ.Kind() != reflect.Map
}

// docDefault matches what a doc says a dotted key's default is:
// "`puma.max_cells` (default 2,000,000", "`serving.fanout_timeout` (2s)",
// "`calligraphus.linger`, default 0". A space may part a number and its
// unit (256 MiB).
var docDefault = regexp.MustCompile("^`(?:,| \\()(?: ?default)? ?`?([0-9][0-9,]*(?:\\.[0-9]+)?(?: ?(?:[KMGT]i?B|ms|s|m|h|d)\\b)?)")

// TestDocsNameConfigKeys: every key a doc names (dotted in prose, in a
// YAML block, in a table of limits) exists, with the default the doc
// gives it.
func TestDocsNameConfigKeys(t *testing.T) {
	defaults := freeway.DefaultConfig()
	keys, values := 0, 0
	checkDefault := func(where, section, key, value string) {
		values++
		value = strings.ReplaceAll(strings.ReplaceAll(value, ",", ""), " ", "")
		text := key + ": " + value + "\n"
		if section != "" {
			text = section + ":\n  " + text
		}
		got, err := decodeStrict("doc", text)
		if err != nil {
			t.Errorf("%s\n\t%s: %v", where, key, err)
			return
		}
		if !reflect.DeepEqual(got, defaults) {
			full := key
			if section != "" {
				full = section + "." + key
			}
			t.Errorf("%s\n\tthe doc gives %s the default %s; the code's default is otherwise", where, full, value)
		}
	}
	docs := append(markdownDocs(t), helpDocs(t)...)
	for _, d := range docs {
		isHelp := strings.HasSuffix(d.name, "--help")
		var ss []span
		if isHelp {
			// Help has no code spans: each word may be a key.
			for i, l := range d.lines {
				for _, w := range strings.Fields(l) {
					ss = append(ss, span{line: i + 1, text: strings.Trim(w, ".,;:()")})
				}
			}
		} else {
			ss = spans(d)
		}
		for _, s := range ss {
			if s.fenced {
				continue
			}
			m := dottedKey.FindStringSubmatch(s.text)
			if m == nil {
				continue
			}
			keys++
			if _, ok := keyField(m[1], m[2]); !ok {
				t.Errorf("%s\n\tconfiguration key %s does not exist", d.where(s.line), s.text)
			}
		}
		if isHelp {
			continue
		}
		// Defaults given right after a dotted key, in the running text.
		whole := strings.Join(d.lines, "\n")
		for _, m := range regexp.MustCompile("`((?:agent|calligraphus|puma|serving|copier|tls|auth|log)\\.[a-z_]+|[a-z_]+)").FindAllStringSubmatchIndex(whole, -1) {
			rest := strings.Join(strings.Fields(whole[m[1]:min(len(whole), m[1]+80)]), " ")
			v := docDefault.FindStringSubmatch(rest)
			if v == nil {
				continue
			}
			section, key, dotted := strings.Cut(whole[m[2]:m[3]], ".")
			if !dotted {
				// A top-level key (dfs_retention); other words are not keys.
				if section, key = "", section; !topLevelScalar(key) {
					continue
				}
			} else if _, ok := keyField(section, key); !ok {
				continue // reported above
			}
			checkDefault(d.where(strings.Count(whole[:m[0]], "\n")+1), section, key, v[1])
		}
		// YAML blocks: every key exists.
		blocks, lines := fencedBlocks(d, "yaml")
		for i, b := range blocks {
			if _, err := decodeStrict(fmt.Sprintf("%s block at line %d", d.name, lines[i]), b); err != nil {
				t.Errorf("%s\n\t%v", d.where(lines[i]), err)
			}
		}
		// Tables of keys: "| key (under `agent:` and `calligraphus:`) | default |".
		var sections []string
		inTable := false
		for i, l := range d.lines {
			if !strings.HasPrefix(l, "|") {
				inTable = false
				continue
			}
			cells := strings.Split(strings.Trim(l, "|"), "|")
			if len(cells) < 2 {
				continue
			}
			first := strings.TrimSpace(cells[0])
			if strings.HasPrefix(first, "key") || strings.HasPrefix(first, "top-level key") {
				inTable, sections = true, nil
				if strings.HasPrefix(first, "top-level") {
					sections = []string{""}
				}
				for _, m := range regexp.MustCompile("`([a-z_]+):`").FindAllStringSubmatch(first, -1) {
					sections = append(sections, m[1])
				}
				continue
			}
			if !inTable || strings.HasPrefix(first, "---") {
				continue
			}
			key := strings.Trim(first, "`")
			value := strings.Fields(strings.TrimSpace(cells[1]))
			for _, sec := range sections {
				path := []string{key}
				if sec != "" {
					path = []string{sec, key}
				}
				if _, ok := keyField(path...); !ok {
					t.Errorf("%s\n\tconfiguration key %s does not exist", d.where(i+1), strings.Join(path, "."))
					continue
				}
				if len(value) > 0 {
					checkDefault(d.where(i+1), sec, key, value[0])
				}
			}
		}
	}
	if keys < 20 || values < 15 {
		t.Fatalf("found %d keys and %d defaults in the docs: the parsing is broken", keys, values)
	}
}

// commentedKey is a key an example leaves commented out: "# tls:", or
// "  # tail_rotate_wait: 5s" (one space after the #, then the key).
var commentedKey = regexp.MustCompile(`^(\s*)# ([a-z_]+:.*)$`)

// uncomment returns the example with its commented-out keys (and the
// lines under them, commented at the same column) made keys.
func uncomment(lines []string) string {
	var out []string
	col := -1 // the # column of the block being uncommented
	for _, l := range lines {
		if m := commentedKey.FindStringSubmatch(l); m != nil {
			col = len(m[1])
			out = append(out, m[1]+m[2])
			continue
		}
		if col >= 0 && strings.HasPrefix(l, strings.Repeat(" ", col)+"#  ") {
			out = append(out, strings.Repeat(" ", col)+l[col+2:])
			continue
		}
		if !strings.HasPrefix(strings.TrimSpace(l), "#") {
			col = -1
		}
		out = append(out, l)
	}
	return strings.Join(out, "\n")
}

// TestExampleConfigs: in every example configuration (each passes
// `freeway config check`: TestConfigCheck) the keys it leaves commented
// out exist too, and the values of its keys, commented out or not, are
// the defaults, as it says ("runs on the defaults shown here"); only its
// apps, categories, tls, auth and tail are examples.
func TestExampleConfigs(t *testing.T) {
	for _, d := range exampleDocs(t) {
		path := filepath.Join(repoRoot, d.name)
		commented, err := decodeStrict(d.name+" (its commented keys uncommented)", uncomment(d.lines))
		if err != nil {
			t.Errorf("%s: a commented-out key: %v", d.name, err)
		}
		cfg, err := freeway.LoadFile(path) // as freeway config check does (TestConfigCheck)
		if err != nil {
			t.Errorf("%s: %v", d.name, err)
			continue
		}
		// A key left commented out shows its default too, but for the
		// sections that are examples (tls, auth, the files to tail).
		commented.TLS, commented.Auth, commented.Agent.Tail = cfg.TLS, cfg.Auth, cfg.Agent.Tail
		commented.Apps, commented.Categories = cfg.Apps, cfg.Categories
		for _, diff := range diffKeys(reflect.ValueOf(commented), reflect.ValueOf(cfg), "") {
			t.Errorf("%s: a key left commented out: %s", d.name, diff)
		}
		def := freeway.DefaultConfig()
		cfg.Apps, cfg.Categories = def.Apps, def.Categories
		for _, diff := range diffKeys(reflect.ValueOf(cfg), reflect.ValueOf(def), "") {
			t.Errorf("%s: %s: the example shows the defaults", d.name, diff)
		}
	}
}

// configKeys lists the YAML keys of typ as paths: agent.listen,
// categories.*.buckets, apps[].aggregates[].fn. With data (the decoded
// YAML of a file), only the keys the file sets.
func configKeys(typ reflect.Type, data any, path string, out map[string]bool) {
	for typ.Kind() == reflect.Pointer {
		typ = typ.Elem()
	}
	switch typ.Kind() {
	case reflect.Struct:
		m, isMap := data.(map[string]any)
		if data != nil && !isMap {
			return
		}
		for i := range typ.NumField() {
			f := typ.Field(i)
			tag, opts, _ := strings.Cut(f.Tag.Get("yaml"), ",")
			if tag == "" && strings.Contains(opts, "inline") {
				configKeys(f.Type, data, path, out)
				continue
			}
			if tag == "" || tag == "-" || strings.HasPrefix(f.Name, "Old") {
				continue // not a key, or a replaced one kept only to say so
			}
			p := strings.TrimPrefix(path+"."+tag, ".")
			if data == nil {
				out[p] = true
				configKeys(f.Type, nil, p, out)
			} else if v, ok := m[tag]; ok {
				out[p] = true
				configKeys(f.Type, v, p, out)
			}
		}
	case reflect.Slice:
		if list, ok := data.([]any); ok {
			for _, e := range list {
				configKeys(typ.Elem(), e, path+"[]", out)
			}
		} else if data == nil {
			configKeys(typ.Elem(), nil, path+"[]", out)
		}
	case reflect.Map:
		if m, ok := data.(map[string]any); ok {
			for _, e := range m {
				configKeys(typ.Elem(), e, path+".*", out)
			}
		} else if data == nil {
			configKeys(typ.Elem(), nil, path+".*", out)
		}
	}
}

// TestExampleConfigShowsEveryKey: examples/freeway.yaml shows every
// configuration key, set or commented out (CONTRIBUTING: a key added
// goes in the README and the example), so that an operator finds each
// one there with its default.
func TestExampleConfigShowsEveryKey(t *testing.T) {
	d := readDoc(t, "examples/freeway.yaml")
	var data any
	if err := yaml.Unmarshal([]byte(uncomment(d.lines)), &data); err != nil {
		t.Fatal(err)
	}
	every, shown := map[string]bool{}, map[string]bool{}
	configKeys(reflect.TypeOf(freeway.Config{}), nil, "", every)
	configKeys(reflect.TypeOf(freeway.Config{}), data, "", shown)
	if len(every) < 80 || len(shown) < 40 {
		t.Fatalf("%d keys in the configuration, %d in the example: the walk is broken", len(every), len(shown))
	}
	for _, k := range sortedKeys(every) {
		if !shown[k] {
			t.Errorf("%s does not show the key %s", d.name, k)
		}
	}
}

// diffKeys names the YAML keys whose values differ between got and
// want, two values of one struct type.
func diffKeys(got, want reflect.Value, path string) []string {
	if got.Kind() != reflect.Struct {
		empty := func(v reflect.Value) bool {
			return (v.Kind() == reflect.Slice || v.Kind() == reflect.Map) && v.Len() == 0
		}
		if reflect.DeepEqual(got.Interface(), want.Interface()) || empty(got) && empty(want) {
			return nil // categories: [] shows the default, none
		}
		return []string{fmt.Sprintf("%s is %v, the default %v", path, got.Interface(), want.Interface())}
	}
	var out []string
	for i := range got.NumField() {
		f := got.Type().Field(i)
		tag, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
		p := path
		if tag != "" {
			p = strings.TrimPrefix(path+"."+tag, ".")
		}
		out = append(out, diffKeys(got.Field(i), want.Field(i), p)...)
	}
	return out
}

// ---- Command lines ----

// shellWords splits a command line as a shell would, for the simple
// lines docs hold: quotes, no expansion; it stops at a comment or a
// shell operator.
func shellWords(line string) []string {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for _, r := range line {
		switch {
		case quote != 0:
			if r == quote {
				quote = 0
			} else {
				cur.WriteRune(r)
			}
		case r == '\'' || r == '"':
			quote, inWord = r, true
		case r == ' ' || r == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		case r == '#' && !inWord:
			return words
		default:
			cur.WriteRune(r)
			inWord = true
		}
	}
	if inWord {
		words = append(words, cur.String())
	}
	for i, w := range words {
		if w == "&&" || w == ";" || w == "|" || w == ">" || w == "&" || strings.HasPrefix(w, ">") || strings.HasPrefix(w, "2>") {
			return words[:i]
		}
	}
	return words
}

// freewayCommand returns the arguments of a doc's freeway command line
// (freeway, bin/freeway, go run ./cmd/freeway, after a "$ " prompt), or
// false.
func freewayCommand(line string) ([]string, bool) {
	line = strings.TrimPrefix(strings.TrimSpace(line), "$ ")
	words := shellWords(line)
	switch {
	case len(words) >= 1 && (words[0] == "freeway" || words[0] == "bin/freeway"):
		return words[1:], true
	case len(words) >= 3 && words[0] == "go" && words[1] == "run" && words[2] == "./cmd/freeway":
		return words[3:], true
	}
	return nil, false
}

// parseCommand parses args as the freeway command would, without
// running it: the subcommand, its flags and their values, its
// arguments (but for an inline command that gives none).
func parseCommand(args []string, inline bool) error {
	cmd, rest, err := newRoot().Find(args)
	if err != nil {
		return err
	}
	cmd.InitDefaultHelpFlag()
	if err := cmd.ParseFlags(rest); err != nil {
		return err
	}
	if inline && len(cmd.Flags().Args()) == 0 {
		return nil // prose may name a command without its arguments
	}
	return cmd.ValidateArgs(cmd.Flags().Args())
}

// isTemplate reports whether a command line is a template (freeway
// <target> <flags> --help, freeway [command]) rather than one to type.
func isTemplate(args []string) bool {
	return slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "<") || strings.HasPrefix(a, "[") })
}

// alternatives expands a doc's "agent|calligraphus|puma" subcommand into
// one command line each.
func alternatives(args []string) [][]string {
	if len(args) > 0 && strings.Contains(args[0], "|") && !strings.HasPrefix(args[0], "-") {
		var out [][]string
		for _, a := range strings.Split(args[0], "|") {
			out = append(out, append([]string{a}, args[1:]...))
		}
		return out
	}
	return [][]string{args}
}

// foreignFlags are flags docs name in prose that are another program's.
var foreignFlags = map[string]string{"--profile": "docker compose"}

// TestDocsCommandLinesParse: every freeway command line of a doc (in a
// shell block, as a prompt's output header, or inline) names a
// subcommand and flags that exist, with values they take; every flag
// named alone in prose (`--data-dir`) is a flag of some subcommand.
func TestDocsCommandLinesParse(t *testing.T) {
	var every []*cobra.Command
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		every = append(every, c)
		for _, s := range c.Commands() {
			walk(s)
		}
	}
	walk(newRoot())
	isFlag := func(name string) bool {
		for _, c := range every {
			if c.Flags().Lookup(name) != nil {
				return true
			}
		}
		return false
	}
	commands, flags := 0, 0
	docs := markdownDocs(t)
	for _, d := range docs {
		var pending string // a line continued with a backslash
		pendingLine := 0
		for _, s := range spans(d) {
			text := s.text
			if s.fenced {
				if pending != "" {
					text, s.line = pending+" "+text, pendingLine
					pending = ""
				}
				if strings.HasSuffix(strings.TrimSpace(text), "\\") {
					pending, pendingLine = strings.TrimSuffix(strings.TrimSpace(text), "\\"), s.line
					continue
				}
				if s.lang != "sh" && !strings.HasPrefix(strings.TrimSpace(text), "$ ") {
					continue
				}
			}
			if args, ok := freewayCommand(text); ok {
				if isTemplate(args) {
					continue
				}
				for _, a := range alternatives(args) {
					commands++
					if err := parseCommand(a, !s.fenced); err != nil {
						t.Errorf("%s\n\tfreeway %s: %v", d.where(s.line), strings.Join(a, " "), err)
					}
				}
				continue
			}
			if s.fenced || !strings.HasPrefix(text, "--") {
				continue
			}
			words := strings.Fields(text)
			name, _, _ := strings.Cut(strings.TrimPrefix(words[0], "--"), "=")
			if _, ok := foreignFlags["--"+name]; ok {
				continue
			}
			flags++
			if !isFlag(name) {
				t.Errorf("%s\n\t--%s is a flag of no freeway subcommand", d.where(s.line), name)
				continue
			}
			if len(words) > 1 || strings.Contains(words[0], "=") {
				parsed := false
				for _, c := range every {
					if c.Flags().Lookup(name) != nil && c.ParseFlags(words) == nil {
						parsed = true
					}
				}
				if !parsed {
					t.Errorf("%s\n\t%s: no freeway subcommand takes it so", d.where(s.line), text)
				}
			}
		}
	}
	// The help texts name flags too: each is one of the command's own
	// or of another subcommand (--dfs-retention in the copier's help);
	// and their examples are command lines.
	for _, d := range helpDocs(t) {
		for i, l := range d.lines {
			if args, ok := freewayCommand(l); ok && strings.HasPrefix(l, "  freeway ") && !isTemplate(args) {
				commands++
				if err := parseCommand(args, false); err != nil {
					t.Errorf("%s\n\tfreeway %s: %v", d.where(i+1), strings.Join(args, " "), err)
				}
				continue
			}
			for _, m := range regexp.MustCompile(`(?:^|[\s(])--([a-z][a-z0-9.-]*[a-z0-9])`).FindAllStringSubmatch(l, -1) {
				flags++
				if !isFlag(m[1]) && m[1] != "help" {
					t.Errorf("%s\n\t--%s is a flag of no freeway subcommand", d.where(i+1), m[1])
				}
			}
		}
	}
	if commands < 20 || flags < 40 {
		t.Fatalf("found %d command lines and %d flags in the docs: the parsing is broken", commands, flags)
	}
}

// ---- HTTP paths ----

var (
	// httpPath is a path of Freeway's HTTP ports a doc names; a
	// filesystem path (/etc/freeway) is none of these.
	httpPath = regexp.MustCompile(`(?:^|[\s(\x60'":,])(/(?:api|admin|internal|debug|healthz|readyz|metrics)\b(?:\{[^}]*\}|[^\s\x60'"),;{])*)`)
	// localURL is a URL of a local Freeway (the dashboard, curl).
	localURL = regexp.MustCompile(`https?://(?:127\.0\.0\.1|localhost)(?::[0-9]+)?(/[^\s\x60'")]*)?`)
	// method is the method a doc gives before a path.
	method = regexp.MustCompile(`\b(GET|POST|HEAD)\s+$`)
)

type pathRef struct {
	method, path string
	// params are the query parameters the doc gives the path.
	params []string
}

// queryParam is a parameter of a query string: ?app=...&window=...,
// or [&limit=N] in a doc's synopsis.
var queryParam = regexp.MustCompile(`[?&]([a-z_]+)=`)

// pathRefs returns the HTTP paths a doc line names, expanded:
// /api/v1/{apps,query} and /admin/reload|shutdown name two each; a
// path ending in * names a prefix (left out: any path under it would
// do).
func pathRefs(line string) []pathRef {
	var out []pathRef
	add := func(start int, p string) {
		meth := "GET"
		if m := method.FindStringSubmatch(line[:start]); m != nil {
			meth = m[1]
		}
		p, _, _ = strings.Cut(p, "#")
		p, query, _ := strings.Cut(p, "?")
		var params []string
		for _, m := range queryParam.FindAllStringSubmatch("?"+query, -1) {
			params = append(params, m[1])
		}
		p = strings.TrimRight(p, ".:")
		if p == "" {
			p = "/"
		}
		if strings.HasSuffix(p, "*") {
			return
		}
		if strings.HasPrefix(p, "/admin/") {
			meth = "POST" // the admin endpoints take nothing else
		}
		var paths []string
		if i, j := strings.Index(p, "{"), strings.Index(p, "}"); i >= 0 && j > i {
			for _, alt := range strings.Split(p[i+1:j], ",") {
				paths = append(paths, p[:i]+alt+p[j+1:])
			}
		} else if strings.Contains(p, "|") {
			dir, last := p[:strings.LastIndex(p, "/")+1], p[strings.LastIndex(p, "/")+1:]
			for _, alt := range strings.Split(last, "|") {
				paths = append(paths, dir+alt)
			}
		} else {
			paths = []string{p}
		}
		for _, p := range paths {
			out = append(out, pathRef{meth, p, params})
		}
	}
	for _, m := range localURL.FindAllStringSubmatchIndex(line, -1) {
		if m[2] < 0 {
			add(m[0], "/")
		} else {
			add(m[0], line[m[2]:m[3]])
		}
	}
	for _, m := range httpPath.FindAllStringSubmatchIndex(line, -1) {
		if strings.HasSuffix(line[:m[2]], "8080") || strings.Contains(line[max(0, m[2]-30):m[2]], "://") {
			continue // in a URL, above
		}
		add(m[2], line[m[2]:m[3]])
	}
	return out
}

// TestDocsNameServedPaths: every HTTP path a doc names is served by the
// serving port (and so by the admin port, the same routes but the API's)
// or by a Puma node's puma.listen.
func TestDocsNameServedPaths(t *testing.T) {
	cfg := freeway.DefaultConfig()
	cfg.DataDir = t.TempDir()
	cfg.Serving.Listen, cfg.Serving.ThriftListen = "127.0.0.1:0", ""
	cfg.Serving.Pprof = true
	cfg.Agent.Listen, cfg.Calligraphus.Listen, cfg.Puma.Listen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	p, err := freeway.New(cfg, freeway.All, freeway.Options{Reinitialize: func() {}, Shutdown: func() {}})
	if err != nil {
		t.Fatal(err)
	}
	defer p.Close()
	handlers := []http.Handler{p.Serving.Handler(), p.Puma.Handler()}
	served := func(r pathRef) (int, bool) {
		code := 0
		for _, h := range handlers {
			rec := httptest.NewRecorder()
			req := httptest.NewRequest(r.method, r.path, bytes.NewReader(nil))
			if r.path == "/debug/pprof/profile" || r.path == "/debug/pprof/trace" {
				req = httptest.NewRequest(r.method, r.path+"?seconds=0", nil)
			}
			h.ServeHTTP(rec, req)
			code = rec.Code
			if code != http.StatusNotFound && code != http.StatusMethodNotAllowed {
				return code, true
			}
		}
		return code, false
	}
	// The parameters of each path, as the OpenAPI document (held to
	// the handlers by serving's TestOpenAPI) gives them.
	var api struct {
		Paths map[string]map[string]struct {
			Parameters []struct{ Name string } `json:"parameters"`
		} `json:"paths"`
	}
	b, err := os.ReadFile(filepath.Join(repoRoot, "serving", "openapi.json"))
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(b, &api); err != nil {
		t.Fatal(err)
	}
	takes := func(r pathRef, param string) bool {
		op, ok := api.Paths[r.path][strings.ToLower(r.method)]
		return ok && slices.ContainsFunc(op.Parameters, func(p struct{ Name string }) bool { return p.Name == param })
	}
	if _, ok := served(pathRef{"GET", "/api/v1/no-such-path", nil}); ok {
		t.Fatal("a path that is not served is taken as served: the check is broken")
	}
	n := 0
	docs := append(append(markdownDocs(t), exampleDocs(t)...), helpDocs(t)...)
	for _, d := range docs {
		for i, l := range d.lines {
			for _, r := range pathRefs(l) {
				n++
				if code, ok := served(r); !ok {
					t.Errorf("%s\n\t%s %s is not served (%d)", d.where(i+1), r.method, r.path, code)
				}
				for _, p := range r.params {
					if !takes(r, p) {
						t.Errorf("%s\n\t%s %s takes no parameter %s (serving/openapi.json)", d.where(i+1), r.method, r.path, p)
					}
				}
			}
		}
	}
	if n < 20 {
		t.Fatalf("found %d paths in the docs: the parsing is broken", n)
	}
}
