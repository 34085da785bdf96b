package connlimit

import (
	"container/list"
	"errors"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/freeway-dev/freeway/internal/backoff"
	"github.com/freeway-dev/freeway/internal/ratelog"
)

// Backoff bounds between retries of a failing Accept.
const (
	minBackoff = 5 * time.Millisecond
	maxBackoff = time.Second
)

// Temporary reports whether an Accept error passes by itself (out of file
// descriptors or buffers, a connection aborted before it was taken, a
// timeout), so that the listener should retry rather than stop.
func Temporary(err error) bool {
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, e := range temporaryErrnos {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// Metrics counts what the listeners of a process do, by listener name.
type Metrics struct {
	open     *prometheus.GaugeVec
	idle     *prometheus.GaugeVec
	evicted  *prometheus.CounterVec
	refused  *prometheus.CounterVec
	acceptEr *prometheus.CounterVec
}

// NewMetrics returns the listener metrics registered with reg (nil: not
// exported). Several listeners, and several components of one process,
// share one set: collectors already registered with reg are reused.
func NewMetrics(reg prometheus.Registerer) *Metrics {
	m := &Metrics{
		open: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_listener_connections",
			Help: "Open connections, by listener."}, []string{"listener"}),
		idle: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "freeway_listener_idle_connections",
			Help: "Open connections waiting between calls (the ones closed first at max_connections), by listener."}, []string{"listener"}),
		evicted: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_listener_connections_evicted_total",
			Help: "Connections closed to make room for a new client at max_connections (the longest idle, or the longest busy of the host holding the most), by listener."}, []string{"listener"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_listener_connections_refused_total",
			Help: "New connections closed at once at max_connections because no connection could make room (every one busy in a call, none of a host holding more than the newcomer's), by listener."}, []string{"listener"}),
		acceptEr: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "freeway_listener_accept_errors_total",
			Help: "Accept errors that pass (out of file descriptors, say), retried with backoff, by listener."}, []string{"listener"}),
	}
	if reg != nil {
		m.open = Register(reg, m.open)
		m.idle = Register(reg, m.idle)
		m.evicted = Register(reg, m.evicted)
		m.refused = Register(reg, m.refused)
		m.acceptEr = Register(reg, m.acceptEr)
	}
	return m
}

// Register registers c with reg, or returns the equal collector already
// registered there, so that components sharing a registry share metrics.
// It panics on any other registration error (a programming error, as
// with MustRegister).
func Register[C prometheus.Collector](reg prometheus.Registerer, c C) C {
	if err := reg.Register(c); err != nil {
		var are prometheus.AlreadyRegisteredError
		if errors.As(err, &are) {
			if old, ok := are.ExistingCollector.(C); ok {
				return old
			}
		}
		panic(err)
	}
	return c
}

// Options configure a Listener.
type Options struct {
	// Name labels the listener in metrics and logs ("agent", "serving").
	Name string
	// MaxConns caps open connections (at least 1).
	MaxConns int
	// Log receives rate-limited warnings; nil discards.
	Log *slog.Logger
	// Metrics, shared by the process's listeners; nil: not counted.
	Metrics *Metrics
}

// Listener is a net.Listener with a connection cap and idle-first
// eviction; its Accept returns *Conn.
type Listener struct {
	ln   net.Listener
	name string
	max  int
	warn *ratelog.Limiter

	open, evicted, refused, acceptErr interface {
		Add(float64)
	}
	idleGauge prometheus.Gauge

	done      chan struct{}
	closeOnce sync.Once

	mu    sync.Mutex
	n     int
	idle  list.List // *Conn, longest idle first
	busy  list.List // *Conn, longest busy first
	peers map[string]*peer
}

// peer counts the open connections of one remote host.
type peer struct {
	host string
	n    int
}

