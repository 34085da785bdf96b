// Package coord is the contract for coordination: who owns which bucket
// (leases with fencing epochs) and who is alive (group membership). It is
// in-process on one machine and ZooKeeper on a cluster.
//
// Semantics, which every implementation keeps:
//
//   - A lease is held by at most one owner at a time. Holding it is a
//     belief that can end at any moment (a ZooKeeper session expiry): the
//     holder watches Lost and stops acting as owner when it closes.
//   - Each grant of a lease has an epoch strictly greater than every earlier
//     grant of the same lease name, so whatever an owner writes can carry
//     its epoch and a newer owner's writes sort after an older one's.
//   - Members stay registered until they Leave or their coordinator is
//     closed; after a session expiry the implementation registers them again
//     by itself. Watchers see every change as a closed channel.
//
// Names are slash-separated, non-empty, without leading or trailing slash.
// coordtest holds the conformance suite every implementation passes.
package coord

import (
	"context"
	"errors"
)

// ErrHeld is returned by Acquire when another owner holds the lease.
var ErrHeld = errors.New("lease held by another owner")

// ErrClosed is returned once the coordinator is closed.
var ErrClosed = errors.New("coordinator closed")

// Coord coordinates processes.
type Coord interface {
	// Acquire takes the lease name for owner, or fails with ErrHeld. It
	// does not wait.
	Acquire(ctx context.Context, name, owner string) (Lease, error)

	// Holder reports the current owner of lease name and its epoch, or ""
	// if nobody holds it.
	Holder(ctx context.Context, name string) (owner string, epoch int64, err error)

	// Join registers member in group with data (an address, say) until
	// Leave is called or the coordinator is closed.
	Join(ctx context.Context, group, member string, data []byte) (Membership, error)

	// Members lists the members of group, sorted by ID, and returns a
	// channel that is closed at the next change of the group.
	Members(ctx context.Context, group string) ([]Member, <-chan struct{}, error)

	// String describes the coordinator for logs, for example its URL.
	String() string

	// Close releases every lease and membership of this coordinator.
	Close() error
}

// Lease is one grant of a lease.
type Lease interface {
	Name() string
	Owner() string
	// Epoch is the fencing epoch of this grant.
	Epoch() int64
	// Lost is closed when the lease is no longer held: released, expired
	// with the session, or the coordinator closed.
	Lost() <-chan struct{}
	// Release gives the lease up. Releasing a lost lease is not an error.
	Release(ctx context.Context) error
}

// Member is a member of a group.
type Member struct {
	ID   string
	Data []byte
}

// Membership is one member's registration in a group.
type Membership interface {
	Leave(ctx context.Context) error
}
