// Package serving answers queries over Puma's aggregates: an HTTP JSON API
// (GET /api/v1/apps, /api/v1/query, /api/v1/status, described by the
// OpenAPI 3 document at /api/v1/openapi.json), the same queries through
// Thrift (the Query service of thrift/freeway.thrift), health and
// readiness probes, Prometheus metrics, and the dashboard at /.
//
// Place in the data path: the end of it. In `freeway all` it answers from
// the local Puma node's memory (mode=fresh, the default there, including
// uncommitted changes) or from the store (mode=committed, Deps.Committed).
// A standalone serving process on a shared coordinator answers fresh
// through Fanout (fanout.go): for each shard the query needs it finds the
// lease holder and the address it advertises in layout.PumaMembers, asks
// each node for the partial state of its shards (puma.PartialPath), and
// merges them with puma.MergePartials, order_by and limit applied after
// the merge, so the answer is what `freeway all` gives over the same
// data. A shard whose node does not answer within serving.fanout_timeout
// (default 2s), or that nobody owns or whose owner's address is unknown,
// is answered from its committed state in the store and named in the
// answer: "stale_shards": ["<category>/<bucket>", ...] over HTTP,
// stale_shards over Thrift (both absent when every shard answered fresh;
// freeway_serving_stale_shards_total, freeway_serving_fanout_failures_total{request="partial"};
// a node that does not report its apps to /api/v1/apps or /api/v1/status
// counts in request="apps").
// A query whose partial state is over a bound (a node's
// puma.max_partial_rows, serving.fanout_max_bytes; the partial of the
// stale shards, built from the store, is held to both) is refused whole with
// puma.TooLargeError: HTTP 422, Thrift QueryError code 422
// (freeway_serving_fanout_too_large_total). Its /api/v1/apps shows
// the apps' state, memory and rejections as the live nodes report them
// (puma.AppsPath, merged by puma.MergeAppReports), and names the nodes
// that did not answer (puma_nodes).
// With an in-process coordinator there are no other nodes: it answers
// from the store only, and refuses mode=fresh. Every answer says how
// recent it is (as_of: the mode, the time of the data, the app's
// watermark). It keeps no state of its own:
// nothing of it survives a crash, nothing needs to.
//
// The API. Queries filter on group keys (where=key:value, repeatable),
// order by an aggregate with a limit (order_by=AGG[:asc|desc], a top-N of
// keys with window=all), and choose the mode. Each endpoint declares the
// query parameters it takes in one table (params.go), which the parser
// uses; TestOpenAPI holds openapi.json (hand-written, embedded) to the
// routes the mux serves, to those tables and to the answers' fields, so
// the document cannot drift from the handlers. /api/v1/status reports
// the process's components, the Puma shards (owner, state, position,
// lag in segments, checkpoint age; from the store for a standalone
// serving), each app's watermark and lag, and whatever the other
// components report through Deps.Status (the agent's queue, the writer's
// buckets; a copier provider fills "copier").
//
// The dashboard (index.go, ui/) is plain HTML, CSS and JavaScript
// embedded in the binary, with uPlot vendored at a pinned version (its
// checksums in ui/vendor/README.md, checked by a test); it asks only for
// rolled-up answers (window=all, group_by with order_by and limit, where
// on the keys it charts), polls for live refresh, and keeps its view in
// the URL fragment. internal/freeway's TestDashboard drives it in
// headless Chromium against a running `freeway all`. It writes what the
// answers hold as text, never as markup; the port's
// Content-Security-Policy (internal/httpsrv, on every answer) runs only
// the scripts it serves, none inline, and forbids framing it.
//
// Partial answers. An answer lacking the data of some shards of the
// app's category says so: over HTTP "partial": true and "missing_shards"
// (category, bucket, state recovering|failed|elsewhere, error), over
// Thrift the optional QueryResult fields partial and missing_shards; both
// are left out of a complete answer, which keeps its exact shape. So is
// "truncated" (HTTP and Thrift) when a limit or max_rows cut rows off.
//
// Security. With Deps.TLS both ports speak TLS (internal/auth). With
// Deps.Auth's query tokens, /api/v1/* needs "Authorization: Bearer
// <token>" (else 401, WWW-Authenticate: Bearer and a JSON error; the
// page and its files, which hold no data, are served without one, and the
// page asks for the token to send with its calls),
// and a Thrift connection calls authenticate(token) before its queries
// (else QueryError code 401); the token is checked again at every call.
// With its admin token, /metrics, /debug/pprof/ and POST /admin/reload
// and /admin/shutdown need it; without one /metrics and /debug/pprof/
// are open and POST /admin/* answers the local host only, addressed as
// localhost or by an IP address (auth.Guard.Control). What is served
// without a token on a port bound to a loopback address answers only
// requests whose Host is an IP address, localhost or a name of
// auth.allowed_hosts, others 403 (DNS rebinding; auth.Guard.Query). A browser's POST for a page of another origin is
// refused either way (auth.Guard.Control). /healthz and /readyz are always open, for probes:
// with tls.client_auth they are the only paths answered to a client
// without a certificate, all else 403 (auth.TLS.HTTPServer).
// The fan-out dials the Puma nodes with the process's TLS
// (TLS.ClientConfig) and presents the first token of its query tokens
// file, which the nodes' puma.listen requires: read again when the file
// changes (auth.Presented), so that a rotation reaches the fan-out too.
//
// Bad queries. A query string that does not parse, an unknown parameter
// or app, a bad value: 400 (over Thrift a QueryError of code 400) with an
// error quoting at most a clipped part of what was sent; never a 500.
// FuzzQueryHTTP and FuzzQueryThrift hold both ports to that.
//
// Readiness. /readyz answers 200 "ready", or 503 with the reason and one
// line per shard in the way (recovering since when, failed with its error
// and next try, held by nobody). The operator endpoints (/healthz,
// /readyz, /metrics, /debug/pprof/, POST /admin/*) are internal/admin's,
// which the admin listener of the targets without serving mounts too.
package serving
