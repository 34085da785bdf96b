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
// goes out and comes back, because go-zookeeper does not tell us two
// things we need:
//
//   - when a server last heard from us. The server expires our session one
//     session timeout after it last heard from us, so "last heard + session
//     timeout" is the earliest moment another process can be granted our
//     leases; the watchdog gives them up locally then (see doc.go). Only a
//     reply proves that the server heard us, and only to the request it
//     answers: link notes when it sent each ping and, when the server
//     answers it (in order), takes that send time. A byte read is no
//     proof: a server that no longer hears us may still send watch events.
//   - the session timeout the server actually granted (it clamps the one we
//     ask for to its min/max). It is in the server's reply to the connect
//     request, the first frame on every connection, which link parses.
//
// link also owns the sockets, so Close can cut one that hangs mid-handshake
// instead of waiting for the client's ten-fold read deadline, and it orders
// the client's goroutines where the client itself does not (see gate).
type link struct {
	dial        zk.Dialer
	onHandshake func(sessionID int64, passwd []byte) // tests only; may be nil

	start       time.Time    // the origin of stamps' monotonic readings
	clock       func() stamp // tests only; nil: the process's clocks
	heardMu     sync.Mutex
	lastHeard   stamp        // the latest send time of a request a server answered; zero before any
	negotiated  atomic.Int64 // granted session timeout in nanoseconds; 0 until known
	lastSession atomic.Int64 // session id of the latest handshake

	mu     sync.Mutex
	closed bool
	conns  map[*linkConn]struct{}
}

var errLinkClosed = errors.New("coordinator closing")

func newLink(dial zk.Dialer, onHandshake func(int64, []byte)) *link {
	if dial == nil {
		dial = net.DialTimeout
	}
	return &link{dial: dial, onHandshake: onHandshake, start: time.Now(), conns: map[*linkConn]struct{}{}}
}

// A stamp is a moment read on both of the process's clocks: mono on Go's
// monotonic clock (nanoseconds since the link was made, at least 1), wall
// the time of day (Unix nanoseconds).
type stamp struct{ mono, wall int64 }

// now is the time now.
func (k *link) now() stamp {
	if k.clock != nil {
		return k.clock()
	}
	t := time.Now()
	return stamp{mono: max(int64(t.Sub(k.start)), 1), wall: t.UnixNano()}
}

// since is how long before now s was: the longer of what the two clocks
// measured, for neither alone can time a session out. The wall clock
// jumps when NTP steps it or someone sets it: stepped back an hour during
// a partition, it would keep our leases for an hour after the server
// expired the session and another process took them. The monotonic clock
// never jumps, but (on Linux) it stands still while the machine is
// suspended or its VM paused, which the wall clock makes up for once it
// is set right after the resume. Taking the longer errs, as the watchdog
// does, towards giving leases up too early: a step forward gives them up
// at once, and they are taken again.
func (s stamp) since(now stamp) time.Duration {
	return time.Duration(max(now.mono-s.mono, now.wall-s.wall))
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
	c := &linkConn{Conn: nc, k: k, closed: make(chan struct{})}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.closed {
		_ = nc.Close()
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
		c.closeOnce.Do(func() { close(c.closed) })
		_ = c.Conn.Close() // closing every link; nothing to report to
	}
}

// sessionTimeout is the granted timeout, or fallback before any handshake.
func (k *link) sessionTimeout(fallback time.Duration) time.Duration {
	if d := k.negotiated.Load(); d > 0 {
		return time.Duration(d)
	}
	return fallback
}

// heardAt is when we sent the latest request a server is known to have
// received: the latest ping it answered, or the connect request of the
// latest handshake. The zero stamp before any.
func (k *link) heardAt() stamp {
	k.heardMu.Lock()
	defer k.heardMu.Unlock()
	return k.lastHeard
}

// sinceHeard is how long ago that was.
func (k *link) sinceHeard() time.Duration { return k.heardAt().since(k.now()) }

// heard notes that a server received what we sent at sent.
func (k *link) heard(sent stamp) {
	k.heardMu.Lock()
	defer k.heardMu.Unlock()
	if sent.mono > k.lastHeard.mono {
		k.lastHeard = sent
	}
}

