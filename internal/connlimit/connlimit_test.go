package connlimit

import (
	"errors"
	"io"
	"net"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
)

func listen(t *testing.T, maxConns int) (*Listener, *Metrics) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	m := NewMetrics(prometheus.NewRegistry())
	l := New(ln, Options{Name: "test", MaxConns: maxConns, Metrics: m})
	t.Cleanup(func() { l.Close() })
	return l, m
}

// accepted dials l and returns both ends.
func accepted(t *testing.T, l *Listener) (client net.Conn, server *Conn) {
	t.Helper()
	client, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close() })
	c, err := l.Accept()
	if err != nil {
		t.Fatal(err)
	}
	return client, c.(*Conn)
}

// closedByPeer waits (generously) for c's peer to close it.
func closedByPeer(t *testing.T, c net.Conn) bool {
	t.Helper()
	c.SetReadDeadline(time.Now().Add(10 * time.Second))
	_, err := c.Read(make([]byte, 1))
	return err == io.EOF || errors.Is(err, syscall.ECONNRESET)
}

func TestEvictsLongestIdle(t *testing.T) {
	l, m := listen(t, 3)
	c0, s0 := accepted(t, l)
	c1, s1 := accepted(t, l)
	_, s2 := accepted(t, l)
	// s0 is busy; s1 became idle before s2 did.
	if !s0.SetIdle(false) || !s2.SetIdle(false) || !s2.SetIdle(true) {
		t.Fatal("SetIdle on open connections")
	}
	_, s3 := accepted(t, l)
	if !closedByPeer(t, c1) {
		t.Fatal("the longest idle connection was not closed")
	}
	if s1.SetIdle(false) || !s1.Evicted() || s0.Evicted() {
		t.Fatal("eviction not reported to the evicted connection alone")
	}
	if got := testutil.ToFloat64(m.evicted.WithLabelValues("test")); got != 1 {
		t.Fatalf("evictions counted %v", got)
	}
	// s0 is still served.
	go func() { _, _ = s0.Write([]byte("x")) }() // c0 reading "x" is the check
	c0.SetReadDeadline(time.Now().Add(10 * time.Second))
	if _, err := c0.Read(make([]byte, 1)); err != nil {
		t.Fatalf("busy connection disturbed: %v", err)
	}
	if got := testutil.ToFloat64(m.open.WithLabelValues("test")); got != 3 {
		t.Fatalf("open connections %v, want 3", got)
	}
	s3.Close()
	s3.Close()
	if got := testutil.ToFloat64(m.open.WithLabelValues("test")); got != 2 {
		t.Fatalf("open connections after a double close %v, want 2", got)
	}
}

func TestRefusesNewcomerWhenAllBusy(t *testing.T) {
	l, m := listen(t, 2)
	_, s0 := accepted(t, l)
	_, s1 := accepted(t, l)
	s0.SetIdle(false)
	s1.SetIdle(false)
	late, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	got := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err == nil {
			got <- c
		}
	}()
	if !closedByPeer(t, late) {
		t.Fatal("newcomer not closed while every connection is busy")
	}
	if n := testutil.ToFloat64(m.refused.WithLabelValues("test")); n != 1 {
		t.Fatalf("refusals counted %v", n)
	}
	// A place freed is taken by the next client.
	s1.Close()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case sc := <-got:
		sc.Close()
	case <-time.After(10 * time.Second):
		t.Fatal("no connection accepted after a place was freed")
	}
}

// acceptedFrom is accepted with the client on the loopback address ip
// (Linux routes all of 127/8 to loopback).
func acceptedFrom(t *testing.T, l *Listener, ip string) (client net.Conn, server *Conn) {
	t.Helper()
	d := net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP(ip)}}
	client, err := d.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Skipf("cannot dial from %s: %v", ip, err)
	}
	t.Cleanup(func() { client.Close() })
	got := make(chan net.Conn, 1)
	go func() {
		if c, err := l.Accept(); err == nil {
			got <- c
		}
	}()
	select {
	case c := <-got:
		return client, c.(*Conn)
	case <-time.After(10 * time.Second):
		t.Fatalf("connection from %s not accepted", ip)
		return nil, nil
	}
}

// TestPeerHoldingEveryConnectionLosesOne: at the cap with every
// connection busy and all of one peer's, another peer's newcomer is
// accepted and the first peer's connection busy longest is closed; the
// first peer's newcomers then take nothing from the other's, idle.
// fullAndBusy fills l's three places with connections from 127.0.0.2,
// busy from the second, then the first, then the third.
func fullAndBusy(t *testing.T, l *Listener) (clients []net.Conn, servers []*Conn) {
	t.Helper()
	for range 3 {
		c, s := acceptedFrom(t, l, "127.0.0.2")
		clients, servers = append(clients, c), append(servers, s)
	}
	for _, i := range []int{1, 0, 2} {
		servers[i].SetIdle(false)
	}
	return clients, servers
}

