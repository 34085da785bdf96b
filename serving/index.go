package serving

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

// The dashboard: plain HTML, CSS and JavaScript embedded in the binary,
// with uPlot vendored under ui/vendor (ui/vendor/README.md says which
// version and its checksums). The page asks the query API for rolled-up
// answers only (window=all, group_by with order_by and limit, where on
// the keys it charts).
//
//go:embed ui
var uiFiles embed.FS

// uiPrefix is where the page's assets are served.
const uiPrefix = "/ui/"

func uiFS() fs.FS {
	sub, err := fs.Sub(uiFiles, "ui")
	if err != nil {
		panic(err) // the embedded tree always has ui/
	}
	return sub
}

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	// Revalidated at every load, so that an upgrade shows at once.
	w.Header().Set("Cache-Control", "no-cache")
	http.ServeFileFS(w, r, uiFS(), "index.html")
}

// handleUI serves the page's files, and only files: not a listing of a
// directory of them, nor the page again (it is at /).
func (s *Server) handleUI(w http.ResponseWriter, r *http.Request) {
	name := strings.TrimPrefix(r.URL.Path, uiPrefix)
	if st, err := fs.Stat(uiFS(), name); err != nil || st.IsDir() || name == "index.html" {
		http.NotFound(w, r)
		return
	}
	w.Header().Set("Cache-Control", "no-cache")
	http.StripPrefix(uiPrefix, http.FileServerFS(uiFS())).ServeHTTP(w, r)
}