// linkConn is one socket. Read is called by one goroutine at a time (the
// client's handshake, then its receive loop), so hs needs no lock.
type linkConn struct {
	net.Conn
	k         *link
	hs        []byte // the connect reply so far
	hsDone    bool
	closed    chan struct{}
	closeOnce sync.Once

	// The server's frames, followed as they are read (receive side only):
	// the length and xid of the one being read, and how much of it is left.
	hdr  []byte
	skip int
	// When we wrote the connect request (zero: not yet), and our pings
	// the server has not answered yet, oldest first.
	pingMu      sync.Mutex
	connectSent stamp
	pings       []stamp
	pingsLost   bool // more pings unanswered than pings holds: replies prove nothing

	// gate works around a data race in go-zookeeper v1.0.4 (upstream
	// issue samuel/go-zookeeper#178, fix proposed in go-zookeeper/zk#35,
	// not merged): on reconnecting to a session it reads Conn.lastZxid
	// to re-set its watches while its receive loop, already running, may
	// write it. The race is benign (either value is fine) but fails every
	// test run with -race that reconnects while requests are queued. So
	// on a reconnection to the same session, the receive loop's first
	// Read waits until the client has written its SetWatches request,
	// which it does after that read: the wait orders the two. If the
	// client had no watch to re-set it reads nothing and writes nothing,
	// and the wait ends after gateWait. A new session needs no gate: the
	// client dropped all watches at expiry, and the first connection has
	// none.
	gate      chan struct{} // set before the receive loop starts; nil: no gate
	gateWait  time.Duration
	gateOnce  sync.Once
	gatePassd bool // receive loop only
}

// opSetWatches is the request the client re-sets its watches with.
const opSetWatches = 101

func (c *linkConn) Read(p []byte) (int, error) {
	if c.gate != nil && !c.gatePassd {
		c.gatePassd = true
		t := time.NewTimer(c.gateWait)
		select {
		case <-c.gate:
		case <-c.closed:
		case <-t.C:
		}
		t.Stop()
	}
	n, err := c.Conn.Read(p)
	if n > 0 {
		if !c.hsDone {
			c.sniff(p[:n])
		}
		c.scan(p[:n])
	}
	return n, err
}

// Frame xids and opcodes link looks for.
const (
	xidPing = -2
	opPing  = 11
)

// maxPings bounds the unanswered pings a connection keeps track of; the
// client gives a connection up long before, unless the server keeps
// sending something else (watch events) while it no longer hears us.
const maxPings = 64

// scan follows the server's frames (a 4-byte length, then an xid; the
// connect reply has its protocol version, 0, there) and notes the replies
// to our pings.
func (c *linkConn) scan(b []byte) {
	for len(b) > 0 {
		if c.skip > 0 {
			n := min(c.skip, len(b))
			c.skip -= n
			b = b[n:]
			continue
		}
		n := min(8-len(c.hdr), len(b))
		c.hdr = append(c.hdr, b[:n]...)
		b = b[n:]
		if len(c.hdr) < 8 {
			return
		}
		c.skip = max(int(binary.BigEndian.Uint32(c.hdr[0:4]))-4, 0)
		xid := int32(binary.BigEndian.Uint32(c.hdr[4:8]))
		c.hdr = c.hdr[:0]
		if xid == xidPing {
			c.pingAnswered()
		}
	}
}

// pingAnswered takes the send time of the oldest unanswered ping: the
// server answers a session's requests in order.
func (c *linkConn) pingAnswered() {
	c.pingMu.Lock()
	defer c.pingMu.Unlock()
	if len(c.pings) == 0 || c.pingsLost {
		return
	}
	sent := c.pings[0]
	c.pings = c.pings[1:]
	c.k.heard(sent)
}

// Write notes the connect request and pings, and passes the gate when the
// client re-sets its watches. The client writes each request with one
// Write: length, xid, opcode, body; the connect request comes first.
func (c *linkConn) Write(p []byte) (int, error) {
	// Noted before the bytes leave: the server cannot have them earlier.
	now := c.k.now()
	c.pingMu.Lock()
	if c.connectSent.mono == 0 {
		c.connectSent = now
	}
	if len(p) >= 12 && int32(binary.BigEndian.Uint32(p[4:8])) == xidPing && int32(binary.BigEndian.Uint32(p[8:12])) == opPing {
		if len(c.pings) < maxPings {
			c.pings = append(c.pings, now)
		} else {
			c.pingsLost = true
		}
	}
	c.pingMu.Unlock()
	n, err := c.Conn.Write(p)
	if c.gate != nil && len(p) >= 12 && int32(binary.BigEndian.Uint32(p[8:12])) == opSetWatches {
		c.gateOnce.Do(func() { close(c.gate) })
	}
	return n, err
}

func (c *linkConn) Close() error {
	c.k.mu.Lock()
	delete(c.k.conns, c)
	c.k.mu.Unlock()
	c.closeOnce.Do(func() { close(c.closed) })
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
	c.pingMu.Lock()
	sent := c.connectSent
	c.pingMu.Unlock()
	c.k.heard(sent)
	if c.k.lastSession.Swap(r.sessionID) == r.sessionID {
		// Set on the handshake goroutine, before the client starts the
		// goroutines that Read and Write.
		c.gate = make(chan struct{})
		// Well under the client's read timeout (2/3 of the session's).
		c.gateWait = r.timeout / 4
	}
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
