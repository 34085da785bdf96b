package scribe

import (
	"crypto/tls"

	"github.com/freeway-dev/freeway/internal/auth"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
)

// listenTLS is the TLS of the app-facing port: the process's, unless
// agent.tls is false.
func (c *Config) listenTLS(t *auth.TLS) *tls.Config {
	if !c.TLS {
		return nil
	}
	return t.ServerConfig()
}

// dialUpstream connects to a writer, over the process's TLS when it has
// one: the writer is verified against tls.ca_file and the address's
// host, and the agent's certificate is offered when the writer asks (so
// that its sequence numbers are honoured where mutual TLS is set up).
func (a *Agent) dialUpstream(addr string) (*scribeapi.Client, error) {
	// Never refuse here a call a writer may take.
	return scribeapi.DialTLS(addr, a.tls.ClientConfig(addr), thriftsrv.Limits{MaxCallBytes: thriftsrv.MaxCallLimit}, a.cfg.UpstreamTimeout.D())
}

// ClientTLS is the TLS configuration to dial the agent's app-facing port
// with (the process's own certificate offered), or nil when the port is
// plaintext: for the demo load and tests.
func (a *Agent) ClientTLS() *tls.Config {
	if a.cfg.listenTLS(a.tls) == nil {
		return nil
	}
	return a.tls.ClientConfig(a.Addr())
}
