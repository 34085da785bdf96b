package zkcoord

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/enginetest"
	"github.com/freeway-dev/freeway/internal/testkit"

	"github.com/go-zookeeper/zk"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/coord/coordtest"
)

// zkAddr is the ZooKeeper server the engine tests use.
func zkAddr(t *testing.T) string {
	t.Helper()
	return enginetest.Addr(t, enginetest.ZK)
}

func TestConformance(t *testing.T) {
	addr := zkAddr(t)
	coordtest.Run(t, func(t *testing.T) coordtest.Backend { return newBackend(t, addr, 4*time.Second) })
}

// backend is a fresh random root on the test server; every session dials
// through a testNet the test can cut, mute or partition.
type backend struct {
	addr    string
	root    string
	timeout time.Duration
	mu      sync.Mutex
	nets    map[*Coord]*testNet
}

func newBackend(t *testing.T, addr string, timeout time.Duration) *backend {
	var b [8]byte
	rand.Read(b[:])
	be := &backend{addr: addr, root: "/freeway-test-" + hex.EncodeToString(b[:]), timeout: timeout, nets: map[*Coord]*testNet{}}
	t.Cleanup(func() { be.removeRoot(t) }) // runs after the sessions close
	return be
}

func (b *backend) url() string {
	return fmt.Sprintf("zk://%s%s?session_timeout=%v", b.addr, b.root, b.timeout)
}

func (b *backend) Session(t *testing.T) coord.Coord { return b.open(t) }

func (b *backend) open(t *testing.T) *Coord {
	t.Helper()
	n := &testNet{conns: map[*testConn]struct{}{}, passwd: map[int64][]byte{}}
	c, err := open(b.url(), testLogger(t), options{dial: n.dial, onHandshake: n.handshake})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	b.mu.Lock()
	b.nets[c] = n
	b.mu.Unlock()
	return c
}

func (b *backend) net(c *Coord) *testNet {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.nets[c]
}

// Expire makes the server end c's session for real, as Curator's
// KillSession does: a second connection presents the session's id and
// password, then closes the session. The server deletes its ephemeral
// nodes at once. Cutting c's own socket makes c reconnect now, rather than
// at its next ping, and be told that its session expired.
func (b *backend) Expire(t *testing.T, c coord.Coord) {
	t.Helper()
	zc := c.(*Coord)
	n := b.net(zc)
	sid := zc.conn.SessionID()
	if err := killSession(b.addr, sid, n.password(sid)); err != nil {
		t.Fatalf("expire session %#x: %v", sid, err)
	}
	n.cut()
}

func (b *backend) removeRoot(t *testing.T) {
	c, err := Open(fmt.Sprintf("zk://%s%s", b.addr, b.root), nil)
	if err != nil {
		t.Errorf("remove test root: %v", err)
		return
	}
	defer c.Close()
	if err := deleteTree(c.conn, b.root); err != nil {
		t.Errorf("remove test root %s: %v", b.root, err)
	}
}

func deleteTree(conn *zk.Conn, p string) error {
	children, _, err := conn.Children(p)
	if errors.Is(err, zk.ErrNoNode) {
		return nil
	}
	if err != nil {
		return err
	}
	for _, child := range children {
		if err := deleteTree(conn, p+"/"+child); err != nil {
			return err
		}
	}
	if err := conn.Delete(p, -1); err != nil && !errors.Is(err, zk.ErrNoNode) {
		return err
	}
	return nil
}

// killSession attaches to session sid on the server at addr and closes it.
func killSession(addr string, sid int64, passwd []byte) error {
	if passwd == nil {
		return fmt.Errorf("no password seen for session %#x", sid)
	}
	nc, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return err
	}
	defer nc.Close()
	nc.SetDeadline(time.Now().Add(10 * time.Second))

	// ConnectRequest: protocolVersion, lastZxidSeen, timeOut, sessionId, passwd.
	req := make([]byte, 4, 64)
	req = binary.BigEndian.AppendUint32(req, 0)
	req = binary.BigEndian.AppendUint64(req, 0)
	req = binary.BigEndian.AppendUint32(req, 4000)
	req = binary.BigEndian.AppendUint64(req, uint64(sid))
	req = binary.BigEndian.AppendUint32(req, uint32(len(passwd)))
	req = append(req, passwd...)
	binary.BigEndian.PutUint32(req, uint32(len(req)-4))
	if _, err := nc.Write(req); err != nil {
		return err
	}
	reply, err := readFrame(nc)
	if err != nil {
		return fmt.Errorf("read connect reply: %w", err)
	}
	r, complete, err := parseConnectResponse(reply)
	if err != nil || !complete {
		return fmt.Errorf("bad connect reply (%d bytes): %v", len(reply), err)
	}
	if r.sessionID == 0 {
		return nil // already expired
	}
	if r.sessionID != sid {
		return fmt.Errorf("attached to session %#x, want %#x", r.sessionID, sid)
	}
	// closeSession: xid 1, opcode -11, no body.
	closeReq := binary.BigEndian.AppendUint32(nil, 8)
	closeReq = binary.BigEndian.AppendUint32(closeReq, 1)
	closeReq = binary.BigEndian.AppendUint32(closeReq, uint32(0xFFFFFFF5)) // -11
	if _, err := nc.Write(closeReq); err != nil {
		return err
	}
	reply, err = readFrame(nc)
	if err != nil {
		return fmt.Errorf("read close reply: %w", err)
	}
	if len(reply) < 4+16 {
		return fmt.Errorf("short close reply")
	}
	if code := int32(binary.BigEndian.Uint32(reply[16:20])); code != 0 {
		return fmt.Errorf("close session: error code %d", code)
	}
	return nil
}

