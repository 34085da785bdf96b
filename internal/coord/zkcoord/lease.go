package zkcoord

import (
	"context"
	"errors"
	"fmt"

	"github.com/go-zookeeper/zk"

	"github.com/freeway-dev/freeway/internal/coord"
)

// errLost reports a lease that ended while it was being granted or checked.
var errLost = errors.New("lease lost while being granted")

// lease is one grant. Its fields after lost are written once, under c.mu,
// before the lease is handed to anyone.
type lease struct {
	c         *Coord
	name      string
	owner     string
	path      string // <root>/leases/<name>: ephemeral, data = owner
	epochPath string // <root>/epochs/<name>: persistent, bumped per grant
	lost      chan struct{}

	// Guarded by c.mu.
	isLost  bool
	epoch   int64 // zxid of the grant; 0 while being acquired
	version int32 // version of the epoch node this grant left: the CAS token for deletion
}

var _ coord.Lease = (*lease)(nil)

func (l *lease) Name() string          { return l.name }
func (l *lease) Owner() string         { return l.owner }
func (l *lease) Lost() <-chan struct{} { return l.lost }

func (l *lease) Epoch() int64 {
	l.c.mu.Lock()
	defer l.c.mu.Unlock()
	return l.epoch
}

func (l *lease) granted() bool { return l.epoch != 0 }

// lose ends l locally; the caller holds c.mu. A lease being acquired keeps
// its reservation of the name until its Acquire is over.
func (c *Coord) lose(l *lease) {
	if !l.isLost {
		l.isLost = true
		close(l.lost)
	}
	if l.granted() && c.leases[l.path] == l {
		delete(c.leases, l.path)
	}
	delete(c.rearm, l)
}

// Acquire creates the lease node, ephemeral on our session, and bumps the
// name's epoch node in the same transaction; the epoch is that
// transaction's zxid (see doc.go).
func (c *Coord) Acquire(ctx context.Context, name, owner string) (coord.Lease, error) {
	if err := checkName("lease", name); err != nil {
		return nil, err
	}
	if owner == "" {
		// Holder reports "" for a free lease.
		return nil, fmt.Errorf("acquire %s: empty owner", name)
	}
	if err := ctx.Err(); err != nil {
		return nil, err // before the name is reserved: nothing to take back
	}
	enc := escape(name)
	l := &lease{
		c:         c,
		name:      name,
		owner:     owner,
		path:      c.leasesDir + "/" + enc,
		epochPath: c.epochsDir + "/" + enc,
		lost:      make(chan struct{}),
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, coord.ErrClosed
	}
	if cur, ok := c.leases[l.path]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("acquire %s: %w: %s (in this process)", name, coord.ErrHeld, cur.owner)
	}
	c.leases[l.path] = l // reserved until this Acquire is over, even if abandoned
	c.mu.Unlock()

	_, err := call(ctx, c, func() (struct{}, error) { return struct{}{}, c.grant(l) }, func(struct{}) { c.giveUp(l) })
	if err != nil {
		return nil, c.wrap("acquire "+name, err)
	}
	return l, nil
}

// grant does Acquire's ZooKeeper work and settles the reservation.
func (c *Coord) grant(l *lease) (err error) {
	defer func() {
		if err != nil {
			c.mu.Lock()
			if c.leases[l.path] == l {
				delete(c.leases, l.path)
			}
			c.mu.Unlock()
		}
	}()
	epoch, version, err := c.createLease(l)
	if err != nil {
		return err
	}
	c.mu.Lock()
	l.version = version
	if c.closed || l.isLost {
		// Lost while being granted (expiry, watchdog, Close): the grant
		// may sit on our new session, so take it back.
		c.mu.Unlock()
		if err := c.deleteLease(l); err != nil {
			c.logger.Warn("delete lease lost while being granted", "lease", l.name, "err", err)
		}
		return errLost
	}
	l.epoch = epoch
	c.mu.Unlock()

	if err := c.watchLease(l); err != nil {
		if errors.Is(err, errLost) {
			return err
		}
		// Not confirmed, but most likely fine: the maintainer checks
		// again, and expiry or the watchdog end it if not.
		c.mu.Lock()
		if !l.isLost {
			c.rearm[l] = struct{}{}
		}
		c.mu.Unlock()
		signal(c.kick)
	}
	return nil
}

