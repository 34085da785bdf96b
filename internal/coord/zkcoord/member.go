package zkcoord

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/go-zookeeper/zk"

	"github.com/freeway-dev/freeway/internal/coord"
)

// errMemberTaken reports a member id registered by another session.
var errMemberTaken = errors.New("member id registered by another process")

// membership is one Join. Its node is ephemeral, so it dies with every
// session; the maintainer creates it again on the next one.
type membership struct {
	c         *Coord
	group, id string
	groupPath string // <root>/groups/<group>
	path      string // <groupPath>/<id>: ephemeral, data = the member's data
	data      []byte

	// op serialises the ZooKeeper work on this member (Join, registering
	// again, Leave), so a late re-registration cannot follow a Leave.
	op sync.Mutex

	// Guarded by c.mu.
	joined bool  // Join succeeded
	left   bool  // Leave (or an abandoned Join) began
	gen    int64 // c.gen when the node was last created
	warned bool  // a failure to register again was logged as a warning
}

var _ coord.Membership = (*membership)(nil)

func (c *Coord) groupPath(group string) string { return c.groupsDir + "/" + escape(group) }

// Join creates the member's ephemeral node. A member id already registered,
// by this coordinator or any other session, is an error.
func (c *Coord) Join(ctx context.Context, group, member string, data []byte) (coord.Membership, error) {
	if err := checkName("group", group); err != nil {
		return nil, err
	}
	if err := checkMember(member); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err // before the id is reserved: nothing to take back
	}
	gp := c.groupPath(group)
	m := &membership{
		c:         c,
		group:     group,
		id:        member,
		groupPath: gp,
		path:      gp + "/" + escape(member),
		data:      append([]byte(nil), data...),
	}
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, coord.ErrClosed
	}
	if _, ok := c.members[m.path]; ok {
		c.mu.Unlock()
		return nil, fmt.Errorf("join %s: member %s already registered by this process", group, member)
	}
	c.members[m.path] = m // reserved until this Join is over, even if abandoned
	c.mu.Unlock()

	_, err := call(ctx, c, func() (struct{}, error) { return struct{}{}, c.join(m) }, func(struct{}) { _ = c.leave(m) })
	if err != nil {
		return nil, c.wrap(fmt.Sprintf("join %s as %s", group, member), err)
	}
	return m, nil
}

func (c *Coord) join(m *membership) error {
	m.op.Lock()
	defer m.op.Unlock()
	c.mu.Lock()
	gen := c.gen
	c.mu.Unlock()
	err := c.createMember(m)
	c.mu.Lock()
	defer c.mu.Unlock()
	if err != nil {
		if c.members[m.path] == m {
			delete(c.members, m.path)
		}
		return err
	}
	m.joined, m.gen = true, gen
	if gen != c.gen {
		// The session expired while we were creating the node.
		signal(c.kick)
	}
	return nil
}

// reregister creates m's node on the session of generation gen.
func (c *Coord) reregister(m *membership, gen int64) error {
	m.op.Lock()
	defer m.op.Unlock()
	c.mu.Lock()
	skip := m.left || c.closed || m.gen == gen
	c.mu.Unlock()
	if skip {
		return nil
	}
	if err := c.createMember(m); err != nil {
		return err
	}
	c.mu.Lock()
	m.gen = gen // if gen is already old, the next repair does it again
	m.warned = false
	c.mu.Unlock()
	c.logger.Info("member registered again", "group", m.group, "member", m.id)
	return nil
}

// createMember creates m's node, or finds it already there on our session.
func (c *Coord) createMember(m *membership) error {
	for attempt := 0; ; attempt++ {
		_, err := c.conn.Create(m.path, m.data, zk.FlagEphemeral, c.acl)
		if err == nil {
			return nil
		}
		if attempt >= 4 {
			return err
		}
		switch {
		case errors.Is(err, zk.ErrNoNode):
			if err := c.ensurePath(m.groupPath); err != nil {
				return err
			}
		case errors.Is(err, zk.ErrNodeExists):
			_, st, err := c.conn.Get(m.path)
			switch {
			case errors.Is(err, zk.ErrNoNode):
				// Gone in the meantime: try again.
			case err != nil:
				return err
			case st.EphemeralOwner == c.conn.SessionID():
				// Ours: an earlier attempt whose reply was lost.
				// The name is reserved in this process, so no other
				// Join of ours made it.
				return nil
			default:
				return errMemberTaken
			}
		case c.retryable(err):
			c.pause()
		default:
			return err
		}
	}
}

// Leave deletes the member's node. If ctx ends first the deletion carries
// on in the background; the member id stays reserved until it is done.
func (m *membership) Leave(ctx context.Context) error {
	c := m.c
	c.mu.Lock()
	if m.left || c.closed {
		c.mu.Unlock()
		return nil
	}
	m.left = true
	c.mu.Unlock()
	_, err := call(ctx, c, func() (struct{}, error) { return struct{}{}, c.leave(m) }, nil)
	if err != nil && !errors.Is(err, coord.ErrClosed) {
		return fmt.Errorf("leave %s as %s: %w", m.group, m.id, err)
	}
	return nil
}