// readFrame reads one length-prefixed frame, prefix included.
func readFrame(r io.Reader) ([]byte, error) {
	b := make([]byte, 4)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, err
	}
	n := binary.BigEndian.Uint32(b)
	if n > 1<<20 {
		return nil, fmt.Errorf("frame of %d bytes", n)
	}
	b = append(b, make([]byte, n)...)
	_, err := io.ReadFull(r, b[4:])
	return b, err
}

// testNet is the network between one session and the server.
type testNet struct {
	mu     sync.Mutex
	down   bool
	conns  map[*testConn]struct{}
	passwd map[int64][]byte
}

type testConn struct {
	net.Conn
	muted atomic.Bool // the server's bytes are dropped: replies lost

	// Set by deafen: the server no longer hears us, but something goes on
	// sending watch events. Reads then get one every deafEvery.
	deaf      atomic.Bool
	deafEvery time.Duration
	deafBuf   []byte // the rest of the event being read
	closed    chan struct{}
	closeOnce sync.Once
}

func (c *testConn) Read(p []byte) (int, error) {
	for {
		if c.deaf.Load() {
			return c.readEvent(p)
		}
		n, err := c.Conn.Read(p)
		if c.deaf.Load() {
			continue // the socket to the server was closed by deafen
		}
		if err != nil || !c.muted.Load() {
			return n, err
		}
	}
}

// readEvent reads a made-up watch event (NodeChildrenChanged on a path
// nobody watches), waiting deafEvery before each.
func (c *testConn) readEvent(p []byte) (int, error) {
	if len(c.deafBuf) == 0 {
		t := time.NewTimer(c.deafEvery)
		defer t.Stop()
		select {
		case <-t.C:
		case <-c.closed:
			return 0, net.ErrClosed
		}
		path := "/nowhere"
		b := binary.BigEndian.AppendUint32(nil, uint32(16+4+4+4+len(path)))
		b = binary.BigEndian.AppendUint32(b, 0xffffffff) // xid -1: a watch event
		b = binary.BigEndian.AppendUint64(b, 0xffffffffffffffff)
		b = binary.BigEndian.AppendUint32(b, 0) // no error
		b = binary.BigEndian.AppendUint32(b, uint32(zk.EventNodeChildrenChanged))
		b = binary.BigEndian.AppendUint32(b, uint32(zk.StateConnected))
		b = binary.BigEndian.AppendUint32(b, uint32(len(path)))
		b = append(b, path...)
		c.deafBuf = b
	}
	n := copy(p, c.deafBuf)
	c.deafBuf = c.deafBuf[n:]
	return n, nil
}

func (c *testConn) Write(p []byte) (int, error) {
	if c.deaf.Load() {
		return len(p), nil // lost on the way
	}
	return c.Conn.Write(p)
}

func (c *testConn) Close() error {
	c.closeOnce.Do(func() { close(c.closed) })
	return c.Conn.Close()
}

func (n *testNet) dial(network, addr string, timeout time.Duration) (net.Conn, error) {
	n.mu.Lock()
	defer n.mu.Unlock()
	if n.down {
		return nil, errors.New("test network is partitioned")
	}
	nc, err := net.DialTimeout(network, addr, timeout)
	if err != nil {
		return nil, err
	}
	c := &testConn{Conn: nc, closed: make(chan struct{})}
	n.conns[c] = struct{}{}
	return c, nil
}

func (n *testNet) handshake(sid int64, passwd []byte) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.passwd[sid] = passwd
}

