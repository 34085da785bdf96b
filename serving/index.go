package serving

import (
	"html/template"
	"net/http"
)

// The page at / lists the apps with links to their latest aggregates: a
// starting point for a newcomer, not the dashboard.
var indexPage = template.Must(template.New("index").Parse(`<!doctype html>
<html><head><meta charset="utf-8"><title>Freeway</title>
<style>body{font-family:system-ui,sans-serif;margin:2em;max-width:60em}code{background:#f3f3f3;padding:0 .3em}td,th{padding:.2em 1em;text-align:left}</style>
</head><body>
<h1>Freeway</h1>
<p>Aggregation apps on this node. Each link queries the last hour.</p>
<table><tr><th>app</th><th>category</th><th>window</th><th>group by</th><th>aggregates</th><th></th></tr>
{{range .}}<tr><td>{{.Name}}</td><td>{{.Category}}</td><td>{{.Window}}</td><td>{{range $i, $g := .GroupBy}}{{if $i}}, {{end}}{{$g}}{{end}}</td>
<td>{{range $i, $a := .Aggregates}}{{if $i}}, {{end}}{{$a.Name}}{{end}}</td>
<td><a href="/api/v1/query?app={{.Name}}">per window</a> · <a href="/api/v1/query?app={{.Name}}&amp;window=all">all windows</a></td></tr>
{{else}}<tr><td colspan="6">no apps configured</td></tr>{{end}}
</table>
<p>API: <code>GET /api/v1/apps</code>, <code>GET /api/v1/query?app=NAME&amp;from=T&amp;to=T[&amp;group_by=k1,k2][&amp;window=all][&amp;limit=N]</code>.
Also <a href="/metrics">/metrics</a>, <a href="/healthz">/healthz</a>, <a href="/readyz">/readyz</a>.</p>
</body></html>
`))

func (s *Server) handleIndex(w http.ResponseWriter, r *http.Request) {
	var list []AppJSON
	for _, a := range s.deps.Source.Apps() {
		list = append(list, describe(a))
	}
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	_ = indexPage.Execute(w, list) // a client gone mid-answer: nothing to do
}