// leave deletes m's node if our session owns it, then frees the id.
func (c *Coord) leave(m *membership) error {
	m.op.Lock()
	defer m.op.Unlock()
	c.mu.Lock()
	m.left = true
	c.mu.Unlock()
	defer func() {
		c.mu.Lock()
		if c.members[m.path] == m {
			delete(c.members, m.path)
		}
		c.mu.Unlock()
	}()
	for attempt := 0; ; attempt++ {
		if c.isClosed() {
			return nil // closing the session deletes it
		}
		_, st, err := c.conn.Get(m.path)
		if err == nil {
			if st.EphemeralOwner != c.conn.SessionID() {
				// Not ours: it died with an earlier session of ours
				// and another process has registered the id since.
				return nil
			}
			err = c.conn.Delete(m.path, st.Version)
		}
		switch {
		case err == nil, errors.Is(err, zk.ErrNoNode):
			return nil
		case (errors.Is(err, zk.ErrBadVersion) || c.retryable(err)) && attempt < 10:
			c.pause()
		default:
			return err
		}
	}
}

// Members lists the group's children with their data. The channel closes at
// the next event on the group (a join, a leave, the group's creation) and
// sometimes without a change (our session expiring): re-list when it does.
func (c *Coord) Members(ctx context.Context, group string) ([]coord.Member, <-chan struct{}, error) {
	if err := checkName("group", group); err != nil {
		return nil, nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, nil, err
	}
	gp := c.groupPath(group)
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return nil, nil, coord.ErrClosed
	}
	// Registered before the read, so no event after it can be missed.
	ch, ok := c.watches[gp]
	if !ok {
		ch = make(chan struct{})
		c.watches[gp] = ch
	}
	// With a watch known to be set and not yet fired, a plain read will
	// do: that watch fires at the next change after our read too. Arming
	// one per call instead would pile up the client's per-call watch
	// channels for callers that poll without a change.
	seen, ok := c.groupEvents[gp]
	if !ok {
		c.groupEvents[gp] = 0 // from now on onEvent counts this group's events
	}
	arm := !c.armed[gp]
	c.mu.Unlock()
	ms, err := call(ctx, c, func() ([]coord.Member, error) {
		ms, err := c.list(gp, arm)
		if err == nil && arm {
			c.mu.Lock()
			// Armed only if no event on the group came in meanwhile:
			// it may have been our watch firing.
			if c.groupEvents[gp] == seen {
				c.armed[gp] = true
			}
			c.mu.Unlock()
		}
		return ms, err
	}, nil)
	if err != nil {
		return nil, nil, c.wrap("list members of "+group, err)
	}
	return ms, ch, nil
}

// list reads the group and, if arm, sets a watch on it: a child watch, or
// an exists watch while nobody has joined and the group node is missing.
func (c *Coord) list(gp string, arm bool) ([]coord.Member, error) {
	for attempt := 0; ; attempt++ {
		children, err := c.children(gp, arm)
		if errors.Is(err, zk.ErrNoNode) {
			exists, eerr := c.exists(gp, arm)
			switch {
			case eerr == nil && !exists:
				return []coord.Member{}, nil
			case eerr == nil && attempt < 4:
				continue // created between the two reads
			case eerr != nil:
				err = eerr
			}
		}
		if err != nil {
			if attempt < 4 && c.retryable(err) {
				c.pause()
				continue
			}
			return nil, err
		}
		ms := make([]coord.Member, 0, len(children))
		for _, child := range children {
			id, err := unescape(child)
			if err != nil {
				c.logger.Debug("ignore foreign znode in a group", "group", gp, "znode", child)
				continue
			}
			data, _, err := c.conn.Get(gp + "/" + child)
			if errors.Is(err, zk.ErrNoNode) {
				continue // left since the listing; the watch fires for it
			}
			if err != nil {
				return nil, err
			}
			ms = append(ms, coord.Member{ID: id, Data: data})
		}
		sort.Slice(ms, func(i, j int) bool { return ms[i].ID < ms[j].ID })
		return ms, nil
	}
}

func (c *Coord) children(p string, watch bool) ([]string, error) {
	if watch {
		children, _, _, err := c.conn.ChildrenW(p)
		return children, err
	}
	children, _, err := c.conn.Children(p)
	return children, err
}

func (c *Coord) exists(p string, watch bool) (bool, error) {
	if watch {
		ok, _, _, err := c.conn.ExistsW(p)
		return ok, err
	}
	ok, _, err := c.conn.Exists(p)
	return ok, err
}
