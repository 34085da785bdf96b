package zkcoord

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/go-zookeeper/zk"

	"github.com/freeway-dev/freeway/internal/coord"
)

// Coord is a coord.Coord on one ZooKeeper session (renewed after expiry).
type Coord struct {
	cfg    config
	logger *slog.Logger
	acl    []zk.ACL
	link   *link
	conn   *zk.Conn
	events <-chan zk.Event // unused but for Close: closed when the client stops

	leasesDir, epochsDir, groupsDir string

	up      chan struct{} // closed at the first session
	kick    chan struct{} // wakes the maintainer (capacity 1)
	dogKick chan struct{} // wakes the watchdog (capacity 1)
	done    chan struct{} // closed by Close
	wg      sync.WaitGroup

	// mu guards everything below. It is never held across a ZooKeeper
	// call: the client calls onEvent, which takes mu, from its receive
	// loop, and a call waits for that loop.
	mu          sync.Mutex
	closed      bool
	hadSession  bool
	connected   bool                     // a session is up on a live connection
	gen         int64                    // number of session expiries seen
	leases      map[string]*lease        // by lease znode: granted, or being acquired
	stale       map[*lease]struct{}      // given up while our session may live on: nodes to delete
	rearm       map[*lease]struct{}      // granted leases whose watch fired without a deletion
	members     map[string]*membership   // by member znode
	watches     map[string]chan struct{} // by group znode: closed at the group's next event
	groupEvents map[string]uint64        // by group znode: events seen, to tell a watch still armed
	armed       map[string]bool          // by group znode: a server watch is set and has not fired
}

var _ coord.Coord = (*Coord)(nil)

// options are test hooks; Open uses the zero value.
type options struct {
	dial        zk.Dialer                            // default net.DialTimeout
	onHandshake func(sessionID int64, passwd []byte) // sees every new session's credentials
}

// closeWait bounds how long Close waits for the client's goroutines.
const closeWait = 5 * time.Second

// Open connects to the ensemble a zk:// URL names and creates its root if
// missing. It fails, rather than waits, when no server grants a session
// within one session timeout (at least a second). logger may be nil.
func Open(rawURL string, logger *slog.Logger) (*Coord, error) {
	return open(rawURL, logger, options{})
}