func TestPeerHoldingEveryConnectionLosesOne(t *testing.T) {
	l, m := listen(t, 3)
	clients, servers := fullAndBusy(t, l)
	_, other := acceptedFrom(t, l, "127.0.0.1")
	if !closedByPeer(t, clients[1]) {
		t.Fatal("the connection busy longest was not closed")
	}
	if !servers[1].Evicted() || servers[0].Evicted() || servers[2].Evicted() {
		t.Fatal("eviction not reported to the evicted connection alone")
	}
	if got := testutil.ToFloat64(m.evicted.WithLabelValues("test")); got != 1 {
		t.Fatalf("evictions counted %v", got)
	}
	// The first peer's newcomer is closed, though the other's connection
	// is idle.
	late, err := (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer late.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	if !closedByPeer(t, late) {
		t.Fatal("the first peer's newcomer took a place")
	}
	if other.Evicted() {
		t.Fatal("the other peer's idle connection was closed for the first peer's newcomer")
	}
}

// TestProcessingConnectionNotEvicted: a connection whose call is being
// processed is not closed for a newcomer, though it is busy longest:
// its call may have taken effect already, and closed, its answer would
// be lost (a stock client would send it again). The longest busy one
// still reading a call is.
func TestProcessingConnectionNotEvicted(t *testing.T) {
	l, _ := listen(t, 3)
	clients, servers := fullAndBusy(t, l)
	servers[1].SetProcessing(true)
	_, other := acceptedFrom(t, l, "127.0.0.1")
	if !closedByPeer(t, clients[0]) {
		t.Fatal("the connection busy longest still reading was not closed")
	}
	if servers[1].Evicted() || !servers[0].Evicted() || servers[2].Evicted() {
		t.Fatal("a connection processing its call was evicted, or not the one reading longest")
	}
	// Processed, it is busy again (its answer being written), and may go
	// for a newcomer: the youngest busy, after the other.
	servers[1].SetProcessing(false)
	other.SetIdle(false)
	_, _ = acceptedFrom(t, l, "127.0.0.3")
	if !closedByPeer(t, clients[2]) || servers[1].Evicted() {
		t.Fatal("the connection reading longest was not closed before the one done processing")
	}
}

func TestPeerKey(t *testing.T) {
	for _, tc := range []struct{ addr, want string }{
		{"192.0.2.7:1463", "192.0.2.7"},
		{"[::ffff:192.0.2.7]:1", "192.0.2.7"},
		{"[2001:db8:1:2:aaaa::1]:1463", "2001:db8:1:2::/64"},
		{"[2001:db8:1:2:bbbb::9]:9", "2001:db8:1:2::/64"},
	} {
		a, err := net.ResolveTCPAddr("tcp", tc.addr)
		if err != nil {
			t.Fatal(err)
		}
		if got := PeerKey(a); got != tc.want {
			t.Errorf("PeerKey(%s) = %q, want %q", tc.addr, got, tc.want)
		}
	}
}

// flaky fails Accept with errs, then accepts from the real listener.
type flaky struct {
	net.Listener
	mu   sync.Mutex
	errs []error
}

func (f *flaky) Accept() (net.Conn, error) {
	f.mu.Lock()
	if len(f.errs) > 0 {
		err := f.errs[0]
		f.errs = f.errs[1:]
		f.mu.Unlock()
		return nil, err
	}
	f.mu.Unlock()
	return f.Listener.Accept()
}

func TestRetriesTemporaryAcceptErrors(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	emfile := &net.OpError{Op: "accept", Net: "tcp", Err: &osSyscallError{syscall.EMFILE}}
	f := &flaky{Listener: ln, errs: []error{emfile, emfile, syscall.ECONNABORTED, syscall.ENFILE}}
	m := NewMetrics(nil)
	l := New(f, Options{Name: "test", MaxConns: 4, Metrics: m})
	defer l.Close()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sc, err := l.Accept()
	if err != nil {
		t.Fatalf("temporary errors ended Accept: %v", err)
	}
	sc.Close()
	if n := testutil.ToFloat64(m.acceptEr.WithLabelValues("test")); n != 4 {
		t.Fatalf("accept errors counted %v, want 4", n)
	}
	// A lasting error is returned.
	f.mu.Lock()
	f.errs = []error{errors.New("broken")}
	f.mu.Unlock()
	if _, err := l.Accept(); err == nil || err.Error() != "broken" {
		t.Fatalf("lasting error: %v", err)
	}
}

// osSyscallError wraps an errno as os.SyscallError does.
type osSyscallError struct{ errno syscall.Errno }

func (e *osSyscallError) Error() string { return "accept4: " + e.errno.Error() }
func (e *osSyscallError) Unwrap() error { return e.errno }

func TestCloseEndsBackoff(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	errs := make([]error, 1000)
	for i := range errs {
		errs[i] = syscall.EMFILE
	}
	l := New(&flaky{Listener: ln, errs: errs}, Options{MaxConns: 1})
	done := make(chan error, 1)
	go func() { _, err := l.Accept(); done <- err }()
	time.Sleep(20 * time.Millisecond)
	l.Close()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Accept returned a connection")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("Accept kept retrying after Close")
	}
}

func TestMetricsShared(t *testing.T) {
	reg := prometheus.NewRegistry()
	a, b := NewMetrics(reg), NewMetrics(reg)
	a.evicted.WithLabelValues("x").Inc()
	if got := testutil.ToFloat64(b.evicted.WithLabelValues("x")); got != 1 {
		t.Fatalf("second registration does not share the counter: %v", got)
	}
}
