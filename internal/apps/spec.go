package apps

import (
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/freeway-dev/freeway/internal/agg"
	"github.com/freeway-dev/freeway/internal/config"
)

// Spec is one app as declared in YAML.
type Spec struct {
	Name      string    `yaml:"name"`
	Category  string    `yaml:"category"`
	Format    string    `yaml:"format"`
	Pattern   string    `yaml:"pattern"`   // regex: named groups are fields
	Fields    []string  `yaml:"fields"`    // tsv: column names
	Separator string    `yaml:"separator"` // tsv: default tab
	Time      *TimeSpec `yaml:"time"`
	// Window is the length of the app's tumbling windows; Windows lists
	// several (each aggregated on its own, queries pick one or roll finer
	// ones up). One or the other: window is the one-window form.
	Window  config.Duration   `yaml:"window"`
	Windows []config.Duration `yaml:"windows"`
	// AllowedLateness: records older than the app's watermark (the highest
	// event time seen) minus this are counted as late and not aggregated.
	// At most retention. Default: 1h, or retention if shorter.
	AllowedLateness config.Duration `yaml:"allowed_lateness"`
	// Retention: windows that end before watermark - retention are dropped
	// from memory and from the store.
	Retention  config.Duration `yaml:"retention"`
	ShardKey   []string        `yaml:"shard_key"`
	Where      string          `yaml:"where"`
	GroupBy    []string        `yaml:"group_by"`
	Aggregates []AggregateSpec `yaml:"aggregates"`
	// MaxFuture: a record whose event time is more than this ahead of its
	// arrival time (or of Puma's clock, if the arrival time is later) is
	// rejected, so that one bad clock or a value in the wrong unit cannot
	// move the watermark. At most allowed_lateness (so that a record
	// accepted at the limit makes no record of its own arrival time late)
	// and less than retention. Default: 1h, or allowed_lateness or half the
	// retention if shorter.
	MaxFuture config.Duration `yaml:"max_future"`
	// MaxCells bounds the app's cells (window × group key, one per window
	// length) in the memory of one Puma node, over its shards: beyond it
	// a line that would create a new cell is refused (counted as
	// max_cells), existing cells keep aggregating. 0, the default: no
	// bound of its own (puma.max_cells and puma.memory_limit still hold).
	MaxCells int `yaml:"max_cells"`
}

// TimeSpec says where a record's event time is.
type TimeSpec struct {
	Field string `yaml:"field"`
	// Layout: unix, unix_ms, unix_us, unix_ns, rfc3339, or a Go time
	// layout such as "02/Jan/2006:15:04:05 -0700".
	Layout string `yaml:"layout"`
}

// AggregateSpec is one aggregate of an app.
type AggregateSpec struct {
	Name  string `yaml:"name"`
	Fn    string `yaml:"fn"`
	Field string `yaml:"field"`
	// K: topk, how many values to answer (default 10, at most 100).
	K int `yaml:"k"`
	// Quantiles: percentile, the quantiles to answer (default 0.5, 0.9,
	// 0.99).
	Quantiles []float64 `yaml:"quantiles"`
}

// Params are the aggregate's parameters.
func (a AggregateSpec) Params() agg.Params { return agg.Params{K: a.K, Quantiles: a.Quantiles} }

// Defaults for keys an app leaves out.
const (
	DefaultWindow          = time.Minute
	DefaultAllowedLateness = time.Hour
	DefaultRetention       = 7 * 24 * time.Hour
	DefaultMaxFuture       = time.Hour
)

// MaxWindows bounds the windows of one app: a line is aggregated into
// each of them.
const MaxWindows = 8

// Fn describes an aggregate function: the registry's (internal/agg), which
// Puma's tables, checkpoints and query merges use too.
type Fn = agg.Func

// LookupFn returns the aggregate function called name.
func LookupFn(name string) (*Fn, bool) { return agg.Lookup(name) }

// FnNames lists the aggregate functions, sorted.
func FnNames() []string { return agg.Names() }

// Formats are the record formats apps may use.
var formats = []string{"json", "logfmt", "regex", "tsv"}

func errAt(path, format string, args ...any) error {
	return config.Errorf(path, format, args...)
}