func open(rawURL string, logger *slog.Logger, opts options) (*Coord, error) {
	cfg, err := parseURL(rawURL)
	if err != nil {
		return nil, err
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	c := &Coord{
		cfg:         cfg,
		logger:      logger.With("component", "coord", "coord", cfg.String()),
		acl:         zk.WorldACL(zk.PermAll),
		link:        newLink(opts.dial, opts.onHandshake),
		leasesDir:   cfg.root + "/leases",
		epochsDir:   cfg.root + "/epochs",
		groupsDir:   cfg.root + "/groups",
		up:          make(chan struct{}),
		kick:        make(chan struct{}, 1),
		dogKick:     make(chan struct{}, 1),
		done:        make(chan struct{}),
		leases:      map[string]*lease{},
		stale:       map[*lease]struct{}{},
		rearm:       map[*lease]struct{}{},
		members:     map[string]*membership{},
		watches:     map[string]chan struct{}{},
		groupEvents: map[string]uint64{},
		armed:       map[string]bool{},
	}
	conn, events, err := zk.Connect(cfg.servers, cfg.sessionTimeout,
		zk.WithDialer(c.link.Dial),
		zk.WithLogger(zkLogger{c.logger}),
		zk.WithLogInfo(false),
		// The event channel holds six events and drops the rest; the
		// callback sees every one, in order, on the receive loop.
		zk.WithEventCallback(c.onEvent))
	if err != nil {
		return nil, fmt.Errorf("connect to %s: %w", cfg, err)
	}
	c.conn, c.events = conn, events
	c.wg.Add(2)
	go c.watchdog()
	go c.maintainer()

	bound := max(cfg.sessionTimeout, time.Second)
	timer := time.NewTimer(bound)
	defer timer.Stop()
	select {
	case <-c.up:
	case <-timer.C:
		_ = c.Close() // the connect error is the one to report
		return nil, fmt.Errorf("connect to %s: no ZooKeeper server granted a session within %v", cfg, bound)
	}
	ctx, cancel := context.WithTimeout(context.Background(), bound)
	defer cancel()
	_, err = call(ctx, c, func() (struct{}, error) {
		for _, p := range []string{c.leasesDir, c.epochsDir, c.groupsDir} {
			if err := c.ensurePath(p); err != nil {
				return struct{}{}, fmt.Errorf("create %s: %w", p, err)
			}
		}
		return struct{}{}, nil
	}, nil)
	if err != nil {
		_ = c.Close() // the open error is the one to report
		return nil, fmt.Errorf("open %s: %w", cfg, err)
	}
	return c, nil
}

// String returns the canonical URL.
func (c *Coord) String() string { return c.cfg.String() }

// Close ends the session, which makes the server delete every lease and
// membership node of this coordinator at once, closes every Lost and
// Members channel, and waits for all goroutines, ours and the client's.
func (c *Coord) Close() error {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil
	}
	c.closed = true
	close(c.done)
	for _, l := range c.leases {
		c.lose(l)
	}
	for p, ch := range c.watches {
		close(ch)
		delete(c.watches, p)
	}
	c.mu.Unlock()

	c.conn.Close() // sends closeSession and waits (up to a second) for the reply
	c.link.shutdown()
	timer := time.NewTimer(closeWait)
	defer timer.Stop()
drain:
	for {
		select {
		case _, ok := <-c.events:
			if !ok {
				break drain
			}
		case <-timer.C:
			c.logger.Warn("zookeeper client did not stop in time", "waited", closeWait)
			break drain
		}
	}
	c.wg.Wait()
	return nil
}

func (c *Coord) isClosed() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.closed
}

// onEvent sees every client event, on the client's receive loop, before
// the replies that follow it; it must not block or call the client.
func (c *Coord) onEvent(ev zk.Event) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if ev.Type == zk.EventSession {
		c.onSession(ev)
		return
	}
	// Any event on a group, including the client dropping its watches
	// at expiry, wakes its watchers: a spurious wake-up costs a listing,
	// a missed one would leave a watcher blind.
	if ch, ok := c.watches[ev.Path]; ok {
		close(ch)
		delete(c.watches, ev.Path)
	}
	if n, ok := c.groupEvents[ev.Path]; ok {
		c.groupEvents[ev.Path] = n + 1
		delete(c.armed, ev.Path)
	}
	if l := c.leases[ev.Path]; l != nil && l.granted() {
		switch ev.Type {
		case zk.EventNodeDeleted:
			// We removed l from leases before deleting its node
			// ourselves, so this is someone else: an operator
			// freeing the bucket, say.
			c.logger.Warn("lease node deleted by another client", "lease", l.name, "epoch", l.epoch)
			c.lose(l)
		case zk.EventNodeDataChanged, zk.EventNodeCreated:
			c.rearm[l] = struct{}{}
			signal(c.kick)
		}
	}
}

// onSession follows the session; the caller holds mu.
func (c *Coord) onSession(ev zk.Event) {
	switch ev.State {
	case zk.StateHasSession:
		if !c.hadSession {
			c.hadSession = true
			close(c.up)
		} else if !c.connected {
			c.logger.Info("zookeeper connection re-established", "server", ev.Server)
		}
		c.connected = true
		// The client sets its watches again on a new connection; if that
		// failed it only logs, so arm them again ourselves rather than
		// trust them.
		clear(c.armed)
		for p, n := range c.groupEvents {
			c.groupEvents[p] = n + 1 // and do not trust arms in flight
		}
		signal(c.kick)
		signal(c.dogKick)
	case zk.StateDisconnected:
		if c.connected {
			c.connected = false
			c.logger.Warn("zookeeper connection lost", "server", ev.Server)
			signal(c.dogKick)
		}
	case zk.StateExpired:
		// The server deleted our ephemeral nodes; the client is about
		// to open a new session. Leases end here; memberships are
		// registered again by the maintainer on the new session.
		c.gen++
		n := 0
		for _, l := range c.leases {
			if !l.isLost {
				n++
			}
			c.lose(l)
		}
		clear(c.stale)
		clear(c.rearm)
		c.logger.Warn("zookeeper session expired", "leases_lost", n, "members_to_register", len(c.members))
		signal(c.kick)
	}
}