// New wraps ln.
func New(ln net.Listener, opts Options) *Listener {
	if opts.Metrics == nil {
		opts.Metrics = NewMetrics(nil)
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.DiscardHandler)
	}
	l := &Listener{
		ln:    ln,
		name:  opts.Name,
		max:   max(opts.MaxConns, 1),
		warn:  ratelog.New(opts.Log, time.Minute, 5),
		done:  make(chan struct{}),
		peers: map[string]*peer{},
	}
	m := opts.Metrics
	l.open = m.open.WithLabelValues(opts.Name)
	l.idleGauge = m.idle.WithLabelValues(opts.Name)
	l.evicted = m.evicted.WithLabelValues(opts.Name)
	l.refused = m.refused.WithLabelValues(opts.Name)
	l.acceptErr = m.acceptEr.WithLabelValues(opts.Name)
	return l
}

// Addr is the listener's address.
func (l *Listener) Addr() net.Addr { return l.ln.Addr() }

// Close stops accepting; open connections stay open.
func (l *Listener) Close() error {
	l.closeOnce.Do(func() { close(l.done) })
	return l.ln.Close()
}

// Accept waits for a connection and returns it as a *Conn, idle. At the
// cap it closes the longest-idle connection to make room, or, when every
// connection is busy, closes the newcomer and waits for the next one.
// Temporary errors are retried; the error returned is a lasting one.
func (l *Listener) Accept() (net.Conn, error) {
	bo := backoff.New(minBackoff, maxBackoff)
	for {
		c, err := l.ln.Accept()
		if err != nil {
			select {
			case <-l.done:
				return nil, err
			default:
			}
			if !Temporary(err) {
				return nil, err
			}
			delay := bo.Next()
			l.acceptErr.Add(1)
			l.warn.Warn("accept", "accept failed, retrying", "listener", l.name, "err", err, "retry_in", delay)
			t := time.NewTimer(delay)
			select {
			case <-l.done:
				t.Stop()
				return nil, err
			case <-t.C:
			}
			continue
		}
		bo.Reset()
		lc, victim, busy := l.admit(c)
		if victim != nil {
			l.evicted.Add(1)
			_ = victim.Conn.Close() // evicted: its server goroutine sees the close
			if busy {
				l.warn.Warn("evict_busy", "connection limit reached with no connection idle, closed the longest busy one of the host holding the most",
					"listener", l.name, "max_connections", l.max, "closed", victim.RemoteAddr().String(), "new", c.RemoteAddr().String())
			} else {
				l.warn.Warn("evict", "connection limit reached, closed the longest idle connection",
					"listener", l.name, "max_connections", l.max, "closed", victim.RemoteAddr().String(), "new", c.RemoteAddr().String())
			}
		}
		if lc == nil {
			l.refused.Add(1)
			_ = c.Close() // refused before anything was read
			l.warn.Warn("refuse", "connection limit reached with every connection busy, new connection closed",
				"listener", l.name, "max_connections", l.max, "remote", c.RemoteAddr().String())
			continue
		}
		return lc, nil
	}
}

// admit registers c, making room when at the cap: by evicting the
// longest-idle connection of a peer holding at least as many as c's
// does, or, when there is none, the longest-busy connection of the peer
// holding the most, if that is more than one more than c's. So a peer
// never makes room at the expense of one holding fewer connections,
// and one holding every connection busy (stalled in calls it never
// finishes) does not lock the others out. It returns nil when there is
// no such connection; busy says the victim was busy.
func (l *Listener) admit(c net.Conn) (lc *Conn, victim *Conn, busy bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	host := PeerKey(c.RemoteAddr())
	p := l.peers[host]
	if p == nil {
		p = &peer{host: host}
	}
	if l.n >= l.max {
		victim = l.victimLocked(p)
		if victim == nil {
			return nil, nil, false
		}
		busy = victim.belem != nil
		victim.evicted = true
		l.forgetLocked(victim)
	}
	l.peers[host] = p
	p.n++
	lc = &Conn{Conn: c, l: l, peer: p}
	lc.elem = l.idle.PushBack(lc)
	l.n++
	l.open.Add(1)
	l.idleGauge.Set(float64(l.idle.Len()))
	return lc, victim, busy
}

