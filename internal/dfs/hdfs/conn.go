package hdfs

import (
	"context"
	"net"
	"time"
)

// dialFunc is the shape colinmarc/hdfs takes for NameNode and DataNode
// dialers.
type dialFunc func(ctx context.Context, network, addr string) (net.Conn, error)

// newDialer returns a dialer whose connections bound every Read and Write
// by ioTimeout.
//
// colinmarc/hdfs sets no deadline on NameNode connections at all, so a
// NameNode that accepts a connection and then stops answering would hang
// the caller forever. A per-operation deadline is safe with how the
// library uses its connections: NameNode reads happen only while an RPC
// waits for its answer, DataNode ack reads only while a packet is
// unacknowledged, and idle write pipelines send a heartbeat every 30 s.
func newDialer(dialTimeout, ioTimeout time.Duration) dialFunc {
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 30 * time.Second}
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := d.DialContext(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return &timeoutConn{Conn: c, timeout: ioTimeout}, nil
	}
}

// timeoutConn gives each Read and Write a fresh deadline and closes the
// connection on the first error.
//
// Closing matters for the NameNode connection: colinmarc/hdfs keeps using
// a connection after a failed read, so the late answer to the timed-out
// call would be read as the answer to the next one, and every later call
// would fail with "unexpected sequence number" or decode a wrong answer
// (TestNameNodeTimeoutRecovers shows both without this). A closed
// connection makes the next write fail instead; calls then fail for the
// library's 5 s back-off, after which it dials a new connection.
type timeoutConn struct {
	net.Conn
	timeout time.Duration
}

func (c *timeoutConn) Read(p []byte) (int, error) {
	if err := c.Conn.SetReadDeadline(time.Now().Add(c.timeout)); err != nil {
		_ = c.Conn.Close() // the deadline error is the one to report
		return 0, err
	}
	n, err := c.Conn.Read(p)
	if err != nil {
		_ = c.Conn.Close() // the read error is the one to report
	}
	return n, err
}

func (c *timeoutConn) Write(p []byte) (int, error) {
	if err := c.Conn.SetWriteDeadline(time.Now().Add(c.timeout)); err != nil {
		_ = c.Conn.Close() // the deadline error is the one to report
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if err != nil {
		_ = c.Conn.Close() // the write error is the one to report
	}
	return n, err
}
