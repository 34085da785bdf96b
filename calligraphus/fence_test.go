package calligraphus

import (
	"bytes"
	"context"
	"errors"
	"io"
	"path"
	"slices"
	"sync"
	"testing"

	"github.com/freeway-dev/freeway/internal/coord"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// deafCoord hands out leases whose loss is not told to the holder until
// tell is called: a writer stalled past its session (SIGSTOP, a long GC
// pause) that wakes up believing it still owns its buckets. Stalled
// (stall), its calls wait until resume.
type deafCoord struct {
	coord.Coord
	mu      sync.Mutex
	told    chan struct{}
	stalled chan struct{} // closed by resume; nil while not stalled
	leases  []coord.Lease
	members []deafMember // joined, and not left by expire
}

// deafMember is a membership deafCoord gave, with what it was made of.
type deafMember struct {
	coord.Membership
	group, id string
	data      []byte
}

func newDeafCoord(inner coord.Coord) *deafCoord {
	return &deafCoord{Coord: inner, told: make(chan struct{})}
}

// lock locks d.mu once it is not stalled, or fails as ctx ends.
func (d *deafCoord) lock(ctx context.Context) error {
	for {
		d.mu.Lock()
		stalled := d.stalled
		if stalled == nil {
			return nil
		}
		d.mu.Unlock()
		select {
		case <-stalled:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
}

func (d *deafCoord) Acquire(ctx context.Context, name, owner string) (coord.Lease, error) {
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.mu.Unlock()
	l, err := d.Coord.Acquire(ctx, name, owner)
	if err != nil {
		return nil, err
	}
	d.leases = append(d.leases, l)
	return deafLease{Lease: l, told: d.told}, nil
}

func (d *deafCoord) Join(ctx context.Context, group, member string, data []byte) (coord.Membership, error) {
	if err := d.lock(ctx); err != nil {
		return nil, err
	}
	defer d.mu.Unlock()
	m, err := d.Coord.Join(ctx, group, member, data)
	if err != nil {
		return nil, err
	}
	d.members = append(d.members, deafMember{m, group, member, data})
	return m, nil
}

func (d *deafCoord) Holder(ctx context.Context, name string) (string, int64, error) {
	if err := d.lock(ctx); err != nil {
		return "", 0, err
	}
	d.mu.Unlock()
	return d.Coord.Holder(ctx, name)
}

func (d *deafCoord) Members(ctx context.Context, group string) ([]coord.Member, <-chan struct{}, error) {
	if err := d.lock(ctx); err != nil {
		return nil, nil, err
	}
	d.mu.Unlock()
	return d.Coord.Members(ctx, group)
}

// stall stalls the holder's calls until resume, and then expires its
// session (expire).
func (d *deafCoord) stall() {
	d.mu.Lock()
	d.stalled = make(chan struct{})
	d.mu.Unlock()
	d.expire()
}

// resume lets the calls stall holds go on.
func (d *deafCoord) resume() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.stalled != nil {
		close(d.stalled)
		d.stalled = nil
	}
}

// expire ends every lease granted so far, and every membership, as a
// session expiry would, without telling their holder.
func (d *deafCoord) expire() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, l := range d.leases {
		_ = l.Release(context.Background()) // a test double: a failure shows as B not taking over
	}
	for _, m := range d.members {
		_ = m.Leave(context.Background()) // likewise: B would go on forwarding to A
	}
}

// tell lets the leases' losses through, and registers the memberships
// expire ended again, as the coordinator does when its client hears of
// the expiry.
func (d *deafCoord) tell() {
	d.mu.Lock()
	defer d.mu.Unlock()
	select {
	case <-d.told:
		return
	default:
		close(d.told)
	}
	for _, m := range d.members {
		_, _ = d.Coord.Join(context.Background(), m.group, m.id, m.data) // likewise: A would stay out of the group
	}
}

type deafLease struct {
	coord.Lease
	told chan struct{}
}

func (l deafLease) Lost() <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		<-l.told
		<-l.Lease.Lost()
		close(ch)
	}()
	return ch
}

