// Package inproc implements coord.Coord inside one process: the embedded
// default (inproc://). A Hub plays the part of the ZooKeeper ensemble; each
// Session is one client of it, with its own leases and memberships, so a
// test can run several "processes" against one hub and expire a session.
//
// Nothing survives the process. Epochs start from the wall clock in
// nanoseconds so that they still grow across restarts of the process,
// unless the clock was set back between two runs (an NTP step): then the
// new run's epochs are below the last run's. Writers take an epoch above
// every one they find in a bucket, so no segment sorts behind what
// readers have passed; the copier leaves the last run's temporary files
// at its destination until the clock passes their epoch.
package inproc

import (
	"context"

	"fmt"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
)

// Hub is the shared state of every session.
type Hub struct {
	mu        sync.Mutex
	lastEpoch int64
	leases    map[string]*lease
	groups    map[string]*group
}

type group struct {
	members map[string]*membership
	changed chan struct{}
}

// NewHub returns an empty hub.
func NewHub() *Hub {
	return &Hub{leases: map[string]*lease{}, groups: map[string]*group{}}
}

// Session opens a client session on the hub.
func (h *Hub) Session() *Session {
	return &Session{hub: h, leases: map[*lease]bool{}, members: map[*membership]bool{}}
}

// Session is a coord.Coord.
type Session struct {
	hub     *Hub
	closed  bool
	leases  map[*lease]bool
	members map[*membership]bool
}

var _ coord.Coord = (*Session)(nil)

type lease struct {
	s     *Session
	name  string
	owner string
	epoch int64
	lost  chan struct{}
}

type membership struct {
	s     *Session
	group string
	id    string
	data  []byte
}

func checkName(name string) error {
	if name == "" || strings.HasPrefix(name, "/") || strings.HasSuffix(name, "/") || strings.Contains(name, "//") {
		return fmt.Errorf("invalid coordination name %q", name)
	}
	return nil
}

func (s *Session) String() string { return "inproc://" }

func (s *Session) Acquire(ctx context.Context, name, owner string) (coord.Lease, error) {
	if err := checkName(name); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return nil, coord.ErrClosed
	}
	if l, ok := h.leases[name]; ok {
		return nil, fmt.Errorf("acquire %s: %w (by %s)", name, coord.ErrHeld, l.owner)
	}
	epoch := max(time.Now().UnixNano(), h.lastEpoch+1)
	h.lastEpoch = epoch
	l := &lease{s: s, name: name, owner: owner, epoch: epoch, lost: make(chan struct{})}
	h.leases[name] = l
	s.leases[l] = true
	return l, nil
}

func (s *Session) Holder(ctx context.Context, name string) (string, int64, error) {
	if err := checkName(name); err != nil {
		return "", 0, err
	}
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return "", 0, coord.ErrClosed
	}
	if l, ok := h.leases[name]; ok {
		return l.owner, l.epoch, nil
	}
	return "", 0, nil
}

func (l *lease) Name() string          { return l.name }
func (l *lease) Owner() string         { return l.owner }
func (l *lease) Epoch() int64          { return l.epoch }
func (l *lease) Lost() <-chan struct{} { return l.lost }

func (l *lease) Release(ctx context.Context) error {
	h := l.s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropLease(l)
	return nil
}

// dropLease ends l; the caller holds h.mu.
func (h *Hub) dropLease(l *lease) {
	if cur, ok := h.leases[l.name]; ok && cur == l {
		delete(h.leases, l.name)
	}
	if l.s.leases[l] {
		delete(l.s.leases, l)
		close(l.lost)
	}
}

func (h *Hub) group(name string) *group {
	g, ok := h.groups[name]
	if !ok {
		g = &group{members: map[string]*membership{}, changed: make(chan struct{})}
		h.groups[name] = g
	}
	return g
}

// notify wakes the watchers of g; the caller holds h.mu.
func (g *group) notify() {
	close(g.changed)
	g.changed = make(chan struct{})
}

func (s *Session) Join(ctx context.Context, groupName, member string, data []byte) (coord.Membership, error) {
	if err := checkName(groupName); err != nil {
		return nil, err
	}
	if member == "" || strings.Contains(member, "/") {
		return nil, fmt.Errorf("invalid member id %q", member)
	}
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return nil, coord.ErrClosed
	}
	g := h.group(groupName)
	if _, ok := g.members[member]; ok {
		return nil, fmt.Errorf("join %s: member %s already registered", groupName, member)
	}
	m := &membership{s: s, group: groupName, id: member, data: append([]byte(nil), data...)}
	g.members[member] = m
	s.members[m] = true
	g.notify()
	return m, nil
}

func (m *membership) Leave(ctx context.Context) error {
	h := m.s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	h.dropMember(m)
	return nil
}

// dropMember removes m; the caller holds h.mu.
func (h *Hub) dropMember(m *membership) {
	g := h.group(m.group)
	if cur, ok := g.members[m.id]; ok && cur == m {
		delete(g.members, m.id)
		g.notify()
	}
	delete(m.s.members, m)
}

func (s *Session) Members(ctx context.Context, groupName string) ([]coord.Member, <-chan struct{}, error) {
	if err := checkName(groupName); err != nil {
		return nil, nil, err
	}
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return nil, nil, coord.ErrClosed
	}
	g := h.group(groupName)
	out := make([]coord.Member, 0, len(g.members))
	for _, m := range g.members {
		out = append(out, coord.Member{ID: m.id, Data: append([]byte(nil), m.data...)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, g.changed, nil
}

// Expire plays a session expiry: every lease of the session is lost, and
// its memberships vanish and are registered again, as the ZooKeeper
// implementation does on a new session.
func (s *Session) Expire() {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	for l := range s.leases {
		h.dropLease(l)
	}
	for m := range s.members {
		g := h.group(m.group)
		if cur, ok := g.members[m.id]; ok && cur == m {
			delete(g.members, m.id)
			g.notify()
		}
	}
	for m := range s.members {
		g := h.group(m.group)
		if _, taken := g.members[m.id]; !taken {
			g.members[m.id] = m
			g.notify()
		}
	}
}

func (s *Session) Close() error {
	h := s.hub
	h.mu.Lock()
	defer h.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	for l := range s.leases {
		h.dropLease(l)
	}
	for m := range s.members {
		h.dropMember(m)
	}
	return nil
}
