package thriftsrv

import (
	"context"
	"crypto/tls"
	"encoding/binary"
	"fmt"
	"time"

	"github.com/apache/thrift/lib/go/thrift"
)

// Client is a framed binary connection to a Thrift server.
type Client struct {
	Transport thrift.TTransport
	Protocol  thrift.TProtocolFactory
	sock      thrift.TTransport // under Transport: what WriteFrame writes to
	cfg       *thrift.TConfiguration
}

// WriteFrame writes frame, a whole frame (its 4-byte size, which it
// fills in, then one message), to the connection in one write, past the
// framed transport's buffer: for a caller that built the message in a
// buffer of its own, which the framed transport would copy into its own
// first and write in two. Nothing may be half-written through Transport
// meanwhile (a call's messages go one way or the other). A frame over
// the connection's max frame size is refused as the framed transport
// refuses it.
func (c *Client) WriteFrame(ctx context.Context, frame []byte) error {
	size := len(frame) - 4
	if size < 0 {
		return fmt.Errorf("write frame: %d bytes, no room for its size", len(frame))
	}
	if int64(size) > int64(c.cfg.GetMaxFrameSize()) {
		return thrift.NewTProtocolExceptionWithType(thrift.SIZE_LIMIT, fmt.Errorf("frame too large: %d bytes", size))
	}
	binary.BigEndian.PutUint32(frame, uint32(size))
	if _, err := c.sock.Write(frame); err != nil {
		return thrift.NewTTransportExceptionFromError(err)
	}
	return thrift.NewTTransportExceptionFromError(c.sock.Flush(ctx))
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
	sock = &sniffAnswer{TTransport: sock, addr: addr}
	trans := thrift.NewTFramedTransportConf(sock, cfg)
	if err := trans.Open(); err != nil {
		return nil, fmt.Errorf("connect to %s: %w", addr, err)
	}
	return &Client{Transport: trans, Protocol: thrift.NewTBinaryProtocolFactoryConf(cfg), sock: sock, cfg: cfg}, nil
}

// sniffAnswer names an HTTP server answering where a Thrift one was
// expected (a serving or admin port given for a Scribe one): the framed
// transport would read its "HTTP/1.1 400" as the frame size 1213486160
// and report only "Incorrect frame size (1213486160)".
type sniffAnswer struct {
	thrift.TTransport
	addr string
	head []byte // the first bytes read, up to 4
}

func (s *sniffAnswer) Read(p []byte) (int, error) {
	n, err := s.TTransport.Read(p)
	if len(s.head) < 4 {
		s.head = append(s.head, p[:min(n, 4-len(s.head))]...)
		if string(s.head) == "HTTP" {
			return 0, fmt.Errorf("%s answered HTTP, not Thrift (framed, binary): wrong port?", s.addr)
		}
	}
	return n, err
}

// TClient returns a standard Thrift client on the connection.
func (c *Client) TClient() thrift.TClient {
	return thrift.NewTStandardClient(c.Protocol.GetProtocol(c.Transport), c.Protocol.GetProtocol(c.Transport))
}

// Close closes the connection.
func (c *Client) Close() error { return c.Transport.Close() }