func (n *testNet) password(sid int64) []byte {
	n.mu.Lock()
	defer n.mu.Unlock()
	return n.passwd[sid]
}

// cut closes every socket, as a server restart or a reset would.
func (n *testNet) cut() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		c.Conn.Close()
		delete(n.conns, c)
	}
}

// mute drops whatever the server sends from now on, on every open socket:
// requests arrive and are applied, their replies are lost.
func (n *testNet) mute() {
	n.mu.Lock()
	defer n.mu.Unlock()
	for c := range n.conns {
		c.muted.Store(true)
	}
}

// deafen makes the server stop hearing us on every open socket (it is
// closed on the server's side, and what we write is dropped) while the
// client goes on reading a watch event every every, as from a server that
// sends events but no longer hears us; new sockets are refused.
func (n *testNet) deafen(every time.Duration) {
	n.mu.Lock()
	defer n.mu.Unlock()
	n.down = true
	for c := range n.conns {
		c.deafEvery = every
		c.deaf.Store(true)
		c.Conn.Close()
	}
}

// partition cuts every socket and refuses new ones until heal.
func (n *testNet) partition() {
	n.cut()
	n.mu.Lock()
	n.down = true
	n.mu.Unlock()
}

func (n *testNet) heal() {
	n.mu.Lock()
	n.down = false
	n.mu.Unlock()
}

// testLogger logs to the test until it ends.
func testLogger(t *testing.T) *slog.Logger {
	w := &testWriter{t: t}
	t.Cleanup(func() { w.done.Store(true) })
	return slog.New(slog.NewTextHandler(w, &slog.HandlerOptions{Level: slog.LevelInfo}))
}

type testWriter struct {
	t    *testing.T
	done atomic.Bool
}

func (w *testWriter) Write(p []byte) (int, error) {
	if !w.done.Load() {
		w.t.Logf("%s", p)
	}
	return len(p), nil
}

func tctx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), coordtest.Wait)
	t.Cleanup(cancel)
	return ctx
}

func waitLost(t *testing.T, l coord.Lease) {
	t.Helper()
	select {
	case <-l.Lost():
	case <-time.After(coordtest.Wait):
		t.Fatalf("lease %s not lost within %v", l.Name(), coordtest.Wait)
	}
}

func isLost(l coord.Lease) bool {
	select {
	case <-l.Lost():
		return true
	default:
		return false
	}
}

// TestDisconnectKeepsLeases: a dropped connection that comes back within
// the session timeout loses nothing.
func TestDisconnectKeepsLeases(t *testing.T) {
	const timeout = 4 * time.Second
	b := newBackend(t, zkAddr(t), timeout)
	a, c := b.open(t), b.open(t)
	la, err := a.Acquire(tctx(t), "bucket/1", "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Join(tctx(t), "g", "a", []byte("addr")); err != nil {
		t.Fatal(err)
	}
	sid := a.conn.SessionID()
	for range 2 {
		b.net(a).cut()
		// The client waits a second before it redials a lone server.
		time.Sleep(100 * time.Millisecond)
		testkit.Eventually(t, "reconnected", func() error {
			if a.conn.State() != zk.StateHasSession {
				return fmt.Errorf("state %v", a.conn.State())
			}
			return nil
		})
	}
	// Longer than the session timeout: the watchdog must stay quiet.
	time.Sleep(timeout + time.Second)
	if isLost(la) {
		t.Fatal("lease lost after a short disconnection")
	}
	if got := a.conn.SessionID(); got != sid {
		t.Fatalf("session %#x replaced by %#x", sid, got)
	}
	owner, epoch, err := c.Holder(tctx(t), "bucket/1")
	if err != nil || owner != "a" || epoch != la.Epoch() {
		t.Fatalf("holder %q %d %v", owner, epoch, err)
	}
	ms, _, err := c.Members(tctx(t), "g")
	if err != nil || len(ms) != 1 {
		t.Fatalf("members %v %v", ms, err)
	}
}