// watchdog gives every lease up once the server may have expired our
// session, even if we cannot reach a server to be told so: a partitioned
// process would otherwise believe forever that it still owns its buckets.
// It never calls the client, which blocks while disconnected.
func (c *Coord) watchdog() {
	defer c.wg.Done()
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-c.dogKick:
		case <-timer.C:
		}
		if wait := c.checkHeard(); wait > 0 {
			timer.Reset(wait)
		} else {
			timer.Stop()
		}
	}
}

// checkHeard gives leases up once a session timeout has passed since a
// server last heard from us, as far as we know (link.sinceHeard),
// connected or not: a connection that still brings watch events does not
// say the server hears us. It returns how long until the next check, or 0
// when there is nothing to wait for.
func (c *Coord) checkHeard() time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || !c.hadSession {
		return 0
	}
	timeout := c.link.sessionTimeout(c.cfg.sessionTimeout)
	if wait := timeout - c.link.sinceHeard(); wait > 0 {
		return wait
	}
	n := 0
	for _, l := range c.leases {
		if l.isLost {
			continue
		}
		n++
		if l.granted() {
			// If the session survives after all, its node is still
			// there; the maintainer deletes it on reconnection, or now
			// if we are still connected.
			c.stale[l] = struct{}{}
		}
		c.lose(l)
	}
	if n > 0 {
		c.logger.Warn("no zookeeper server answered for a session timeout, leases given up", "leases", n, "session_timeout", timeout, "connected", c.connected)
		signal(c.kick)
	}
	// Check again: leases granted later are at risk while no server
	// answers.
	return timeout / 3
}

// maintainer does the ZooKeeper work that events call for but onEvent may
// not do: registering members again on a new session, deleting the nodes
// of leases given up while the session lived on, re-arming lease watches.
func (c *Coord) maintainer() {
	defer c.wg.Done()
	retry := time.NewTimer(time.Hour)
	retry.Stop()
	defer retry.Stop()
	for {
		select {
		case <-c.done:
			return
		case <-c.kick:
		case <-retry.C:
		}
		if !c.repair() {
			retry.Reset(time.Second)
		}
	}
}

// repair reports whether everything is in order.
func (c *Coord) repair() bool {
	c.mu.Lock()
	if c.closed || !c.connected {
		c.mu.Unlock()
		return true // the next session event kicks us
	}
	gen := c.gen
	var stale, rearm []*lease
	for l := range c.stale {
		stale = append(stale, l)
	}
	for l := range c.rearm {
		rearm = append(rearm, l)
	}
	var todo []*membership
	for _, m := range c.members {
		if m.joined && !m.left && m.gen != gen {
			todo = append(todo, m)
		}
	}
	c.mu.Unlock()

	ok := true
	for _, l := range stale {
		err := c.deleteLease(l)
		c.mu.Lock()
		if err == nil {
			delete(c.stale, l)
		}
		c.mu.Unlock()
		if err != nil {
			ok = false
			c.logger.Warn("delete given-up lease", "lease", l.name, "err", err)
		}
	}
	for _, l := range rearm {
		c.mu.Lock()
		delete(c.rearm, l)
		c.mu.Unlock()
		if err := c.watchLease(l); err != nil && !errors.Is(err, errLost) {
			ok = false
			c.mu.Lock()
			if !l.isLost {
				c.rearm[l] = struct{}{}
			}
			c.mu.Unlock()
		}
	}
	for _, m := range todo {
		if err := c.reregister(m, gen); err != nil {
			ok = false
			// Retried every second: warn once, not every time.
			c.mu.Lock()
			level := slog.LevelDebug
			if !m.warned {
				m.warned, level = true, slog.LevelWarn
			}
			c.mu.Unlock()
			c.logger.Log(context.Background(), level, "register member again", "group", m.group, "member", m.id, "err", err)
		}
	}
	return ok
}

