package config

import (
	"errors"
	"strings"
	"testing"
)

type inner struct {
	Fn    string   `yaml:"fn"`
	Every Duration `yaml:"every"`
}

type doc struct {
	Name  string   `yaml:"name"`
	Size  ByteSize `yaml:"size"`
	Items []inner  `yaml:"items"`
}

func decode(t *testing.T, src string, validate func(d *doc) error) (*doc, *Error) {
	t.Helper()
	d := &doc{Name: "default"}
	err := Decode("test.yaml", []byte(src), d, func() error {
		if validate == nil {
			return nil
		}
		return validate(d)
	})
	if err == nil {
		return d, nil
	}
	var ce *Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %T is not a *config.Error: %v", err, err)
	}
	return d, ce
}

func TestDecodeKeepsDefaults(t *testing.T) {
	d, err := decode(t, "size: 16MiB\nitems:\n  - {fn: count, every: 7d}\n", nil)
	if err != nil {
		t.Fatal(err)
	}
	if d.Name != "default" || d.Size != 16<<20 || len(d.Items) != 1 || d.Items[0].Every.D().Hours() != 168 {
		t.Fatalf("decoded %+v", d)
	}
}

func TestErrorsCarryPosition(t *testing.T) {
	cases := []struct {
		name, src  string
		validate   func(d *doc) error
		line, col  int
		msgContain string
	}{
		{"unknown key", "name: x\nitems:\n  - fn: count\n    colour: red\n", nil, 4, 5, "unknown key"},
		{"syntax", "name: x\nitems: [a, b\n", nil, 2, 0, ""},
		{"bad duration", "items:\n  - every: 7 days\n", nil, 2, 0, "duration"},
		{"bad size", "size: lots\n", nil, 1, 0, "size"},
		{"wrong type", "items: 3\n", nil, 1, 0, ""},
		{"validation", "name: x\nitems:\n  - fn: count\n  - fn: cnt\n", func(d *doc) error {
			return Errorf("$.items[1].fn", "unknown function %q", d.Items[1].Fn)
		}, 4, 9, `items[1].fn: unknown function "cnt"`},
		{"tag where a list is expected", "name: x\nitems: !x 1\n", nil, 2, 8, "tags (!x) are not supported"},
		{"alias of no anchor", "name: x\nitems:\n  - fn: *f\n", nil, 3, 9, "alias *f names no anchor"},
		{"mixed line breaks", "# c\r\n# d\rname: x\r\nsize: lots\n", nil, 4, 7, "invalid size"},
		{"validation of a missing key points at the parent", "name: x\nitems:\n  - fn: count\n", func(d *doc) error {
			return Errorf("$.items[0].every", "every is required")
		}, 3, 0, "every is required"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			_, err := decode(t, tc.src, tc.validate)
			if err == nil {
				t.Fatal("no error")
			}
			if err.File != "test.yaml" || err.Line != tc.line || (tc.col != 0 && err.Column != tc.col) {
				t.Fatalf("position %s:%d:%d, want line %d col %d; error:\n%v", err.File, err.Line, err.Column, tc.line, tc.col, err)
			}
			if !strings.Contains(err.Error(), tc.msgContain) {
				t.Fatalf("message %q lacks %q", err.Error(), tc.msgContain)
			}
			if !strings.HasPrefix(err.Error(), "test.yaml:") {
				t.Fatalf("message does not start with the file: %q", err.Error())
			}
			t.Logf("%v", err)
		})
	}
}

func TestEmptyFile(t *testing.T) {
	for _, src := range []string{"  \n", "# nothing but a comment\n", "---\n"} {
		if _, err := decode(t, src, nil); err == nil || !strings.Contains(err.Msg, "empty") {
			t.Fatalf("empty file %q: %v", src, err)
		}
	}
}

func TestKey(t *testing.T) {
	for key, want := range map[string]string{
		"access": "$.c.access", "a_b-9": "$.c.a_b-9", "web.v2": "$.c.'web.v2'", "0[0": "$.c.'0[0'",
		"it's": `$.c.'it\'s'`, `a\b`: `$.c.'a\\b'`, "": "$.c.''",
	} {
		if got := Key("$.c", key); got != want {
			t.Errorf("Key(%q) = %s, want %s", key, got, want)
		}
	}
}

