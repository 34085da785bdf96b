package httpsrv

import (
	"bytes"
	"encoding/json"
	"net/http"
)

// WriteJSON encodes v before writing anything, so that a value JSON
// cannot carry is a 500 rather than a 200 with a cut body.
func WriteJSON(w http.ResponseWriter, code int, v any) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		buf.Reset()
		code = http.StatusInternalServerError
		_ = enc.Encode(map[string]string{"error": "encode answer: " + err.Error()}) // a map of strings always encodes
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(buf.Bytes()) // a client gone mid-answer: nothing to do
}

// WriteError answers code with {"error": msg}.
func WriteError(w http.ResponseWriter, code int, msg string) {
	WriteJSON(w, code, map[string]string{"error": msg})
}
