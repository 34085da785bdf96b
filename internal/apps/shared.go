package apps

import (
	"fmt"
	"slices"
)

// SharedParser parses a line once for several apps of one category that
// read lines alike (ParseGroups), taking the union of the fields they
// use; each app's Extractor then reads its own fields from the record
// (ExtractRecord), as it would from its own parse. Not safe for
// concurrent use.
type SharedParser struct {
	parser parser
	rec    *Record
}

// parseKey says how an app reads a line: apps with equal keys parse it
// alike (a JSON or logfmt line whatever the fields; a regex line by one
// pattern; a TSV line by one separator and column list).
func parseKey(a *App) string {
	switch a.Spec.Format {
	case "regex":
		return fmt.Sprintf("regex %q", a.Spec.Pattern)
	case "tsv":
		return fmt.Sprintf("tsv %q %q", a.Spec.Separator, a.Spec.Fields)
	}
	return a.Spec.Format
}

// ParseGroups groups the indexes of list by how the apps read a line,
// in the order of their first member.
func ParseGroups(list []*App) [][]int {
	var keys []string
	var groups [][]int
	for i, a := range list {
		k := parseKey(a)
		j := slices.Index(keys, k)
		if j < 0 {
			keys, groups = append(keys, k), append(groups, nil)
			j = len(keys) - 1
		}
		groups[j] = append(groups[j], i)
	}
	return groups
}

// NewSharedParser returns a parser for apps of one group of ParseGroups.
func NewSharedParser(list []*App) *SharedParser {
	var fields []string
	for _, a := range list {
		for _, f := range a.fields {
			if !slices.Contains(fields, f) {
				fields = append(fields, f)
			}
		}
	}
	p, err := newParser(&list[0].Spec, fields, true)
	if err != nil {
		panic(fmt.Sprintf("compiled app %s has an invalid parser: %v", list[0].Name(), err))
	}
	return &SharedParser{parser: p, rec: newRecord(fields)}
}

// Parse parses line; the record is valid until the next call, and while
// line is unchanged (its strings may be views of it). The error is
// ErrParse (wrapped), for every app of the group alike.
func (p *SharedParser) Parse(line []byte) (*Record, error) {
	p.rec.reset()
	if err := p.parser.parse(line, p.rec); err != nil {
		return nil, err
	}
	return p.rec, nil
}