// createLease creates l's node and returns the grant's epoch and the epoch
// node's new version.
func (c *Coord) createLease(l *lease) (epoch int64, version int32, err error) {
	data := []byte(l.owner)
	for attempt := 0; ; attempt++ {
		c.mu.Lock()
		lost := l.isLost
		c.mu.Unlock()
		if lost {
			return 0, 0, errLost
		}
		res, err := c.conn.Multi(
			&zk.CreateRequest{Path: l.path, Data: data, Acl: c.acl, Flags: zk.FlagEphemeral},
			&zk.SetDataRequest{Path: l.epochPath, Data: data, Version: -1},
		)
		if err == nil {
			if len(res) != 2 || res[1].Stat == nil {
				return 0, 0, fmt.Errorf("unexpected reply to the grant transaction: %d results", len(res))
			}
			// One transaction, one zxid: it is also the lease node's
			// Czxid, which is what Holder reports.
			return res[1].Stat.Mzxid, res[1].Stat.Version, nil
		}
		if attempt >= 4 {
			return 0, 0, err
		}
		switch {
		case errors.Is(err, zk.ErrNoNode):
			// First grant of this name: its epoch node does not
			// exist yet (or someone removed our directories).
			if err := c.ensurePath(c.leasesDir); err != nil {
				return 0, 0, err
			}
			if err := c.ensurePath(l.epochPath); err != nil {
				return 0, 0, err
			}
		case errors.Is(err, zk.ErrNodeExists):
			owner, st, err := c.conn.Get(l.path)
			switch {
			case errors.Is(err, zk.ErrNoNode):
				// Released in the meantime: try again.
			case err != nil:
				return 0, 0, err
			case st.EphemeralOwner == c.conn.SessionID():
				// Our own session's node, yet not a lease we hold
				// (l reserves the name in this process): an earlier
				// attempt whose reply was lost, or a lease given up
				// during a disconnection the session survived. No
				// one else can be granted it while it exists, so
				// remove it and take a fresh grant.
				if err := c.conn.Delete(l.path, st.Version); err != nil && !errors.Is(err, zk.ErrNoNode) {
					return 0, 0, err
				}
			default:
				return 0, 0, fmt.Errorf("%w: %s", coord.ErrHeld, owner)
			}
		case c.retryable(err):
			// The reply was lost; the grant may have happened. The
			// next attempt finds out (NodeExists on our session).
			c.pause()
		default:
			return 0, 0, err
		}
	}
}

// watchLease checks that l's node is still the one granted to l and sets a
// watch on it, so that a deletion by anyone else ends l.
func (c *Coord) watchLease(l *lease) error {
	ok, st, _, err := c.conn.ExistsW(l.path)
	if err != nil {
		return err
	}
	if !ok || st.Czxid != l.epoch {
		c.mu.Lock()
		c.lose(l)
		c.mu.Unlock()
		return errLost
	}
	return nil
}

// Holder reads the lease node. Like any ZooKeeper read it may lag the
// leader by a little when served by a follower.
func (c *Coord) Holder(ctx context.Context, name string) (string, int64, error) {
	if err := checkName("lease", name); err != nil {
		return "", 0, err
	}
	if err := ctx.Err(); err != nil {
		return "", 0, err
	}
	path := c.leasesDir + "/" + escape(name)
	type holder struct {
		owner string
		epoch int64
	}
	h, err := call(ctx, c, func() (holder, error) {
		for attempt := 0; ; attempt++ {
			data, st, err := c.conn.Get(path)
			switch {
			case err == nil:
				return holder{owner: string(data), epoch: st.Czxid}, nil
			case errors.Is(err, zk.ErrNoNode):
				return holder{}, nil
			case c.retryable(err) && attempt < 4:
				c.pause()
			default:
				return holder{}, err
			}
		}
	}, nil)
	if err != nil {
		return "", 0, c.wrap("read holder of "+name, err)
	}
	return h.owner, h.epoch, nil
}

// Release ends the lease at once (Lost closes) and then deletes its node,
// only if no later grant exists. If ctx ends first the deletion carries on
// in the background.
func (l *lease) Release(ctx context.Context) error {
	c := l.c
	c.mu.Lock()
	if l.isLost || c.closed {
		c.mu.Unlock()
		return nil
	}
	c.lose(l)
	c.mu.Unlock()
	_, err := call(ctx, c, func() (struct{}, error) { return struct{}{}, c.deleteLease(l) }, nil)
	if err != nil {
		if errors.Is(err, coord.ErrClosed) {
			return nil // closing the session deletes the node
		}
		c.keepStale(l)
		return fmt.Errorf("release %s: %w", l.name, err)
	}
	return nil
}

// giveUp takes back a grant whose Acquire was abandoned.
func (c *Coord) giveUp(l *lease) {
	c.mu.Lock()
	c.lose(l)
	c.mu.Unlock()
	if err := c.deleteLease(l); err != nil {
		c.keepStale(l)
	}
}

// keepStale hands l's node to the maintainer to delete.
func (c *Coord) keepStale(l *lease) {
	c.mu.Lock()
	if !c.closed {
		c.stale[l] = struct{}{}
	}
	c.mu.Unlock()
	signal(c.kick)
}

// deleteLease deletes l's node if, and only if, l is still the latest grant
// of its name: every grant bumps the epoch node in the grant's own
// transaction, so checking its version in the deleting transaction makes
// the deletion a compare-and-swap. A plain delete could remove a
// successor's node: after our session expired, a delete we had queued is
// sent on the client's new session, where nothing marks it as stale.
func (c *Coord) deleteLease(l *lease) error {
	for attempt := 0; ; attempt++ {
		if c.isClosed() {
			return nil
		}
		_, err := c.conn.Multi(
			&zk.CheckVersionRequest{Path: l.epochPath, Version: l.version},
			&zk.DeleteRequest{Path: l.path, Version: -1},
		)
		switch {
		case err == nil, errors.Is(err, zk.ErrNoNode), errors.Is(err, zk.ErrBadVersion):
			// Deleted, or already gone, or a later grant exists.
			return nil
		case c.retryable(err) && attempt < 10:
			// The check makes a retry safe.
			c.pause()
		default:
			return err
		}
	}
}
