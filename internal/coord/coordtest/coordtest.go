// Package coordtest is the conformance suite for coord.Coord. Every
// implementation runs it: in-process always, ZooKeeper whenever
// FREEWAY_TEST_ZK names a server (and always under `make test`).
package coordtest

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/testkit"
)

// Backend is one shared coordination service (an inproc hub, a ZooKeeper
// root) on which a test opens several sessions, as several processes would.
type Backend interface {
	// Session opens a new session; the backend closes it at cleanup.
	Session(t *testing.T) coord.Coord
	// Expire makes the server expire c's session, as a long network
	// partition would.
	Expire(t *testing.T, c coord.Coord)
}

// Wait is how long the suite waits for an asynchronous effect (a watch
// firing, an expiry noticed). Generous: it bounds a failure, it is not a
// performance assertion.
const Wait = 30 * time.Second

// Run runs the suite; newBackend returns a fresh, empty backend.
func Run(t *testing.T, newBackend func(t *testing.T) Backend) {
	tests := []struct {
		name string
		fn   func(t *testing.T, b Backend)
	}{
		{"LeaseIsExclusive", testExclusive},
		{"EpochsGrow", testEpochsGrow},
		{"CloseReleases", testCloseReleases},
		{"ExpiryLosesLeases", testExpiry},
		{"Membership", testMembership},
		{"MembershipSurvivesExpiry", testMembershipExpiry},
		{"InvalidNames", testInvalid},
		{"UseAfterClose", testUseAfterClose},
		{"EndedContext", testEndedContext},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tc.fn(t, newBackend(t))
		})
	}
}

func ctx(t *testing.T) context.Context {
	c, cancel := context.WithTimeout(context.Background(), Wait)
	t.Cleanup(cancel)
	return c
}

func waitClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(Wait):
		t.Fatalf("%s: not signalled within %v", what, Wait)
	}
}

func notClosed(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
		t.Fatalf("%s: signalled, want not", what)
	default:
	}
}

func testExclusive(t *testing.T, b Backend) {
	a, c := b.Session(t), b.Session(t)
	la, err := a.Acquire(ctx(t), "calligraphus/access/0", "writer-a")
	if err != nil {
		t.Fatal(err)
	}
	if la.Name() != "calligraphus/access/0" || la.Owner() != "writer-a" || la.Epoch() <= 0 {
		t.Fatalf("lease %s owner %s epoch %d", la.Name(), la.Owner(), la.Epoch())
	}
	if _, err := c.Acquire(ctx(t), "calligraphus/access/0", "writer-b"); !errors.Is(err, coord.ErrHeld) {
		t.Fatalf("second acquire: %v, want ErrHeld", err)
	}
	if _, err := a.Acquire(ctx(t), "calligraphus/access/0", "writer-a"); !errors.Is(err, coord.ErrHeld) {
		t.Fatalf("re-acquire by the holder: %v, want ErrHeld", err)
	}
	owner, epoch, err := c.Holder(ctx(t), "calligraphus/access/0")
	if err != nil || owner != "writer-a" || epoch != la.Epoch() {
		t.Fatalf("holder = %q %d %v", owner, epoch, err)
	}
	if owner, _, err := c.Holder(ctx(t), "calligraphus/access/1"); err != nil || owner != "" {
		t.Fatalf("holder of a free lease = %q %v", owner, err)
	}
	// Another name is independent.
	if _, err := c.Acquire(ctx(t), "calligraphus/access/1", "writer-b"); err != nil {
		t.Fatal(err)
	}
	notClosed(t, la.Lost(), "held lease")
	if err := la.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, la.Lost(), "released lease")
	if err := la.Release(ctx(t)); err != nil {
		t.Fatalf("second release: %v", err)
	}
	var lb coord.Lease
	testkit.Eventually(t, "acquire after release", func() error {
		lb, err = c.Acquire(ctx(t), "calligraphus/access/0", "writer-b")
		return err
	})
	if lb.Epoch() <= la.Epoch() {
		t.Fatalf("new epoch %d not above old %d", lb.Epoch(), la.Epoch())
	}
}

