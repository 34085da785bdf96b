package serving

import (
	_ "embed"
	"net/http"
)

// openAPI is the OpenAPI 3 document of the HTTP API, written by hand;
// TestOpenAPI holds it to the routes and parameters the handlers take.
//
//go:embed openapi.json
var openAPI []byte

func (s *Server) handleOpenAPI(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Content-Type", "application/json")
	_, _ = w.Write(openAPI) // a client that went away is no error of ours
}
