package thriftsrv

import (
	"crypto/tls"
	"fmt"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
)

// Client is a framed binary connection to a Thrift server.
type Client struct {
	Transport thrift.TTransport
	Protocol  thrift.TProtocolFactory
}

// Dial connects to addr with the given limits (on what it reads back) and
// timeout (connect and per-call socket timeout).
func Dial(addr string, limits Limits, timeout time.Duration) (*Client, error) {
	return DialTLS(addr, nil, limits, timeout)
}

// DialTLS is Dial over TLS with tc (nil: plain TCP, as Dial). The
// handshake is done before it returns, within timeout.
func DialTLS(addr string, tc *tls.Config, limits Limits, timeout time.Duration) (*Client, error) {
	cfg := limits.Config()
	cfg.ConnectTimeout = timeout
	cfg.SocketTimeout = timeout
	var sock thrift.TTransport = thrift.NewTSocketConf(addr, cfg)
	if tc != nil {
		cfg.TLSConfig = tc
		sock = thrift.NewTSSLSocketConf(addr, cfg)
	}
	trans := thrift.NewTFramedTransportConf(sock, cfg)
	if err := trans.Open(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return &Client{Transport: trans, Protocol: thrift.NewTBinaryProtocolFactoryConf(cfg)}, nil
}

// TClient returns a standard Thrift client on the connection.
func (c *Client) TClient() thrift.TClient {
	return thrift.NewTStandardClient(c.Protocol.GetProtocol(c.Transport), c.Protocol.GetProtocol(c.Transport))
}

// Close closes the connection.
func (c *Client) Close() error { return c.Transport.Close() }