// TestPartitionLosesLeases: a process cut off from every server gives its
// leases up one session timeout after it last heard from one, without
// waiting to be told its session expired; once the network heals it gets
// a new session and registers its members again.
func TestPartitionLosesLeases(t *testing.T) {
	const timeout = 2 * time.Second
	b := newBackend(t, zkAddr(t), timeout)
	a, c := b.open(t), b.open(t)
	la, err := a.Acquire(tctx(t), "bucket/2", "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Join(tctx(t), "g", "a", []byte("addr")); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	b.net(a).partition()
	select {
	case <-la.Lost():
	case <-time.After(coordtest.Wait):
		t.Fatal("lease not given up during a partition")
	}
	if d := time.Since(start); d < timeout/2 {
		t.Fatalf("lease given up after %v, before the session could have expired", d)
	}
	var lc coord.Lease
	testkit.Eventually(t, "acquire by another process", func() error {
		lc, err = c.Acquire(tctx(t), "bucket/2", "c")
		return err
	})
	if lc.Epoch() <= la.Epoch() {
		t.Fatalf("epoch %d not above %d", lc.Epoch(), la.Epoch())
	}
	testkit.Eventually(t, "member gone with the session", func() error {
		if ms, _, err := c.Members(tctx(t), "g"); err != nil || len(ms) != 0 {
			return fmt.Errorf("members %v %v", ms, err)
		}
		return nil
	})

	b.net(a).heal()
	testkit.Eventually(t, "member registered again after the partition", func() error {
		ms, _, err := c.Members(tctx(t), "g")
		if err != nil || len(ms) != 1 || ms[0].ID != "a" || string(ms[0].Data) != "addr" {
			return fmt.Errorf("members %v %v", ms, err)
		}
		return nil
	})
	if _, err := a.Acquire(tctx(t), "bucket/2", "a"); !errors.Is(err, coord.ErrHeld) {
		t.Fatalf("acquire of a lease held elsewhere: %v", err)
	}
	if isLost(lc) {
		t.Fatal("the new owner's lease was lost")
	}
}

// TestDeafServerLosesLeases: a process whose server no longer hears it,
// but which goes on receiving watch events (a one-way partition), gives
// its leases up one session timeout after the server last heard from it,
// though its connection looks alive: the server expires the session then,
// and another process takes the lease.
func TestDeafServerLosesLeases(t *testing.T) {
	const timeout = 2 * time.Second
	b := newBackend(t, zkAddr(t), timeout)
	a, c := b.open(t), b.open(t)
	la, err := a.Acquire(tctx(t), "bucket/3", "a")
	if err != nil {
		t.Fatal(err)
	}
	// Well within the client's read timeout (2/3 of the session timeout):
	// the client never sees its connection die.
	b.net(a).deafen(timeout / 8)
	var lc coord.Lease
	testkit.Eventually(t, "acquire by another process", func() error {
		lc, err = c.Acquire(tctx(t), "bucket/3", "c")
		return err
	})
	if lc.Epoch() <= la.Epoch() {
		t.Fatalf("epoch %d not above %d", lc.Epoch(), la.Epoch())
	}
	waitLost(t, la)
}

// TestReleaseSparesSuccessor: deleting a lease whose session expired must
// not delete the next owner's node, even though the path is the same and
// the request goes out on the old owner's new session.
func TestReleaseSparesSuccessor(t *testing.T) {
	b := newBackend(t, zkAddr(t), 4*time.Second)
	a, c := b.open(t), b.open(t)
	la, err := a.Acquire(tctx(t), "bucket/3", "a")
	if err != nil {
		t.Fatal(err)
	}
	b.Expire(t, a)
	waitLost(t, la)
	var lc coord.Lease
	testkit.Eventually(t, "acquire after expiry", func() error {
		lc, err = c.Acquire(tctx(t), "bucket/3", "c")
		return err
	})
	testkit.Eventually(t, "new session", func() error {
		if a.conn.State() != zk.StateHasSession {
			return fmt.Errorf("state %v", a.conn.State())
		}
		return nil
	})
	// What a delete queued before the expiry would do on the new session.
	if err := a.deleteLease(la.(*lease)); err != nil {
		t.Fatal(err)
	}
	if err := la.Release(tctx(t)); err != nil {
		t.Fatal(err)
	}
	owner, epoch, err := c.Holder(tctx(t), "bucket/3")
	if err != nil || owner != "c" || epoch != lc.Epoch() {
		t.Fatalf("holder %q %d %v, want c %d", owner, epoch, err, lc.Epoch())
	}
	if isLost(lc) {
		t.Fatal("successor's lease lost")
	}
}

// TestAbandonedAcquire: the grant reaches the server but its reply is
// lost and the caller gives up; the grant must not stay behind.
func TestAbandonedAcquire(t *testing.T) {
	b := newBackend(t, zkAddr(t), 4*time.Second)
	a, c := b.open(t), b.open(t)
	// A first grant and release, so that the muted grant below is one
	// transaction (the first grant of a name creates its epoch node first).
	l, err := a.Acquire(tctx(t), "bucket/4", "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := l.Release(tctx(t)); err != nil {
		t.Fatal(err)
	}
	b.net(a).mute()
	ctx, cancel := context.WithTimeout(context.Background(), 500*time.Millisecond)
	defer cancel()
	if _, err := a.Acquire(ctx, "bucket/4", "a"); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("acquire with lost replies: %v", err)
	}
	if owner, _, err := c.Holder(tctx(t), "bucket/4"); err != nil || owner != "a" {
		t.Fatalf("holder while the reply is lost: %q %v", owner, err)
	}
	if _, err := a.Acquire(tctx(t), "bucket/4", "a"); !errors.Is(err, coord.ErrHeld) {
		t.Fatalf("acquire while an earlier one is in flight: %v", err)
	}
	b.net(a).cut()
	testkit.Eventually(t, "abandoned grant taken back", func() error {
		owner, _, err := c.Holder(tctx(t), "bucket/4")
		if err == nil && owner != "" {
			err = fmt.Errorf("held by %q", owner)
		}
		return err
	})
	testkit.Eventually(t, "acquire by the abandoning process", func() error {
		l, err := a.Acquire(tctx(t), "bucket/4", "a")
		if err == nil {
			return l.Release(tctx(t))
		}
		return err
	})
}

