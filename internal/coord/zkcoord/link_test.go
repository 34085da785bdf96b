package zkcoord

import (
	"encoding/binary"
	"io"
	"net"
	"sync"
	"testing"
	"time"
)

// connectReply builds a server's connect reply frame.
func connectReply(timeoutMs int32, sid int64, passwd []byte) []byte {
	var b []byte
	b = binary.BigEndian.AppendUint32(b, uint32(4+4+8+4+len(passwd)+1))
	b = binary.BigEndian.AppendUint32(b, 0)
	b = binary.BigEndian.AppendUint32(b, uint32(timeoutMs))
	b = binary.BigEndian.AppendUint64(b, uint64(sid))
	b = binary.BigEndian.AppendUint32(b, uint32(len(passwd)))
	b = append(b, passwd...)
	return append(b, 0) // readOnly
}

func TestParseConnectResponse(t *testing.T) {
	pw := []byte("0123456789abcdef")
	frame := connectReply(4000, 0x1234, pw)
	for cut := 0; cut < len(frame)-1; cut++ {
		_, complete, err := parseConnectResponse(frame[:cut])
		if err != nil {
			t.Fatalf("prefix %d: %v", cut, err)
		}
		if complete != (cut >= len(frame)-1) {
			t.Fatalf("prefix %d: complete=%v", cut, complete)
		}
	}
	r, complete, err := parseConnectResponse(frame)
	if err != nil || !complete || r.timeout != 4*time.Second || r.sessionID != 0x1234 || string(r.passwd) != string(pw) {
		t.Fatalf("parse = %+v %v %v", r, complete, err)
	}
	bogus := connectReply(4000, 1, make([]byte, 1000))
	if _, _, err := parseConnectResponse(bogus); err == nil {
		t.Fatal("a 1000-byte password was accepted")
	}
}

// TestLinkSniffs feeds a connect reply, a watch event and a ping reply
// through a linkConn in small reads: the handshake and the ping reply, not
// the event, say when the server last heard from us.
func TestLinkSniffs(t *testing.T) {
	server, client := net.Pipe()
	var gotSID int64
	k := newLink(func(string, string, time.Duration) (net.Conn, error) { return client, nil },
		func(sid int64, _ []byte) { gotSID = sid })
	nc, err := k.Dial("tcp", "x", time.Second)
	if err != nil {
		t.Fatal(err)
	}
	frame := connectReply(2500, 42, []byte("0123456789abcdef"))
	event := binary.BigEndian.AppendUint32(nil, 16+4+4+4)
	event = binary.BigEndian.AppendUint32(event, 0xffffffff) // xid -1: a watch event
	event = append(event, make([]byte, 8+4+4+4+4)...)
	pong := binary.BigEndian.AppendUint32(nil, 16)
	pong = binary.BigEndian.AppendUint32(pong, 0xfffffffe) // xid -2: a ping reply
	pong = append(pong, make([]byte, 8+4)...)
	ping := binary.BigEndian.AppendUint32(nil, 8)
	ping = binary.BigEndian.AppendUint32(ping, 0xfffffffe)
	ping = binary.BigEndian.AppendUint32(ping, opPing)
	sent := make(chan []byte, 1) // what the server sends next
	go func() {
		for b := range sent {
			for i := range b {
				_, _ = server.Write(b[i : i+1]) // the client reading it is the check
			}
		}
		server.Close()
	}()
	go func() { _, _ = io.Copy(io.Discard, server) }()
	read := func(n int) {
		t.Helper()
		if _, err := io.ReadFull(nc, make([]byte, n)); err != nil {
			t.Fatal(err)
		}
	}

	connectAt := time.Now()
	if _, err := nc.Write([]byte("connect request")); err != nil {
		t.Fatal(err)
	}
	sent <- frame
	read(len(frame))
	if gotSID != 42 || k.sessionTimeout(time.Hour) != 2500*time.Millisecond {
		t.Fatalf("session %d timeout %v", gotSID, k.sessionTimeout(time.Hour))
	}
	heardAt := func() time.Time { return time.Unix(0, k.heardAt().wall) }
	heard := heardAt()
	if heard.Before(connectAt) || heard.After(time.Now()) {
		t.Fatalf("last heard %v, want when the connect request was sent (%v)", heard, connectAt)
	}

	time.Sleep(time.Millisecond) // so that the ping's send time differs
	pingAt := time.Now()
	if _, err := nc.Write(ping); err != nil {
		t.Fatal(err)
	}
	sent <- event
	read(len(event))
	if got := heardAt(); !got.Equal(heard) {
		t.Fatalf("a watch event moved last heard from %v to %v", heard, got)
	}
	sent <- pong
	close(sent)
	read(len(pong))
	if got := heardAt(); got.Before(pingAt) || got.After(time.Now()) {
		t.Fatalf("last heard %v after the ping reply, want when the ping was sent (%v)", got, pingAt)
	}
	k.shutdown()
	if _, err := k.Dial("tcp", "x", time.Second); err == nil {
		t.Fatal("dial after shutdown succeeded")
	}
}