func testEpochsGrow(t *testing.T, b Backend) {
	sessions := []coord.Coord{b.Session(t), b.Session(t)}
	var last int64
	for i := range 10 {
		l, err := sessions[i%2].Acquire(ctx(t), "puma/x/3", fmt.Sprint("owner", i))
		if err != nil {
			t.Fatal(err)
		}
		if l.Epoch() <= last {
			t.Fatalf("grant %d: epoch %d not above %d", i, l.Epoch(), last)
		}
		last = l.Epoch()
		if err := l.Release(ctx(t)); err != nil {
			t.Fatal(err)
		}
	}
}

func testCloseReleases(t *testing.T, b Backend) {
	a, c := b.Session(t), b.Session(t)
	la, err := a.Acquire(ctx(t), "l", "a")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Join(ctx(t), "g", "a", nil); err != nil {
		t.Fatal(err)
	}
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, la.Lost(), "lease of a closed session")
	testkit.Eventually(t, "acquire after close", func() error {
		_, err := c.Acquire(ctx(t), "l", "c")
		return err
	})
	testkit.Eventually(t, "member gone after close", func() error {
		ms, _, err := c.Members(ctx(t), "g")
		if err == nil && len(ms) != 0 {
			err = fmt.Errorf("members %v", ms)
		}
		return err
	})
}

func testExpiry(t *testing.T, b Backend) {
	a, c := b.Session(t), b.Session(t)
	la, err := a.Acquire(ctx(t), "bucket/7", "a")
	if err != nil {
		t.Fatal(err)
	}
	b.Expire(t, a)
	waitClosed(t, la.Lost(), "lease after session expiry")
	var lc coord.Lease
	testkit.Eventually(t, "acquire after the holder expired", func() error {
		lc, err = c.Acquire(ctx(t), "bucket/7", "c")
		return err
	})
	if lc.Epoch() <= la.Epoch() {
		t.Fatalf("epoch after expiry %d not above %d", lc.Epoch(), la.Epoch())
	}
	// The expired process carries on with a new session: it can take
	// leases again, with a higher epoch.
	if err := lc.Release(ctx(t)); err != nil {
		t.Fatal(err)
	}
	var la2 coord.Lease
	testkit.Eventually(t, "re-acquire by the expired process", func() error {
		la2, err = a.Acquire(ctx(t), "bucket/7", "a")
		return err
	})
	if la2.Epoch() <= lc.Epoch() {
		t.Fatalf("epoch %d not above %d", la2.Epoch(), lc.Epoch())
	}
	notClosed(t, la2.Lost(), "new lease")
}

func members(t *testing.T, c coord.Coord, group string) ([]coord.Member, <-chan struct{}) {
	t.Helper()
	ms, ch, err := c.Members(ctx(t), group)
	if err != nil {
		t.Fatal(err)
	}
	return ms, ch
}

func ids(ms []coord.Member) string {
	s := ""
	for _, m := range ms {
		s += fmt.Sprintf("%s=%s;", m.ID, m.Data)
	}
	return s
}

func testMembership(t *testing.T, b Backend) {
	a, c := b.Session(t), b.Session(t)
	ms, changed := members(t, c, "calligraphus")
	if len(ms) != 0 {
		t.Fatalf("empty group has %v", ms)
	}
	mb, err := a.Join(ctx(t), "calligraphus", "w2", []byte("127.0.0.1:1465"))
	if err != nil {
		t.Fatal(err)
	}
	waitClosed(t, changed, "watch after a join")
	if _, err := c.Join(ctx(t), "calligraphus", "w1", []byte("127.0.0.1:1464")); err != nil {
		t.Fatal(err)
	}
	testkit.Eventually(t, "two members", func() error {
		ms, _ := members(t, c, "calligraphus")
		if got := ids(ms); got != "w1=127.0.0.1:1464;w2=127.0.0.1:1465;" {
			return fmt.Errorf("members %s", got)
		}
		return nil
	})
	if _, err := c.Join(ctx(t), "calligraphus", "w1", nil); err == nil {
		t.Fatal("a second join with the same member id succeeded")
	}
	_, changed = members(t, c, "calligraphus")
	if err := mb.Leave(ctx(t)); err != nil {
		t.Fatal(err)
	}
	waitClosed(t, changed, "watch after a leave")
	ms, _ = members(t, c, "calligraphus")
	if got := ids(ms); got != "w1=127.0.0.1:1464;" {
		t.Fatalf("after leave: %s", got)
	}
}