func TestUnder(t *testing.T) {
	err := Under("$.agent", errors.Join(
		Errorf("batch_bytes", "too big"),
		Errorf("tail[0].path", "must be set"),
		&FieldError{Path: "", Msg: "whole section", Also: []string{"max_call_bytes", "$.max_inflight_bytes"}},
		Errorf("$.tls.cert_file", "already absolute"),
		errors.New("not a field error"),
	))
	var got []string
	for _, e := range err.(interface{ Unwrap() []error }).Unwrap() {
		var fe *FieldError
		if errors.As(e, &fe) {
			got = append(got, fe.Path+" "+strings.Join(fe.Also, ","))
		} else {
			got = append(got, e.Error())
		}
	}
	want := []string{"$.agent.batch_bytes ", "$.agent.tail[0].path ", "$.agent $.agent.max_call_bytes,$.max_inflight_bytes", "$.tls.cert_file ", "not a field error"}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("Under = %q, want %q", got, want)
	}
	if Under("$.x", nil) != nil {
		t.Fatal("Under(nil) is not nil")
	}
	if fe := Under("$.serving", Errorf("listen", "must not be empty")).(*FieldError); fe.Error() != "serving.listen: must not be empty" {
		t.Fatalf("single: %v", fe)
	}
}

type typed struct {
	On    bool     `yaml:"on"`
	Count int      `yaml:"count"`
	List  []string `yaml:"list"`
	Sect  struct {
		Flag bool `yaml:"flag"`
	} `yaml:"sect"`
}

// TestTypeErrorsSayWhatIsWanted: a value of the wrong type is refused
// with what the key wants and what was written, not with Go's type and
// field names (go-yaml named a section's key by the section's Go field:
// "Go struct field typed.Sect of type bool" for sect.flag).
func TestTypeErrorsSayWhatIsWanted(t *testing.T) {
	for src, want := range map[string]string{
		"count: four\n":                  `want a whole number, not "four"`,
		"on: maybe\n":                    `want true or false, not "maybe"`,
		"sect:\n  flag: maybe\n":         `want true or false, not "maybe"`,
		"list: a\n":                      `want a list ("- item" lines or [a, b]), not "a"`,
		"sect: 5\n":                      `want a section of keys, not "5"`,
		"count: [1]\n":                   `want a whole number, not a list`,
		"count: 100000000000000000000\n": `100000000000000000000 is out of range`,
	} {
		err := Decode("test.yaml", []byte(src), &typed{}, nil)
		var ce *Error
		if !errors.As(err, &ce) || ce.Line == 0 || ce.Msg != want {
			t.Errorf("%q: %v, want the message %q at a position", src, err, want)
		}
	}
}

// TestSourceMarksTheLine: the lines shown end with the one at fault,
// numbered once each, and the marker stands under its column, also for
// an error whose token runs over several lines (go-yaml drew the marker
// under a later line there).
func TestSourceMarksTheLine(t *testing.T) {
	for _, c := range []struct{ src, want string }{
		{"name: x\nitems:\n  - fn: \"count\n    every: 1s\n",
			"   1 | name: x\n   2 | items:\n>  3 |   - fn: \"count\n               ^"},
		{"items:\n  - fn: a\n   every: 1s\n  - fn: b\n",
			"   1 | items:\n   2 |   - fn: a\n>  3 |    every: 1s\n          ^"},
		{"name: x\nsize: 1\nitems:\n  - fn: a\n  - fn: b\n    colour: red\n",
			"   3 | items:\n   4 |   - fn: a\n   5 |   - fn: b\n>  6 |     colour: red\n           ^"},
		{"name: x\n\tsize: 1\n",
			"   1 | name: x\n>  2 | \tsize: 1\n       ^"},
	} {
		_, err := decode(t, c.src, nil)
		if err == nil || err.Source != c.want {
			t.Errorf("%q:\n%v\nwant the source\n%s", c.src, err, c.want)
		}
	}
}

type Port struct {
	MaxConns int `yaml:"max_conns"`
}

