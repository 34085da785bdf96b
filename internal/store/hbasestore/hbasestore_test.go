package hbasestore

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/enginetest"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/storetest"
)

// gateway returns the Thrift2 gateway named by FREEWAY_TEST_HBASE
// (host:port). Without it the test is skipped, or fails under
// FREEWAY_REQUIRE_ENGINES=1 (make test, which starts the engines).
func gateway(t *testing.T) string {
	t.Helper()
	return enginetest.Addr(t, enginetest.HBase)
}

// openTestStore opens a store with a table prefix of its own, and drops
// (disables and deletes) every table it used when the test ends.
func openTestStore(t *testing.T, addr string) (*Store, func() string) {
	t.Helper()
	b := make([]byte, 4)
	rand.Read(b)
	s, err := Open(fmt.Sprintf("hbase://%s/fwtest_%s_", addr, hex.EncodeToString(b)))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var tables []string
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		defer cancel()
		for _, tb := range tables {
			if err := s.DropTable(ctx, tb); err != nil {
				t.Errorf("drop %s: %v", tb, err)
			}
		}
		s.Close()
	})
	return s, func() string {
		mu.Lock()
		defer mu.Unlock()
		tb := fmt.Sprint("t", len(tables))
		tables = append(tables, tb)
		return tb
	}
}

func TestConformance(t *testing.T) {
	s, newTable := openTestStore(t, gateway(t))
	t.Logf("store %s", s)
	storetest.Run(t, func(t *testing.T) (store.Store, string) {
		return s, newTable()
	})
}

// TestRealHBaseDetails checks what the conformance suite does not: the
// family's VERSIONS, a delete of hidden versions, and round-trip timing.
func TestRealHBaseDetails(t *testing.T) {
	s, newTable := openTestStore(t, gateway(t))
	ctx := context.Background()

	t.Run("DeleteNewerRevealsNoHiddenVersion", func(t *testing.T) {
		table := newTable()
		// More uncommitted versions above the committed one than VERSIONS:
		// deleting the visible ones must not bring back older ones.
		if err := s.Put(ctx, table, []store.Cell{{Row: "r", Column: "c", Timestamp: 1, Value: []byte("committed")}}); err != nil {
			t.Fatal(err)
		}
		for ts := int64(2); ts <= 2+2*Versions; ts++ {
			if err := s.Put(ctx, table, []store.Cell{{Row: "r", Column: "c", Timestamp: ts, Value: []byte("x")}}); err != nil {
				t.Fatal(err)
			}
		}
		if err := s.DeleteNewer(ctx, table, "r", "s", 1); err != nil {
			t.Fatal(err)
		}
		cells, err := s.Get(ctx, table, "r", store.Latest)
		if err != nil {
			t.Fatal(err)
		}
		// The committed version itself may have been pruned by VERSIONS
		// (it had 2*Versions newer ones); nothing newer may survive.
		for _, c := range cells {
			if c.Timestamp > 1 {
				t.Fatalf("version %d survived DeleteNewer(1): %+v", c.Timestamp, cells)
			}
		}
	})

	t.Run("DropTable", func(t *testing.T) {
		table := newTable()
		if err := s.Put(ctx, table, []store.Cell{{Row: "r", Column: "c", Timestamp: 1, Value: []byte("v")}}); err != nil {
			t.Fatal(err)
		}
		if err := s.DropTable(ctx, table); err != nil {
			t.Fatal(err)
		}
		if exists, err := s.ensureTable(ctx, table, false); err != nil || exists {
			t.Fatalf("after DropTable the table exists: %v, %v", exists, err)
		}
		if err := s.DropTable(ctx, table); err != nil {
			t.Fatalf("dropping a table that does not exist: %v", err)
		}
		// Written again, it is created again, empty but for the new cell.
		if err := s.Put(ctx, table, []store.Cell{{Row: "q", Column: "c", Timestamp: 1, Value: []byte("w")}}); err != nil {
			t.Fatal(err)
		}
		if cells, err := s.Get(ctx, table, "r", store.Latest); err != nil || len(cells) != 0 {
			t.Fatalf("a dropped table's row read back: %v, %v", cells, err)
		}
	})

	t.Run("RoundTrip", func(t *testing.T) {
		table := newTable()
		const n = 200
		var put, get time.Duration
		for i := range n {
			c := store.Cell{Row: fmt.Sprint("row", i), Column: "c", Timestamp: 1, Value: []byte("v")}
			start := time.Now()
			if err := s.Put(ctx, table, []store.Cell{c}); err != nil {
				t.Fatal(err)
			}
			put += time.Since(start)
			start = time.Now()
			if _, err := s.Get(ctx, table, c.Row, store.Latest); err != nil {
				t.Fatal(err)
			}
			get += time.Since(start)
		}
		t.Logf("mean of %d: put %v, get %v", n, put/n, get/n)
	})
}
