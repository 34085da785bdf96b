package serving

import (
	"context"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/coord"
	names "github.com/freeway-dev/freeway/internal/layout"
)

// gateCoord answers Holder with the lease's own name as its owner (an
// error for names ending in "7") once want lookups are in flight at once,
// or after a short wait when fewer ever are: it records the most it saw.
type gateCoord struct {
	coord.Coord
	want int

	mu       sync.Mutex
	inFlight int
	most     int
	reached  chan struct{}
}

func (g *gateCoord) Holder(ctx context.Context, name string) (string, int64, error) {
	g.mu.Lock()
	g.inFlight++
	if g.inFlight > g.most {
		g.most = g.inFlight
	}
	if g.inFlight == g.want {
		close(g.reached)
		g.reached = make(chan struct{})
	}
	reached := g.reached
	g.mu.Unlock()
	select {
	case <-reached:
	case <-time.After(100 * time.Millisecond): // fewer ever in flight: do not hang
	}
	g.mu.Lock()
	g.inFlight--
	g.mu.Unlock()
	if strings.HasSuffix(name, "7") {
		return "", 0, errors.New("no route to zookeeper")
	}
	return name, 1, nil
}

// TestHoldersLookedUpTogether: a fanned-out query reads its shards'
// lease holders holderLookups at a time, not one after another (a
// ZooKeeper round trip each: 64 buckets were 64 round trips before a
// node was asked), and each bucket gets its own owner or error.
func TestHoldersLookedUpTogether(t *testing.T) {
	const n = 40
	g := &gateCoord{want: holderLookups, reached: make(chan struct{})}
	f := &Fanout{co: g}
	owners, errs := f.holders(context.Background(), "shop", n)
	for b := range n {
		name := names.ShardLease("shop", b)
		if strings.HasSuffix(name, "7") {
			if errs[b] == nil || owners[b] != "" {
				t.Fatalf("bucket %d: owner %q, error %v; want the lookup's error", b, owners[b], errs[b])
			}
			continue
		}
		if errs[b] != nil || owners[b] != name {
			t.Fatalf("bucket %d: owner %q, error %v; want %q", b, owners[b], errs[b], name)
		}
	}
	if g.most != holderLookups {
		t.Fatalf("at most %d lookups in flight at once; want %d", g.most, holderLookups)
	}
}