// TestOwnerDeletedByOperator: deleting a lease node by hand (zkCli
// "delete") ends the lease.
func TestOwnerDeletedByOperator(t *testing.T) {
	b := newBackend(t, zkAddr(t), 4*time.Second)
	a, op := b.open(t), b.open(t)
	la, err := a.Acquire(tctx(t), "bucket/5", "a")
	if err != nil {
		t.Fatal(err)
	}
	if err := op.conn.Delete(op.leasesDir+"/"+escape("bucket/5"), -1); err != nil {
		t.Fatal(err)
	}
	waitLost(t, la)
}

// TestExpiryManyLeases: every lease of an expired session is lost, at once.
func TestExpiryManyLeases(t *testing.T) {
	b := newBackend(t, zkAddr(t), 4*time.Second)
	a := b.open(t)
	var ls []coord.Lease
	for i := range 20 {
		l, err := a.Acquire(tctx(t), fmt.Sprintf("cat/%d", i), "a")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
	}
	b.Expire(t, a)
	for _, l := range ls {
		waitLost(t, l)
	}
	for i := range 20 {
		l, err := a.Acquire(tctx(t), fmt.Sprintf("cat/%d", i), "a")
		if err != nil {
			t.Fatal(err)
		}
		if l.Epoch() <= ls[i].Epoch() {
			t.Fatalf("epoch %d not above %d", l.Epoch(), ls[i].Epoch())
		}
	}
}

// TestJoinTakenElsewhere: a member id registered by another process is
// refused, and free again once that process leaves.
func TestJoinTakenElsewhere(t *testing.T) {
	b := newBackend(t, zkAddr(t), 4*time.Second)
	a, c := b.open(t), b.open(t)
	ma, err := a.Join(tctx(t), "calligraphus", "w1", []byte("a"))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(tctx(t), "calligraphus", "w1", []byte("c")); !errors.Is(err, errMemberTaken) {
		t.Fatalf("join of an id registered elsewhere: %v", err)
	}
	if err := ma.Leave(tctx(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Join(tctx(t), "calligraphus", "w1", []byte("c")); err != nil {
		t.Fatalf("join after the other member left: %v", err)
	}
	ms, _, err := a.Members(tctx(t), "calligraphus")
	if err != nil || len(ms) != 1 || string(ms[0].Data) != "c" {
		t.Fatalf("members %v %v", ms, err)
	}
}

// TestMembersPolling: callers that list a group again and again without a
// change share one server watch, and every channel they got still closes
// at the next change, including across a dropped connection.
func TestMembersPolling(t *testing.T) {
	b := newBackend(t, zkAddr(t), 4*time.Second)
	a, c := b.open(t), b.open(t)
	for round, group := range []string{"missing", "present"} {
		if group == "present" {
			if _, err := c.Join(tctx(t), group, "first", nil); err != nil {
				t.Fatal(err)
			}
		}
		var chans []<-chan struct{}
		for i := range 50 {
			if i == 25 {
				b.net(a).cut() // the client sets its watches again
			}
			_, ch, err := a.Members(tctx(t), group)
			if err != nil {
				t.Fatal(err)
			}
			chans = append(chans, ch)
		}
		if _, err := c.Join(tctx(t), group, "w", nil); err != nil {
			t.Fatal(err)
		}
		for i, ch := range chans {
			select {
			case <-ch:
			case <-time.After(coordtest.Wait):
				t.Fatalf("round %d: channel %d not closed by a join", round, i)
			}
		}
		ms, _, err := a.Members(tctx(t), group)
		if err != nil || len(ms) != round+1 {
			t.Fatalf("members %v %v", ms, err)
		}
	}
}