type wholes struct {
	Port     `yaml:",inline"`
	N        int              `yaml:"n"`
	Ns       []uint           `yaml:"ns"`
	ByName   map[string]int64 `yaml:"by_name"`
	Ratio    float64          `yaml:"ratio"`
	Size     ByteSize         `yaml:"size"`
	Sections []struct {
		K *int `yaml:"k"`
	} `yaml:"sections"`
}

// TestFractionWhereAWholeNumberIs: go-yaml dropped the fraction of a
// number decoded into an integer ("buckets: 2.9" ran with 2 buckets);
// it is refused at the number, wherever it is, and a whole number
// written as a float, or a fraction where one fits, is taken.
func TestFractionWhereAWholeNumberIs(t *testing.T) {
	for src, col := range map[string]int{
		"n: 2.9\n":                 4,
		"ns: [1, 2.5]\n":           9,
		"by_name: {a: 0.5}\n":      14,
		"max_conns: 10.5\n":        12,
		"sections:\n  - k: 1.25\n": 8,
		"n: &x 1.5\n":              7,
	} {
		err := Decode("test.yaml", []byte(src), &wholes{}, nil)
		var ce *Error
		if !errors.As(err, &ce) || ce.Column != col || !strings.HasPrefix(ce.Msg, "want a whole number, not ") {
			t.Errorf("%q: %v, want a whole number at column %d", src, err, col)
		}
	}
	var w wholes
	if err := Decode("test.yaml", []byte("n: 1e3\nns: [2.0]\nratio: 0.5\nsize: 1.5KiB\nmax_conns: 3\n"), &w, nil); err != nil || w.N != 1000 || w.Ns[0] != 2 || w.Ratio != 0.5 || w.Size != 1536 || w.MaxConns != 3 {
		t.Fatalf("decoded %+v, %v", w, err)
	}
}

// TestUnknownKeyNamesTheKeyMeant: an unknown key is told with the key of
// its section it is closest to, or, none being close, the section's keys
// (only "unknown key" before, with nothing on what the section holds).
func TestUnknownKeyNamesTheKeyMeant(t *testing.T) {
	for src, want := range map[string]string{
		"nam: x\n":                          `unknown key "nam" (did you mean name?)`,
		"items:\n  - fn: a\n    evry: 1s\n": `unknown key "evry" (did you mean every?)`,
		"colour: red\n":                     `unknown key "colour" (want one of items, name, size)`,
		"flavour: 3\n":                      `unknown key "flavour" (want one of by_name, max_conns, n, ns, ratio, sections, size)`,
		"sections:\n  - {kk: 1}\n":          `unknown key "kk" (did you mean k?)`,
	} {
		var err error
		if strings.Contains(src, "flavour") || strings.Contains(src, "sections") {
			err = Decode("test.yaml", []byte(src), &wholes{}, nil)
		} else {
			err = Decode("test.yaml", []byte(src), &doc{}, nil)
		}
		var ce *Error
		if !errors.As(err, &ce) || ce.Line == 0 || ce.Msg != want {
			t.Errorf("%q: %v, want %s", src, err, want)
		}
	}
}

// TestByteOrderMarkAndSecondDocument: a byte order mark before the first
// key is no part of it ("unknown key \"\ufeffname\"" before), and a
// second document is refused where it starts, not ignored (its keys
// were silently dropped).
func TestByteOrderMarkAndSecondDocument(t *testing.T) {
	d, err := decode(t, "\ufeffname: x\n", nil)
	if err != nil || d.Name != "x" {
		t.Fatalf("with a byte order mark: %+v, %v", d, err)
	}
	_, err = decode(t, "name: x\n---\nsize: 1KiB\n", nil)
	if err == nil || err.Line != 2 || err.Column != 1 || !strings.Contains(err.Msg, "second YAML document") {
		t.Fatalf("a second document: %v, want it refused at line 2", err)
	}
	// A start marker, comments or an empty document after it are one
	// document still.
	for _, src := range []string{"---\nname: x\n", "# c\n---\nname: x\n", "name: x\n---\n", "name: x\n---\n# c\n", "name: x\n...\n"} {
		if d, err := decode(t, src, nil); err != nil || d.Name != "x" {
			t.Errorf("%q: %+v, %v", src, d, err)
		}
	}
}