// call runs fn, which talks to ZooKeeper, on a goroutine of its own so that
// ctx bounds the wait: the client queues requests while disconnected and
// has no deadline of its own. If ctx ends first, fn still finishes in the
// background and, if it succeeded, undo (when not nil) takes its effect
// back, so an Acquire or Join the caller gave up on leaves no node behind.
// fn runs even when ctx has ended already: fn is what ends an Acquire's
// or a Join's reservation of its name, and a Leave or a Release with an
// ended context still takes its node away (callers that would only read
// check ctx themselves first).
func call[T any](ctx context.Context, c *Coord, fn func() (T, error), undo func(T)) (T, error) {
	var zero T
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return zero, coord.ErrClosed
	}
	c.wg.Add(1) // under mu, so never after Close has begun to wait
	c.mu.Unlock()

	type result struct {
		v   T
		err error
	}
	out := make(chan result)
	abandoned := make(chan struct{})
	go func() {
		defer c.wg.Done()
		v, err := fn()
		select {
		case out <- result{v, err}:
		case <-abandoned:
			if err == nil && undo != nil {
				undo(v)
			}
		}
	}()
	select {
	case r := <-out:
		return r.v, r.err
	case <-ctx.Done():
		close(abandoned)
		return zero, ctx.Err()
	}
}

// wrap names the operation, and reports the client's own shutdown errors as
// coord.ErrClosed once we are closed.
func (c *Coord) wrap(op string, err error) error {
	if c.isClosed() && (errors.Is(err, zk.ErrConnectionClosed) || errors.Is(err, zk.ErrClosing) || errors.Is(err, errLinkClosed)) {
		err = coord.ErrClosed
	}
	return fmt.Errorf("%s: %w", op, err)
}

// retryable reports whether err leaves the outcome of a request unknown
// (its reply was lost with the connection, or it failed while no server
// was reachable) so that trying again, idempotently, is the way to learn it.
// The client reports a failed socket write as the bare net error.
func (c *Coord) retryable(err error) bool {
	var netErr net.Error
	return (errors.Is(err, zk.ErrConnectionClosed) || errors.Is(err, zk.ErrSessionExpired) ||
		errors.Is(err, zk.ErrNoServer) || errors.Is(err, zk.ErrSessionMoved) ||
		errors.Is(err, net.ErrClosed) || errors.Is(err, io.EOF) || errors.As(err, &netErr)) && !c.isClosed()
}

// pause waits a little before a retry, or until Close.
func (c *Coord) pause() {
	t := time.NewTimer(100 * time.Millisecond)
	defer t.Stop()
	select {
	case <-t.C:
	case <-c.done:
	}
}

// ensurePath creates p and its missing ancestors as persistent nodes.
func (c *Coord) ensurePath(p string) error {
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			if _, err := c.conn.Create(p[:i], nil, 0, c.acl); err != nil && !errors.Is(err, zk.ErrNodeExists) {
				return err
			}
		}
	}
	return nil
}

func signal(ch chan struct{}) {
	select {
	case ch <- struct{}{}:
	default:
	}
}

// zkLogger routes the client's own messages to slog at debug level: it
// logs every failed dial, once a second during an outage, and our state
// transitions are logged above it with more context.
type zkLogger struct{ l *slog.Logger }

func (z zkLogger) Printf(format string, args ...any) {
	z.l.Debug("zookeeper client", "detail", fmt.Sprintf(format, args...))
}