// victimLocked picks the connection to close for a newcomer of p at the
// cap (see admit), or nil. It runs only at the cap.
func (l *Listener) victimLocked(p *peer) *Conn {
	for e := l.idle.Front(); e != nil; e = e.Next() {
		if c := e.Value.(*Conn); c.peer.n >= p.n {
			return c
		}
	}
	var top *peer
	for _, o := range l.peers {
		if top == nil || o.n > top.n {
			top = o
		}
	}
	if top == nil || top.n <= p.n+1 {
		return nil
	}
	// top has no idle connection: it would have been taken above.
	for e := l.busy.Front(); e != nil; e = e.Next() {
		if c := e.Value.(*Conn); c.peer == top {
			return c
		}
	}
	return nil
}

// PeerKey names the peer a remote address belongs to, for bounds that
// one peer must not escape by opening more connections: its IPv4
// address, whatever the port, or its IPv6 /64 (a host may be given a
// whole /64, so that one address of it is as good as another).
func PeerKey(a net.Addr) string {
	ta, ok := a.(*net.TCPAddr)
	if !ok {
		if a == nil {
			return ""
		}
		return a.String()
	}
	if ip4 := ta.IP.To4(); ip4 != nil {
		return ip4.String()
	}
	return ta.IP.Mask(net.CIDRMask(64, 128)).String() + "/64"
}

func (l *Listener) forgetLocked(c *Conn) {
	if c.gone {
		return
	}
	c.gone = true
	if c.elem != nil {
		l.idle.Remove(c.elem)
		c.elem = nil
	}
	if c.belem != nil {
		l.busy.Remove(c.belem)
		c.belem = nil
	}
	if c.peer.n--; c.peer.n == 0 {
		delete(l.peers, c.peer.host)
	}
	l.n--
	l.open.Add(-1)
	l.idleGauge.Set(float64(l.idle.Len()))
}

// Conn is an accepted connection.
type Conn struct {
	net.Conn
	l *Listener
	// Guarded by l.mu.
	elem  *list.Element // in l.idle while idle
	belem *list.Element // in l.busy while busy, but for processing
	// processing: busy with a call being processed (SetProcessing), in
	// neither list.
	processing bool
	peer       *peer
	gone       bool // closed or evicted: no longer counted
	evicted    bool
}

// SetIdle says whether the connection is waiting between calls (and so
// may be closed to make room for a new client) or busy in a call. It
// reports false when the connection has been closed already, evicted or
// not.
func (c *Conn) SetIdle(idle bool) bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.gone {
		return false
	}
	switch {
	case idle && c.elem == nil:
		c.elem = l.idle.PushBack(c)
		if c.belem != nil {
			l.busy.Remove(c.belem)
			c.belem = nil
		}
		c.processing = false
	case !idle && c.elem != nil:
		l.idle.Remove(c.elem)
		c.elem = nil
		c.belem = l.busy.PushBack(c)
	}
	l.idleGauge.Set(float64(l.idle.Len()))
	return true
}

// SetProcessing says whether the connection's call, read whole, is being
// processed: then it is not closed for a newcomer, however long it has
// been busy, for the call may have taken effect already and its answer
// would be lost (a client would send it again). Done, it is busy again,
// as the youngest (its answer being written). It reports false when the
// connection has been closed already.
func (c *Conn) SetProcessing(on bool) bool {
	l := c.l
	l.mu.Lock()
	defer l.mu.Unlock()
	if c.gone {
		return false
	}
	switch {
	case on && c.belem != nil:
		l.busy.Remove(c.belem)
		c.belem, c.processing = nil, true
	case !on && c.processing:
		c.belem, c.processing = l.busy.PushBack(c), false
	}
	return true
}

// Idle is the number of idle connections.
func (l *Listener) Idle() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.idle.Len()
}

// Evicted reports whether the listener closed the connection to make
// room for a new client.
func (c *Conn) Evicted() bool {
	c.l.mu.Lock()
	defer c.l.mu.Unlock()
	return c.evicted
}

// Close closes the connection and frees its place.
func (c *Conn) Close() error {
	c.l.mu.Lock()
	c.l.forgetLocked(c)
	c.l.mu.Unlock()
	return c.Conn.Close()
}