func testMembershipExpiry(t *testing.T, b Backend) {
	a, c := b.Session(t), b.Session(t)
	if _, err := a.Join(ctx(t), "puma", "p1", []byte("addr")); err != nil {
		t.Fatal(err)
	}
	_, changed := members(t, c, "puma")
	b.Expire(t, a)
	waitClosed(t, changed, "watch after the member's session expired")
	testkit.Eventually(t, "member registered again after expiry", func() error {
		ms, _ := members(t, c, "puma")
		if got := ids(ms); got != "p1=addr;" {
			return fmt.Errorf("members %s", got)
		}
		return nil
	})
}

func testInvalid(t *testing.T, b Backend) {
	a := b.Session(t)
	for _, name := range []string{"", "/abs", "trailing/", "a//b"} {
		if _, err := a.Acquire(ctx(t), name, "o"); err == nil {
			t.Errorf("acquire %q succeeded", name)
		}
		if _, err := a.Join(ctx(t), name, "m", nil); err == nil {
			t.Errorf("join group %q succeeded", name)
		}
	}
	if _, err := a.Join(ctx(t), "g", "with/slash", nil); err == nil {
		t.Error("join with a member id holding a slash succeeded")
	}
}

func testUseAfterClose(t *testing.T, b Backend) {
	a := b.Session(t)
	if err := a.Close(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.Acquire(ctx(t), "x", "o"); !errors.Is(err, coord.ErrClosed) {
		t.Fatalf("acquire after close: %v", err)
	}
	if err := a.Close(); err != nil {
		t.Fatalf("second close: %v", err)
	}
}

// testEndedContext: a call made with a context that has already ended may
// fail, but leaves nothing behind, and a Leave or Release still happens
// (in the background if need be): a process stopping hands its leases
// and memberships over with whatever context it has left.
func testEndedContext(t *testing.T, b Backend) {
	a, c := b.Session(t), b.Session(t)
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if l, err := a.Acquire(ended, "bucket/9", "a"); err == nil {
		if err := l.Release(ctx(t)); err != nil {
			t.Fatal(err)
		}
	}
	testkit.Eventually(t, "acquire after an acquire with an ended context", func() error {
		l, err := a.Acquire(ctx(t), "bucket/9", "a")
		if err == nil {
			err = l.Release(ctx(t))
		}
		return err
	})
	if m, err := a.Join(ended, "g", "a", nil); err == nil {
		if err := m.Leave(ctx(t)); err != nil {
			t.Fatal(err)
		}
	}
	var m coord.Membership
	testkit.Eventually(t, "join after a join with an ended context", func() error {
		var err error
		m, err = a.Join(ctx(t), "g", "a", nil)
		return err
	})

	_ = m.Leave(ended) // may report the ended context
	testkit.Eventually(t, "member gone after a leave with an ended context", func() error {
		if ms, _ := members(t, c, "g"); len(ms) != 0 {
			return fmt.Errorf("members %s", ids(ms))
		}
		return nil
	})
	l, err := a.Acquire(ctx(t), "bucket/9", "a")
	if err != nil {
		t.Fatal(err)
	}
	_ = l.Release(ended) // may report the ended context
	waitClosed(t, l.Lost(), "lease released with an ended context")
	testkit.Eventually(t, "acquire after a release with an ended context", func() error {
		_, err := c.Acquire(ctx(t), "bucket/9", "c")
		return err
	})
}
