package hbasestore

import (
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

// errClosed is returned by calls made after Close.
var errClosed = errors.New("store closed")

// conn is one Thrift connection to the gateway. A Thrift client is not safe
// for concurrent use, so a conn belongs to one caller at a time.
type conn struct {
	raw       net.Conn // closed from another goroutine to abort a call
	trans     thrift.TTransport
	client    *hbase.THBaseServiceClient
	idleSince time.Time
}

func (c *conn) close() { _ = c.trans.Close() } // a dropped connection; nothing to report to

// pool holds up to size connections to one gateway and hands them out one
// caller at a time. Connections that saw a transport or protocol error are
// dropped, not reused: after a failed call the stream may be out of step.
type pool struct {
	addr string
	cfg  *thrift.TConfiguration
	// maxIdle: a connection idle longer than this is dropped instead of
	// reused. The gateway closes connections idle for
	// hbase.thrift.server.socket.read.timeout (60 s by default); reusing one
	// it closed would fail the call, and a CheckAndPut cannot be retried.
	maxIdle time.Duration
	now     func() time.Time

	slots chan struct{} // one token per connection in use

	mu     sync.Mutex
	idle   []*conn // most recently used last
	closed bool
}

func newPool(addr string, size int, cfg *thrift.TConfiguration, maxIdle time.Duration) *pool {
	return &pool{
		addr:    addr,
		cfg:     cfg,
		maxIdle: maxIdle,
		now:     time.Now,
		slots:   make(chan struct{}, size),
	}
}

// get returns an idle connection that is still open, or dials a new one. It
// waits for a free slot while size connections are in use.
func (p *pool) get(ctx context.Context) (*conn, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	for {
		p.mu.Lock()
		if p.closed {
			p.mu.Unlock()
			<-p.slots
			return nil, errClosed
		}
		n := len(p.idle)
		if n == 0 {
			p.mu.Unlock()
			break
		}
		c := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		// IsOpen peeks at the socket without blocking: it sees a
		// connection the gateway closed while it sat idle.
		if p.now().Sub(c.idleSince) < p.maxIdle && c.trans.IsOpen() {
			return c, nil
		}
		c.close()
	}
	c, err := p.dial(ctx)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return c, nil
}

func (p *pool) dial(ctx context.Context) (*conn, error) {
	d := net.Dialer{Timeout: p.cfg.GetConnectTimeout()}
	raw, err := d.DialContext(ctx, "tcp", p.addr)
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", p.addr, err)
	}
	// Framed transport and binary protocol: what the gateway serves when
	// started with -f (and what its nonblocking/hsha servers require).
	trans := thrift.NewTFramedTransportConf(thrift.NewTSocketFromConnConf(raw, p.cfg), p.cfg)
	proto := thrift.NewTBinaryProtocolConf(trans, p.cfg)
	return &conn{
		raw:    raw,
		trans:  trans,
		client: hbase.NewTHBaseServiceClient(thrift.NewTStandardClient(proto, proto)),
	}, nil
}

// put gives c back. A connection that is not healthy is closed.
func (p *pool) put(c *conn, healthy bool) {
	p.mu.Lock()
	if healthy && !p.closed {
		c.idleSince = p.now()
		p.idle = append(p.idle, c)
		c = nil
	}
	p.mu.Unlock()
	if c != nil {
		c.close()
	}
	<-p.slots
}

// close closes the idle connections; connections in use are closed when
// they come back.
func (p *pool) close() {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, c := range idle {
		c.close()
	}
}

// do runs fn on c. Cancelling ctx closes the socket, which aborts a call
// blocked on the network (the Thrift library does not watch ctx itself); c
// is then unusable. do reports whether c can be reused.
func (c *conn) do(ctx context.Context, fn func(context.Context, *hbase.THBaseServiceClient) error) (healthy bool, err error) {
	if err := ctx.Err(); err != nil {
		return true, err
	}
	stop := context.AfterFunc(ctx, func() { _ = c.raw.Close() })
	err = fn(ctx, c.client)
	if !stop() {
		// ctx ended during the call and the socket is closed.
		if err != nil {
			err = ctx.Err()
		}
		return false, err
	}
	return err == nil || isServerError(err), err
}

// isServerError reports whether err is an exception the gateway declared
// and sent in a well-formed reply: the connection is still in step.
func isServerError(err error) bool {
	var io *hbase.TIOError
	var ia *hbase.TIllegalArgument
	return errors.As(err, &io) || errors.As(err, &ia)
}
