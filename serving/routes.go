package serving

import (
	"net/http"
	"strings"

	"github.com/freeway-dev/freeway/internal/admin"
)

// route is an endpoint of the HTTP port beside internal/admin's. The
// mux is built from this table, and TestOpenAPI holds openapi.json to it.
type route struct {
	method, path string
	// name labels the endpoint's requests in the metrics.
	name string
	// params are the query-string parameters it takes, for the parser and
	// the document; nil: none (and any given are ignored, as before).
	params []param
	// page: the dashboard's page or files, served without a query token
	// (auth.Guard.Page); the API needs one.
	page bool
	h    http.HandlerFunc
}

func (s *Server) routes() []route {
	return []route{
		{method: "GET", path: "/api/v1/apps", name: "apps", h: s.handleApps},
		{method: "GET", path: "/api/v1/query", name: "query", params: queryParams, h: s.handleQuery},
		{method: "GET", path: "/api/v1/status", name: "status", h: s.handleStatus},
		{method: "GET", path: "/api/v1/openapi.json", name: "openapi", h: s.handleOpenAPI},
		{method: "GET", path: "/", name: "index", page: true, h: s.handleIndex},
		{method: "GET", path: uiPrefix, name: "ui", page: true, h: s.handleUI},
	}
}

// recordingMux registers handlers on a ServeMux and keeps their
// patterns.
type recordingMux struct {
	*http.ServeMux
	patterns []string
}

func (m *recordingMux) Handle(pattern string, h http.Handler) {
	m.patterns = append(m.patterns, pattern)
	m.ServeMux.Handle(pattern, h)
}

// Handler is the HTTP handler (also usable without Run, in tests): the
// query API and the page, and the operator endpoints of internal/admin,
// counted by handler.
func (s *Server) Handler() http.Handler {
	mux, _ := s.mux()
	return mux
}

// mux builds the handler and lists the patterns it registered.
func (s *Server) mux() (*http.ServeMux, []string) {
	mux := &recordingMux{ServeMux: http.NewServeMux()}
	var getOnly []string
	for _, rt := range s.routes() {
		pattern := rt.method + " " + rt.path
		if rt.path == "/" {
			pattern += "{$}" // the page only, not every path
		}
		guard := s.deps.Auth.Query
		if rt.page {
			guard = s.deps.Auth.Page
		}
		mux.Handle(pattern, s.instrument(rt.name, guard(rt.h).ServeHTTP))
		if !strings.HasSuffix(rt.path, "/") || rt.path == "/" {
			getOnly = append(getOnly, rt.path)
		}
	}
	rt := admin.Routes{Gatherer: s.deps.Gatherer, Auth: s.deps.Auth, Control: s.deps.Control, Pprof: s.cfg.Pprof, Wrap: s.instrument}
	if ready := s.deps.Ready; ready != nil {
		rt.Ready = func() (bool, string) {
			rd := ready()
			return rd.Ready, rd.String()
		}
	}
	rt.Mount(mux)
	mux.ServeMux.HandleFunc("/", admin.Fallback(getOnly, "see GET /api/v1/openapi.json for the API, or / for the dashboard"))
	return mux.ServeMux, mux.patterns
}