// readerView is what readers count in a bucket: the entries of the
// segments layout.Published lists (ptail, the copier and retention see
// the same).
func readerView(t *testing.T, fsys dfs.FS, dir string) []string {
	t.Helper()
	infos, err := layout.Published(fsys, dir, "")
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, fi := range infos {
		data, err := dfs.ReadFile(fsys, path.Join(dir, fi.Name()))
		if err != nil {
			t.Fatal(err)
		}
		r, err := segment.NewReader(bytes.NewReader(data), 0)
		if err != nil {
			t.Fatal(err)
		}
		var b segment.Block
		for {
			err := r.Next(&b)
			if errors.Is(err, io.EOF) {
				break
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, m := range b.Messages {
				out = append(out, string(m))
			}
		}
	}
	return out
}

// TestStaleWriterFencedAtStorage plays the late wake-up deterministically:
// writer A's lease is lost (released under it, as a session expiry does)
// but A is not told; B takes the bucket; then A, still believing it owns
// the bucket, writes a batch. Whatever A does with it, no reader may
// count it, and A must not answer OK.
func TestStaleWriterFencedAtStorage(t *testing.T) {
	fsKinds(t, func(t *testing.T, fsys *dfstest.Faulty) {
		hub, _ := inprocCoord(t)
		testStaleWriterFenced(t, fsys, sessions(t, hub))
	})
	t.Run("engines", func(t *testing.T) {
		fsys, newCoord := engineBackends(t)
		testStaleWriterFenced(t, fsys, newCoord)
	})
}

func testStaleWriterFenced(t *testing.T, fsys dfs.FS, newCoord func() coord.Coord) {
	coA := newDeafCoord(newCoord())
	coB := newCoord()
	cfgA, cfgB := testConfig(), testConfig()
	cfgA.ID, cfgB.ID = preferring(t, "cat", 0, 1) // A is not asked to hand off
	a := startServer(t, cfgA, fsys, coA, nil)
	b := startServer(t, cfgB, fsys, coB, nil)
	clA, clB := a.dial(t), b.dial(t)

	mustLog(t, clA, entries("cat", "a-1"))
	coA.expire() // A's lease is gone; A does not know
	// B takes the bucket (a forwarded batch: B writes it itself).
	rc, err := clB.LogBatch(context.Background(), &scribethrift.Batch{Messages: entries("cat", "b-1"), Forwarded: thriftBool(true)})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("B: %v %v", rc, err)
	}
	// A wakes up and writes.
	rc, err = clA.Log(context.Background(), entries("cat", "a-2"))
	if err != nil {
		t.Fatal(err)
	}
	if rc == scribethrift.ResultCode_OK {
		t.Errorf("the stale writer answered OK after a newer writer took its bucket")
	}
	if got := counter(t, a.reg, "freeway_calligraphus_fenced_total"); got < 1 {
		t.Errorf("fenced_total %v, want at least 1", got)
	}
	// B goes on; readers count a-1, b-1, b-2 and never a-2.
	rc, err = clB.LogBatch(context.Background(), &scribethrift.Batch{Messages: entries("cat", "b-2"), Forwarded: thriftBool(true)})
	if err != nil || rc != scribethrift.ResultCode_OK {
		t.Fatalf("B: %v %v", rc, err)
	}
	coA.tell()
	a.stop()
	b.stop()
	if got := readerView(t, fsys, "cat/0"); !slices.Equal(got, []string{"a-1", "b-1", "b-2"}) {
		t.Errorf("readers count %q, want [a-1 b-1 b-2]", got)
	}
}

func thriftBool(b bool) *bool { return &b }

// preferring returns two writer IDs, the first preferred for bucket b of
// category (of n) when both are live.
func preferring(t *testing.T, category string, b, n int) (string, string) {
	t.Helper()
	x, y := "wa", "wb"
	v := newView([]coord.Member{{ID: x}, {ID: y}}, x, true)
	if v.preferred(category, b, n) != x {
		x, y = y, x
	}
	return x, y
}