var nameRE = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]*$`)

// SetDefaults fills the keys an app left out.
func (s *Spec) SetDefaults() {
	if s.Format == "" {
		s.Format = "json"
	}
	if s.Window == 0 && len(s.Windows) == 0 {
		s.Window = config.Duration(DefaultWindow)
	}
	if s.Retention == 0 {
		s.Retention = config.Duration(DefaultRetention)
	}
	if s.AllowedLateness == 0 {
		// Within retention (see Validate).
		s.AllowedLateness = config.Duration(min(DefaultAllowedLateness, s.Retention.D()))
	}
	if s.MaxFuture == 0 {
		// The default never makes a valid app invalid: it stays within
		// allowed_lateness and below retention (see Validate).
		s.MaxFuture = config.Duration(max(min(DefaultMaxFuture, s.AllowedLateness.D(), s.Retention.D()/2), time.Millisecond))
	}
	if s.Format == "tsv" && s.Separator == "" {
		s.Separator = "\t"
	}
	for i := range s.Aggregates {
		a := &s.Aggregates[i]
		if a.Name == "" {
			a.Name = a.Fn
			if a.Field != "" {
				a.Name += "_" + a.Field
			}
		}
		if fn, ok := agg.Lookup(a.Fn); ok {
			p := a.Params()
			fn.Defaults(&p)
			a.K, a.Quantiles = p.K, p.Quantiles
		}
	}
}

// WindowList is the app's window lengths, shortest first: window, or
// windows.
func (s *Spec) WindowList() []config.Duration {
	if len(s.Windows) == 0 {
		return []config.Duration{s.Window}
	}
	ws := slices.Clone(s.Windows)
	slices.Sort(ws)
	return ws
}

// checkWindow checks one window length.
func checkWindow(path string, w config.Duration) error {
	if w.D() < time.Second || w.D()%time.Second != 0 {
		return errAt(path, "must be a whole number of seconds, at least 1s")
	}
	if w.D() > 24*time.Hour && w.D()%(24*time.Hour) != 0 {
		return errAt(path, "windows over a day must be whole days")
	}
	return nil
}

// Validate checks one app; path is its YAML path ("$.apps[0]").
func (s *Spec) Validate(path string) error {
	if s.Name == "" {
		return errAt(path, "name is required")
	}
	if !nameRE.MatchString(s.Name) {
		return errAt(path+".name", "%q is not a valid app name (letters, digits, _ . -)", s.Name)
	}
	// Any non-empty Scribe category can be consumed: internal/layout
	// encodes it where it needs a name.
	if s.Category == "" {
		return errAt(path, "category is required")
	}
	if !slices.Contains(formats, s.Format) {
		return errAt(path+".format", "unknown format %q (want one of %s)", s.Format, strings.Join(formats, ", "))
	}
	switch s.Format {
	case "regex":
		if s.Pattern == "" {
			return errAt(path, "format regex needs a pattern with named groups")
		}
		re, err := regexp.Compile(s.Pattern)
		if err != nil {
			return errAt(path+".pattern", "%v", err)
		}
		if len(namedGroups(re)) == 0 {
			return errAt(path+".pattern", "the pattern has no named groups (?P<name>...)")
		}
	case "tsv":
		if len(s.Fields) == 0 {
			return errAt(path, "format tsv needs fields: the column names")
		}
	}
	if s.Pattern != "" && s.Format != "regex" {
		return errAt(path+".pattern", "pattern is only for format regex")
	}
	if len(s.Fields) > 0 && s.Format != "tsv" {
		return errAt(path+".fields", "fields is only for format tsv")
	}
	if s.Time != nil {
		if s.Time.Field == "" {
			return errAt(path+".time", "time needs a field")
		}
		if _, err := newTimeParser(s.Time.Layout); err != nil {
			return errAt(path+".time.layout", "%v", err)
		}
	}
	if len(s.Windows) > 0 {
		if s.Window != 0 {
			return errAt(path+".window", "give window (one) or windows (a list), not both")
		}
		if len(s.Windows) > MaxWindows {
			return errAt(path+".windows", "at most %d windows", MaxWindows)
		}
		for i, w := range s.Windows {
			wp := fmt.Sprintf("%s.windows[%d]", path, i)
			if err := checkWindow(wp, w); err != nil {
				return err
			}
			if slices.Contains(s.Windows[:i], w) {
				return errAt(wp, "%v appears twice", w)
			}
		}
	} else if err := checkWindow(path+".window", s.Window); err != nil {
		return err
	}
	if s.AllowedLateness < 0 {
		return errAt(path+".allowed_lateness", "must not be negative")
	}
	if ws := s.WindowList(); s.Retention.D() < ws[len(ws)-1].D() {
		return errAt(path+".retention", "must be at least one window (%v)", ws[len(ws)-1])
	}
	// A record accepted max_future ahead of its arrival moves the watermark
	// there: records allowed_lateness behind it become late, and windows
	// retention behind it are dropped.
	switch {
	case s.MaxFuture <= 0:
		return errAt(path+".max_future", "must be positive")
	case s.MaxFuture > s.AllowedLateness:
		return errAt(path+".max_future", "must not exceed allowed_lateness (%v): a record accepted max_future ahead would make the records of its own arrival time late", s.AllowedLateness)
	case s.MaxFuture >= s.Retention:
		return errAt(path+".max_future", "must be less than retention (%v): a record accepted max_future ahead would drop the windows of its own arrival time", s.Retention)
	}
	// Windows that end retention behind the watermark are dropped: a
	// record accepted further behind would open one again, a partial
	// cell where retention deleted the whole one.
	if s.AllowedLateness > s.Retention {
		return errAt(path+".allowed_lateness", "must not exceed retention (%v): a record accepted that late would open again a window retention dropped", s.Retention)
	}
	if s.MaxCells < 0 {
		return errAt(path+".max_cells", "must not be negative (0: no bound of the app's own)")
	}
	seen := map[string]bool{}
	for i, g := range s.GroupBy {
		if g == "" {
			return errAt(fmt.Sprintf("%s.group_by[%d]", path, i), "empty field name")
		}
		if seen[g] {
			return errAt(fmt.Sprintf("%s.group_by[%d]", path, i), "%q appears twice", g)
		}
		seen[g] = true
	}
	for i, k := range s.ShardKey {
		if k == "" {
			return errAt(fmt.Sprintf("%s.shard_key[%d]", path, i), "empty field name")
		}
	}
	if s.Where != "" {
		if _, err := parseWhere(s.Where); err != nil {
			var we *whereError
			if errors.As(err, &we) {
				return &config.FieldError{Path: path + ".where", Msg: we.msg, Column: we.col}
			}
			return errAt(path+".where", "%v", err)
		}
	}
	if len(s.Aggregates) == 0 {
		return errAt(path, "aggregates: at least one is required")
	}
	names := map[string]bool{}
	for i, a := range s.Aggregates {
		ap := fmt.Sprintf("%s.aggregates[%d]", path, i)
		if a.Fn == "" {
			return errAt(ap, "fn is required (one of %s)", strings.Join(FnNames(), ", "))
		}
		fn, ok := LookupFn(a.Fn)
		if !ok {
			return errAt(ap+".fn", "unknown function %q (want one of %s)", a.Fn, strings.Join(FnNames(), ", "))
		}
		if fn.NeedsField && a.Field == "" {
			return errAt(ap, "%s needs a field", a.Fn)
		}
		if field, err := fn.Check(a.Params()); err != nil {
			return errAt(ap+"."+field, "%v", err)
		}
		if !nameRE.MatchString(a.Name) {
			return errAt(ap+".name", "%q is not a valid aggregate name", a.Name)
		}
		if names[a.Name] {
			return errAt(ap+".name", "aggregate name %q is used twice", a.Name)
		}
		names[a.Name] = true
	}
	if n := s.cellBytes(); n > agg.MaxCellBytes {
		return errAt(path+".aggregates", "a cell of these aggregates may take up to %d KiB in a checkpoint, more than the %d KiB one store request carries: split them over two apps, or lower topk's k", n>>10, agg.MaxCellBytes>>10)
	}
	if s.Format == "regex" {
		re := regexp.MustCompile(s.Pattern)
		groups := namedGroups(re)
		for _, f := range s.fieldRefs() {
			if !slices.Contains(groups, f.name) {
				return errAt(path+f.path, "field %q is not a named group of the pattern (groups: %s)", f.name, strings.Join(groups, ", "))
			}
		}
	}
	if s.Format == "tsv" {
		for _, f := range s.fieldRefs() {
			if !slices.Contains(s.Fields, f.name) {
				return errAt(path+f.path, "field %q is not one of the tsv fields (%s)", f.name, strings.Join(s.Fields, ", "))
			}
		}
	}
	return nil
}

// cellBytes bounds the stored size of one cell of the app: 8 bytes a
// fixed slot, the bound of each variable state and its length.
func (s *Spec) cellBytes() int {
	n := 1
	for _, a := range s.Aggregates {
		fn, ok := agg.Lookup(a.Fn)
		if !ok {
			continue
		}
		if fn.Fixed() {
			n += 8 * fn.Slots
			continue
		}
		n += binary.MaxVarintLen32 + fn.New(a.Params()).MaxBytes()
	}
	return n
}

type fieldRef struct {
	name string
	path string // relative YAML path
}

// fieldRefs lists every field the app reads, with where it is named.
func (s *Spec) fieldRefs() []fieldRef {
	var refs []fieldRef
	if s.Time != nil {
		refs = append(refs, fieldRef{s.Time.Field, ".time.field"})
	}
	for i, g := range s.GroupBy {
		refs = append(refs, fieldRef{g, fmt.Sprintf(".group_by[%d]", i)})
	}
	for i, g := range s.ShardKey {
		refs = append(refs, fieldRef{g, fmt.Sprintf(".shard_key[%d]", i)})
	}
	if s.Where != "" {
		if e, err := parseWhere(s.Where); err == nil {
			for _, f := range e.fields(nil) {
				refs = append(refs, fieldRef{f, ".where"})
			}
		}
	}
	for i, a := range s.Aggregates {
		if a.Field != "" {
			refs = append(refs, fieldRef{a.Field, fmt.Sprintf(".aggregates[%d].field", i)})
		}
	}
	return refs
}

func namedGroups(re *regexp.Regexp) []string {
	var out []string
	for _, n := range re.SubexpNames() {
		if n != "" {
			out = append(out, n)
		}
	}
	return out
}
