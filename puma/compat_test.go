package puma

import (
	"context"
	"encoding/hex"
	"encoding/json"
	"os"
	"strings"
	"testing"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/store"
)

// oldCheckpoint is testdata/checkpoint_v1.json: the store rows a shard of
// the orders app wrote at its checkpoint with the code before variable
// states and several windows (commit 31bd7fe), 30 lines over four minutes,
// and the rows that shard answered then.
type oldCheckpoint struct {
	Rows []struct {
		Row, Column string
		Timestamp   int64
		Value       string
	}
	Minute, All []string
}

func readOldCheckpoint(t *testing.T) oldCheckpoint {
	t.Helper()
	b, err := os.ReadFile("testdata/checkpoint_v1.json")
	if err != nil {
		t.Fatal(err)
	}
	var old oldCheckpoint
	if err := json.Unmarshal(b, &old); err != nil {
		t.Fatal(err)
	}
	return old
}

// putOld writes the old rows into st, under category instead of orders;
// damage may change a row's value.
func putOld(t *testing.T, st store.Store, old oldCheckpoint, category string, damage func(row string, v []byte) []byte) {
	t.Helper()
	var cells []store.Cell
	for _, r := range old.Rows {
		v, err := hex.DecodeString(r.Value)
		if err != nil {
			t.Fatal(err)
		}
		row := strings.Replace(r.Row, "/orders/", "/"+category+"/", 1)
		if damage != nil {
			v = damage(row, v)
		}
		cells = append(cells, store.Cell{Row: row, Column: r.Column, Timestamp: r.Timestamp, Value: v})
	}
	if err := st.Put(context.Background(), "puma", cells); err != nil {
		t.Fatal(err)
	}
}

// TestOldCheckpoint: a checkpoint the code before variable states wrote
// loads and answers as it did then, on the embedded store and on HBase;
// the app changed to add a sketch starts afresh instead of misreading the
// old cells; a stored cell that does not fit is refused with an error
// that says so.
func TestOldCheckpoint(t *testing.T) {
	old := readOldCheckpoint(t)
	if len(old.Rows) < 10 || len(old.Minute) == 0 {
		t.Fatalf("testdata: %d rows, %d answers", len(old.Rows), len(old.Minute))
	}
	check := func(t *testing.T, st store.Store, category string) {
		app := orders(t, func(s *apps.Spec) { s.Category = category })
		e := newEnv(t, app)
		node := func(a *apps.App) *Puma {
			return e.node("n1", func(c *Config, d *Deps) { d.Store, d.Apps = st, []*apps.App{a} })
		}
		putOld(t, st, old, category, nil)

		s := testShardOf(t, node(app), category, 0)
		if s.committedPos.Offset != 100 {
			t.Fatalf("recovered position %s, want offset 100", s.committedPos)
		}
		equalRows(t, "minute rows of the old checkpoint", memRows(t, s, Query{App: "orders"}), old.Minute)
		equalRows(t, "all windows of the old checkpoint", memRows(t, s, Query{App: "orders", AllWindows: true, GroupBy: []string{"kind"}}), old.All)

		// The same app with a sketch added: its cells have another shape
		// (and rows), so it starts empty rather than reading the old ones.
		grown := orders(t, func(s *apps.Spec) {
			s.Category = category
			s.Aggregates = append(s.Aggregates, apps.AggregateSpec{Name: "kinds", Fn: "count_distinct", Field: "kind"})
		})
		s2 := testShardOf(t, node(grown), category, 0)
		if s2.tables[0].ncells != 0 {
			t.Fatalf("the grown app loaded %d old cells", s2.tables[0].ncells)
		}
	}
	t.Run("bolt", func(t *testing.T) {
		check(t, newEnv(t).st, "orders")
	})
	t.Run("hbase", func(t *testing.T) {
		st, category := hbaseCategory(t, "compat_")
		check(t, st, category)
	})

	// A cell under the app's rows whose bytes do not fit its layout (here
	// one in the variable-state format): recovery fails and says why.
	t.Run("misfit", func(t *testing.T) {
		e := newEnv(t, orders(t))
		damaged := false
		putOld(t, e.st, old, "orders", func(row string, v []byte) []byte {
			if strings.HasPrefix(row, "s/") && !damaged {
				damaged = true
				return append([]byte{cellMixed}, v[1:]...)
			}
			return v
		})
		p := e.node("n1")
		lease, err := e.hub.Session().Acquire(context.Background(), "puma/orders/0", "n1")
		if err != nil {
			t.Fatal(err)
		}
		s, err := newShard(p, "orders", 0, lease)
		if err != nil {
			t.Fatal(err)
		}
		err = s.recover(context.Background())
		if err == nil || !strings.Contains(err.Error(), "does not fit app orders") {
			t.Fatalf("recover of a misfit cell: %v", err)
		}
	})
}
