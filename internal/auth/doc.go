// Package auth is what secures Freeway's ports: TLS for every listener
// and for the clients between components, and bearer tokens for the
// query API and the admin endpoints.
//
// TLS (the tls: keys, TLSConfig). With tls.cert_file and tls.key_file
// set, every listener of the process (the Scribe ports, the Thrift query
// port, the HTTP ports) speaks TLS 1.2 or later with that certificate,
// and the process's clients (the agent's upstream link; later serving's
// fan-out to Puma nodes) dial with TLS, verifying the server against
// tls.ca_file (else the system roots) and the host of the address they
// dial. With tls.ca_file set, listeners also verify a client certificate
// a client offers (a connection offering one that does not verify is
// refused); tls.client_auth: true requires one (mutual TLS): at the
// handshake on the Scribe, Thrift and Puma node ports (ServerConfig), and
// on the HTTP ports (HTTPServer) on every request but a GET or HEAD of
// exactly /healthz or /readyz (ProbePaths), so that a health checker
// without a certificate can probe: those ports complete a handshake
// without a certificate (one offered must verify) and answer any other
// request of such a client 403 with a JSON error (counted in
// freeway_tls_requests_without_client_cert_total). A client
// offers the process's certificate when a server asks, if the
// certificate may authenticate clients (no extended key usage, or
// clientAuth among them).
//
// The files are read again when they change: every handshake and every
// dial stats them (size, modification time and inode, a few
// microseconds; while a file is less than 2s old, whose rewrite might not
// change its stat, its content is compared too) and reloads them if they
// changed, so a renewed certificate is used by the next connection while
// open connections keep theirs. A new file that
// does not load (a half-written file, a key that does not match the
// certificate) leaves the previous certificate in use; the error is
// logged (rate-limited) and counted in freeway_tls_reloads_total
// {result="error"}, and the files are tried again when they change next.
//
// Tokens (the auth: keys, Config). auth.query_tokens_file and
// auth.admin_token_file hold bearer tokens, one a line (blank lines and
// lines starting with # are ignored). They are read again when they
// change, as the certificates are; a file that does not parse, or holds
// no token (taken as half-written), leaves the previous tokens in use. A
// presented token is compared with each token in constant time (as
// SHA-256 digests, so neither its length nor which token it resembles
// shows in the time). Neither a token nor a key is ever logged or
// exported: refusals are logged (rate-limited) and counted in
// freeway_auth_refused_total{endpoint,reason} without the token (and the
// file reloads in freeway_auth_token_reloads_total{file,result}), and
// configuration reports (fb303 getOptions) show the files' paths only.
//
// Guard applies the tokens to HTTP: Query for /api/v1/* (and the web
// page, which shows the apps), Admin for /metrics and /debug/pprof/, and
// Control for POST /admin/reload and /admin/shutdown, which without an
// admin token are honoured only from the local host (as fb303's control
// calls are), addressed by an IP address or as localhost (a request for
// another name may come from a web page whose name was rebound to
// 127.0.0.1, through the operator's browser). A request refused for want
// of a valid token gets 401, WWW-Authenticate: Bearer and {"error":
// "..."}; a control request refused for where it came from or the host
// it named, 403. A control request a browser sends for a page of
// another origin (its Sec-Fetch-Site or Origin says so; curl sends
// neither) is refused 403 whatever the tokens (reason cross_origin): the
// operator's browser on the local host would pass the local-host rule,
// and any page it shows could post a form there. Query and Admin without
// tokens, on a port bound to a loopback address (ListenerContext, which
// internal/httpsrv sets), serve only requests whose Host is an IP address,
// localhost or a name of auth.allowed_hosts (Config.AllowedHosts: a
// reverse proxy on the local host that passes the client's Host on), and
// refuse others 403 (reason unknown_host): any page the operator's
// browser shows could otherwise read the port, as its own origin, once
// its name is rebound to 127.0.0.1. A request with a valid token, or
// over TLS (the browser checked the certificate against the Host), is
// served whatever its Host. A port bound to another address (0.0.0.0
// included) is open to whoever reaches it: the rule does not apply there,
// and a name rebound to a LAN address is not guarded against. /healthz
// and /readyz stay open for probes (without a client certificate too,
// under client_auth).
//
// Nothing here survives a restart, and nothing needs to: the files are
// the state.
package auth