// TestLinkGate: on a reconnection to the same session the first read after
// the handshake waits for the client's SetWatches write (or a quarter of
// the session timeout); on a new session it does not wait. No upper time
// bound: whether a connection has a gate, and whether the SetWatches
// write opened it, is read from the connection, and the waits that must
// happen are long enough that no stall of the machine ends them early.
func TestLinkGate(t *testing.T) {
	var servers []net.Conn
	k := newLink(func(string, string, time.Duration) (net.Conn, error) {
		server, client := net.Pipe()
		servers = append(servers, server)
		return client, nil
	}, nil)
	defer k.shutdown()
	// connect dials, plays the server's connect reply (session sid with
	// timeoutMs) and a frame after it, and returns the client's socket
	// once the handshake is read.
	connect := func(sid int64, timeoutMs int32) *linkConn {
		t.Helper()
		nc, err := k.Dial("tcp", "x", time.Second)
		if err != nil {
			t.Fatal(err)
		}
		server := servers[len(servers)-1]
		reply := connectReply(timeoutMs, sid, []byte("0123456789abcdef"))
		go func() {
			_, _ = server.Write(reply) // the client reading it is the check
			_, _ = server.Write([]byte("next"))
		}()
		go func() { _, _ = io.Copy(io.Discard, server) }()
		if _, err := io.ReadFull(nc, make([]byte, len(reply))); err != nil {
			t.Fatal(err)
		}
		return nc.(*linkConn)
	}
	// readNext starts the read after the handshake, returning a channel
	// that yields its error once it is done.
	readNext := func(nc net.Conn) <-chan error {
		done := make(chan error, 1)
		go func() {
			_, err := io.ReadFull(nc, make([]byte, 4))
			done <- err
		}()
		return done
	}
	setWatches := binary.BigEndian.AppendUint32(nil, 8)
	setWatches = binary.BigEndian.AppendUint32(setWatches, 7)
	setWatches = binary.BigEndian.AppendUint32(setWatches, opSetWatches)

	if nc := connect(5, 4000); nc.gate != nil {
		t.Fatal("the first session's connection has a gate")
	} else if err := <-readNext(nc); err != nil {
		t.Fatal(err)
	}

	// A reconnection with a session timeout of 400s: the gate holds the
	// read for 100s unless the SetWatches write opens it.
	nc := connect(5, 400000)
	if nc.gate == nil {
		t.Fatal("a reconnection to the same session has no gate")
	}
	done := readNext(nc)
	time.Sleep(200 * time.Millisecond)
	select {
	case err := <-done:
		t.Fatalf("the reconnection's read did not wait for SetWatches (%v)", err)
	default:
	}
	if _, err := nc.Write(setWatches); err != nil {
		t.Fatal(err)
	}
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	select {
	case <-nc.gate:
	default:
		t.Fatal("the read went on, but the SetWatches write did not open the gate")
	}

	// Without SetWatches the read waits a quarter of the 4s timeout.
	start := time.Now()
	if err := <-readNext(connect(5, 4000)); err != nil {
		t.Fatal(err)
	}
	if d := time.Since(start); d < time.Second {
		t.Fatalf("reconnection without SetWatches read after %v, want a quarter of the 4s session timeout", d)
	}

	if nc := connect(6, 4000); nc.gate != nil {
		t.Fatal("a new session's connection has a gate")
	} else if err := <-readNext(nc); err != nil {
		t.Fatal(err)
	}
}

// TestSessionTimedOnBothClocks: the watchdog times the session out on
// the longer of the two clocks' measures. The wall clock stepped back an
// hour (NTP, a clock set by hand) during a partition must not keep the
// leases past the session timeout, when the server has expired the
// session and other processes own them; nor may the monotonic clock,
// standing still while a paused VM or a suspended machine is stopped,
// once the wall clock is set right after the resume.
func TestSessionTimedOnBothClocks(t *testing.T) {
	var mu sync.Mutex
	now := stamp{mono: 1, wall: time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC).UnixNano()}
	advance := func(mono, wall time.Duration) {
		mu.Lock()
		defer mu.Unlock()
		now.mono += int64(mono)
		now.wall += int64(wall)
	}
	k := newLink(nil, nil)
	k.clock = func() stamp {
		mu.Lock()
		defer mu.Unlock()
		return now
	}
	const timeout = 10 * time.Second
	k.heard(k.now()) // the server answers a ping, then is heard no more

	advance(3*time.Second, 3*time.Second)
	if got := k.sinceHeard(); got != 3*time.Second {
		t.Fatalf("heard %v ago with both clocks 3s on, want 3s", got)
	}
	advance(8*time.Second, 8*time.Second-time.Hour) // NTP steps the wall clock back
	if got := k.sinceHeard(); got < timeout {
		t.Fatalf("heard %v ago after 11s with the wall clock stepped back an hour: the leases outlive the %v session", got, timeout)
	}

	k.heard(k.now())
	advance(time.Millisecond, time.Minute) // a VM paused for a minute, its time of day set right on resume
	if got := k.sinceHeard(); got < timeout {
		t.Fatalf("heard %v ago after a minute's pause: the leases outlive the %v session", got, timeout)
	}
}
