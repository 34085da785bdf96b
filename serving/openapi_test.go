package serving

import (
	"encoding/json"
	"fmt"
	"net/url"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"
)

// openAPIDoc is the part of the OpenAPI document the test reads.
type openAPIDoc struct {
	OpenAPI string `json:"openapi"`
	Paths   map[string]map[string]struct {
		Parameters []struct {
			Name     string `json:"name"`
			In       string `json:"in"`
			Required bool   `json:"required"`
			Explode  *bool  `json:"explode"`
			Schema   struct {
				Type string `json:"type"`
			} `json:"schema"`
			Example any `json:"example"`
		} `json:"parameters"`
	} `json:"paths"`
	Components struct {
		Schemas map[string]struct {
			Properties map[string]json.RawMessage `json:"properties"`
			Required   []string                   `json:"required"`
		} `json:"schemas"`
	} `json:"components"`
}

func readOpenAPI(t *testing.T, b []byte) openAPIDoc {
	t.Helper()
	var doc openAPIDoc
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatalf("openapi.json: %v", err)
	}
	if !strings.HasPrefix(doc.OpenAPI, "3.") {
		t.Fatalf("openapi %q, want 3.x", doc.OpenAPI)
	}
	return doc
}

// docPath is the document's path of a mux pattern's path: a subtree
// ("/ui/") is one path parameter under it.
func docPath(path string) string {
	path = strings.TrimSuffix(path, "{$}")
	if path != "/" && strings.HasSuffix(path, "/") {
		return path + "{asset}"
	}
	return path
}

// TestOpenAPI holds openapi.json to the handlers: every route the mux
// serves is documented and every documented one is served; each
// endpoint's documented query parameters are exactly those its parser
// takes (names, required, repeatable); every documented parameter's
// example is accepted; and the answers' documented fields are those the
// handlers write.
func TestOpenAPI(t *testing.T) {
	doc := readOpenAPI(t, openAPI)
	s := newServer(t, &fakeSource{apps: testApps(t)})

	_, patterns := s.mux()
	served := map[string]bool{}
	for _, p := range patterns {
		method, path, ok := strings.Cut(p, " ")
		if !ok {
			t.Fatalf("pattern %q has no method: every route names its method", p)
		}
		served[method+" "+docPath(path)] = true
	}
	documented := map[string]bool{}
	for path, ops := range doc.Paths {
		for method := range ops {
			documented[strings.ToUpper(method)+" "+path] = true
		}
	}
	for r := range served {
		if !documented[r] {
			t.Errorf("%s is served but not documented in openapi.json", r)
		}
	}
	for r := range documented {
		if !served[r] {
			t.Errorf("%s is documented in openapi.json but not served", r)
		}
	}

	for _, rt := range s.routes() {
		op, ok := doc.Paths[docPath(rt.path)][strings.ToLower(rt.method)]
		if !ok {
			continue // reported above
		}
		got := map[string]string{}
		example := url.Values{}
		for _, p := range op.Parameters {
			if p.In != "query" {
				continue
			}
			repeat := p.Schema.Type == "array" && p.Explode != nil && *p.Explode
			got[p.Name] = fmt.Sprintf("required=%v repeat=%v", p.Required, repeat)
			switch ex := p.Example.(type) {
			case nil:
				t.Errorf("%s %s: parameter %s has no example", rt.method, rt.path, p.Name)
			case []any:
				for _, v := range ex {
					example.Add(p.Name, fmt.Sprint(v))
				}
			default:
				example.Set(p.Name, fmt.Sprint(ex))
			}
		}
		want := map[string]string{}
		for _, p := range rt.params {
			want[p.name] = fmt.Sprintf("required=%v repeat=%v", p.required, p.repeat)
		}
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s %s: documented parameters %v, the parser takes %v", rt.method, rt.path, got, want)
		}
		if len(rt.params) == 0 {
			continue
		}
		// The examples, all together and each alone (with the required
		// ones), are answered, not refused.
		tries := []url.Values{example}
		for name := range example {
			one := url.Values{name: example[name]}
			for _, p := range rt.params {
				if p.required {
					one[p.name] = example[p.name]
				}
			}
			tries = append(tries, one)
		}
		for _, q := range tries {
			if w := get(t, s, rt.path+"?"+q.Encode()); w.Code != 200 {
				t.Errorf("%s %s?%s (the document's examples): %d %s", rt.method, rt.path, q.Encode(), w.Code, w.Body)
			}
		}
	}

	// The answers' fields are the documented ones.
	for schema, v := range map[string]any{
		"App": AppJSON{}, "Aggregate": AggregateJSON{}, "Rejected": RejectedJSON{}, "Memory": MemoryJSON{}, "Backfill": BackfillJSON{},
		"QueryAnswer": ResultJSON{}, "Row": RowJSON{}, "AsOf": AsOfJSON{}, "MissingShard": MissingShardJSON{},
		"Status": StatusJSON{}, "Shard": ShardJSON{}, "AppStatus": AppStatusJSON{},
	} {
		sc, ok := doc.Components.Schemas[schema]
		if !ok {
			t.Errorf("no schema %s in openapi.json", schema)
			continue
		}
		var documented []string
		for name := range sc.Properties {
			documented = append(documented, name)
		}
		fields, required := jsonFields(reflect.TypeOf(v))
		if schema == "Status" {
			// The reports of the other components, documented beside.
			documented = slices.DeleteFunc(documented, func(n string) bool { return n == "agent" || n == "calligraphus" || n == "copier" })
		}
		sort.Strings(documented)
		if !slices.Equal(documented, fields) {
			t.Errorf("schema %s documents %v, the answer has %v", schema, documented, fields)
		}
		sort.Strings(sc.Required)
		if !slices.Equal(sc.Required, required) {
			t.Errorf("schema %s requires %v, the answer always has %v", schema, sc.Required, required)
		}
	}

	// GET /api/v1/openapi.json serves the document.
	w := get(t, s, "/api/v1/openapi.json")
	if w.Code != 200 || w.Header().Get("Content-Type") != "application/json" || w.Body.String() != string(openAPI) {
		t.Fatalf("openapi.json: %d %v", w.Code, w.Header())
	}
}

// jsonFields lists the JSON names of a struct's fields, and those always
// written (no omitempty), sorted.
func jsonFields(t reflect.Type) (all, always []string) {
	for i := range t.NumField() {
		f := t.Field(i)
		tag := f.Tag.Get("json")
		if tag == "-" || !f.IsExported() {
			continue
		}
		name, opts, _ := strings.Cut(tag, ",")
		if name == "" {
			name = f.Name
		}
		all = append(all, name)
		if !strings.Contains(opts, "omitempty") {
			always = append(always, name)
		}
	}
	sort.Strings(all)
	sort.Strings(always)
	return all, always
}
