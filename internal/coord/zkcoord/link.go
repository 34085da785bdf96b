package zkcoord

import (
	"encoding/binary"
	"errors"
	"net"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-zookeeper/zk"
)

// link dials ZooKeeper servers for the client and keeps an eye on what
// comes back, because go-zookeeper does not tell us two things we need:
//
//   - when we last heard from a server. The server expires our session one
//     session timeout after it last heard from us, so "last read + session
//     timeout" is the earliest moment another process can be granted our
//     leases; the watchdog gives them up locally then (see doc.go).
//   - the session timeout the server actually granted (it clamps the one we
//     ask for to its min/max). It is in the server's reply to the connect
//     request, the first frame on every connection, which link parses.
//
// link also owns the sockets, so Close can cut one that hangs mid-handshake
// instead of waiting for the client's ten-fold read deadline.
type link struct {
	dial        zk.Dialer
	onHandshake func(sessionID int64, passwd []byte) // tests only; may be nil

	lastRead   atomic.Int64 // unix nanoseconds of the latest byte from any server
	negotiated atomic.Int64 // granted session timeout in nanoseconds; 0 until known

	mu     sync.Mutex
	closed bool
	conns  map[*linkConn]struct{}
}

var errLinkClosed = errors.New("coordinator closing")

func newLink(dial zk.Dialer, onHandshake func(int64, []byte)) *link {
	if dial == nil {
		dial = net.DialTimeout
	}
	return &link{dial: dial, onHandshake: onHandshake, conns: map[*linkConn]struct{}{}}
}

// Dial is the zk.Dialer the client uses.
func (k *link) Dial(network, address string, timeout time.Duration) (net.Conn, error) {
	k.mu.Lock()
	closed := k.closed
	k.mu.Unlock()
	if closed {
		return nil, errLinkClosed
	}
	nc, err := k.dial(network, address, timeout)
	if err != nil {
		return nil, err
	}
	c := &linkConn{Conn: nc, k: k}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		nc.Close()
		return nil, errLinkClosed
	}
	k.conns[c] = struct{}{}
	return c, nil
}

// shutdown closes every socket and refuses new ones.
func (k *link) shutdown() {
	k.mu.Lock()
	k.closed = true
	conns := k.conns
	k.conns = map[*linkConn]struct{}{}
	k.mu.Unlock()
	for c := range conns {
		c.Conn.Close()
	}
}

// sessionTimeout is the granted timeout, or fallback before any handshake.
func (k *link) sessionTimeout(fallback time.Duration) time.Duration {
	if d := k.negotiated.Load(); d > 0 {
		return time.Duration(d)
	}
	return fallback
}

func (k *link) lastReadTime() time.Time { return time.Unix(0, k.lastRead.Load()) }

// linkConn is one socket. Read is called by one goroutine at a time (the
// client's handshake, then its receive loop), so hs needs no lock.
type linkConn struct {
	net.Conn
	k      *link
	hs     []byte // the connect reply so far
	hsDone bool
}

func (c *linkConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		c.k.lastRead.Store(time.Now().UnixNano())
		if !c.hsDone {
			c.sniff(p[:n])
		}
	}
	return n, err
}

func (c *linkConn) Close() error {
	c.k.mu.Lock()
	delete(c.k.conns, c)
	c.k.mu.Unlock()
	return c.Conn.Close()
}

func (c *linkConn) sniff(b []byte) {
	c.hs = append(c.hs, b[:min(len(b), maxConnectResponse-len(c.hs))]...)
	r, complete, err := parseConnectResponse(c.hs)
	if err != nil {
		c.hsDone, c.hs = true, nil
		return
	}
	if !complete {
		return
	}
	c.hsDone, c.hs = true, nil
	// A reply with session id 0 says our session expired; it carries no
	// timeout worth keeping.
	if r.sessionID == 0 {
		return
	}
	c.k.negotiated.Store(int64(r.timeout))
	if c.k.onHandshake != nil {
		c.k.onHandshake(r.sessionID, r.passwd)
	}
}

// connectResponse is the start of the server's reply to a connect request
// (ZooKeeper's ConnectResponse jute record, after the 4-byte frame length):
// int32 protocolVersion, int32 timeOut (ms), int64 sessionId, buffer passwd
// (int32 length + bytes), then an optional readOnly flag we do not need.
type connectResponse struct {
	timeout   time.Duration
	sessionID int64
	passwd    []byte
}

// maxPasswd bounds the password length we accept (servers send 16 bytes).
const maxPasswd = 64

const maxConnectResponse = 4 + 4 + 4 + 8 + 4 + maxPasswd

// parseConnectResponse parses b, the first bytes read from a connection.
// complete is false while more bytes are needed.
func parseConnectResponse(b []byte) (r connectResponse, complete bool, err error) {
	const fixed = 4 + 4 + 4 + 8 + 4
	if len(b) < fixed {
		return r, false, nil
	}
	frame := binary.BigEndian.Uint32(b[0:4])
	pwLen := int32(binary.BigEndian.Uint32(b[20:24]))
	if pwLen < 0 || pwLen > maxPasswd || frame < uint32(fixed-4+pwLen) {
		return r, false, errors.New("not a connect response")
	}
	if len(b) < fixed+int(pwLen) {
		return r, false, nil
	}
	r.timeout = time.Duration(int32(binary.BigEndian.Uint32(b[8:12]))) * time.Millisecond
	r.sessionID = int64(binary.BigEndian.Uint64(b[12:20]))
	r.passwd = append([]byte(nil), b[fixed:fixed+int(pwLen)]...)
	return r, true, nil
}
