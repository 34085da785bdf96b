package freeway

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus/testutil"
	bolt "go.etcd.io/bbolt"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	"github.com/freeway-dev/freeway/thrift/gen/freeway"
)

// startLogged runs target with its log in buf (and on stderr at warning
// level) and its admin listener on a free port.
func startLogged(t *testing.T, cfg Config, target string, buf *testkit.LogBuffer) *running {
	t.Helper()
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	cfg.Resolve()
	out := io.MultiWriter(buf, os.Stderr)
	log := slog.New(slog.NewTextHandler(out, &slog.HandlerOptions{Level: slog.LevelWarn})).With("target", target)
	p, err := New(cfg, target, Options{Version: "test", Log: log, AdminListen: "127.0.0.1:0"})
	if err != nil {
		t.Fatalf("start %s: %v", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	return r
}

// leafPage is the id and page size of the first leaf page of the bbolt
// file at path that is in use.
func leafPage(t *testing.T, path string) (int, int) {
	t.Helper()
	db, err := bolt.Open(path, 0o644, &bolt.Options{ReadOnly: true, PreLoadFreelist: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var leaf int
	err = db.View(func(tx *bolt.Tx) error {
		for id := 2; ; id++ {
			info, err := tx.Page(id)
			if err != nil || info == nil {
				return fmt.Errorf("no leaf page in use (%v)", err)
			}
			if info.Type == "leaf" {
				leaf = id
				return nil
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	return leaf, db.Info().PageSize
}

// usedBytes is how much of the bbolt file at path its pages use.
func usedBytes(t *testing.T, path string) int64 {
	t.Helper()
	db, err := bolt.Open(path, 0o644, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var used int64
	if err := db.View(func(tx *bolt.Tx) error { used = tx.Size(); return nil }); err != nil {
		t.Fatal(err)
	}
	return used
}

// TestDamagedStoreIsRebuilt: a pipeline fed known data is stopped, its
// store.db damaged (cut short, or bytes flipped in a page), and started
// again: it does not crash, it moves the file aside with one error line,
// counts it, and once Puma has re-read every segment the answer equals
// the input exactly, and stays exact as more data comes in.
func TestDamagedStoreIsRebuilt(t *testing.T) {
	for _, c := range []struct {
		name   string
		damage func(t *testing.T, path string)
	}{
		{"truncated", func(t *testing.T, path string) {
			// A third of the pages in use (bbolt grows the file ahead of
			// them: a cut of that tail alone is not damage).
			if err := os.Truncate(path, usedBytes(t, path)/3); err != nil {
				t.Fatal(err)
			}
		}},
		{"flipped page bytes", func(t *testing.T, path string) {
			page, size := leafPage(t, path)
			f, err := os.OpenFile(path, os.O_RDWR, 0)
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			hdr := make([]byte, 16)
			if _, err := f.ReadAt(hdr, int64(page*size)); err != nil {
				t.Fatal(err)
			}
			for i := range hdr {
				hdr[i] ^= 0xa5
			}
			if _, err := f.WriteAt(hdr, int64(page*size)); err != nil {
				t.Fatal(err)
			}
		}},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			cfg := testConfig(dir)
			first := orders(2000, 0, base)
			r := start(t, cfg)
			send(t, r.p.Agent.Addr(), first, 100)
			waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
			r.stop(t)

			path := filepath.Join(dir, "store.db")
			c.damage(t, path)
			var log testkit.LogBuffer
			r = startLogged(t, cfg, All, &log)
			defer r.stop(t)
			waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(first))
			if moved, _ := filepath.Glob(path + ".damaged-*"); len(moved) != 1 {
				t.Fatalf("moved aside: %v", moved)
			}
			if n := strings.Count(log.String(), "store file is damaged; moved it aside and started a fresh one"); n != 1 {
				t.Fatalf("%d lines about the damaged store:\n%s", n, log.String())
			}
			if n, err := testutil.GatherAndCount(r.p.Registry(), "freeway_store_damaged_total"); err != nil || n != 2 {
				t.Fatalf("damage metric: %d series, %v", n, err)
			}
			mfs, err := r.p.Registry().Gather()
			if err != nil {
				t.Fatal(err)
			}
			for _, mf := range mfs {
				if mf.GetName() != "freeway_store_damaged_total" {
					continue
				}
				for _, m := range mf.GetMetric() {
					if want := map[string]float64{"open": 1, "run": 0}[m.GetLabel()[0].GetValue()]; m.GetCounter().GetValue() != want {
						t.Fatalf("freeway_store_damaged_total{found=%q} = %v, want %v", m.GetLabel()[0].GetValue(), m.GetCounter().GetValue(), want)
					}
				}
			}
			second := orders(1500, 11, base)
			send(t, r.p.Agent.Addr(), second, 100)
			waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(append(first, second...)))
		})
	}
}

type partialAnswer struct {
	queryAnswer
	Partial bool `json:"partial"`
	Missing []struct {
		Category string `json:"category"`
		Bucket   int    `json:"bucket"`
		State    string `json:"state"`
		Error    string `json:"error"`
	} `json:"missing_shards"`
}

func getBody(t *testing.T, u string) (int, string) {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestDamagedShardIsReported: a cell row of one shard that cannot be
// decoded makes that shard fail on a standalone Puma node, which its
// admin /readyz names with the error; and a standalone serving process,
// reading the store, answers over HTTP and Thrift with the other shards'
// rows, exact, and says which shard is missing and why.
func TestDamagedShardIsReported(t *testing.T) {
	dir := t.TempDir()
	cfg := testConfig(dir)
	all := orders(2000, 0, base)
	r := start(t, cfg)
	send(t, r.p.Agent.Addr(), all, 100)
	waitTotals(t, r.p.Serving.Addr(), base, base+180, expected(all))
	r.stop(t)

	// Overwrite one committed cell of one shard with bytes no cell
	// decodes from.
	path := filepath.Join(dir, "store.db")
	st, err := boltstore.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	var victim store.Cell
	err = st.Scan(context.Background(), "puma", "s/orders/", store.PrefixEnd("s/orders/"), store.Latest, func(row string, cells []store.Cell) error {
		if victim.Row == "" {
			victim = cells[0]
		}
		return nil
	})
	if err != nil || victim.Row == "" {
		t.Fatalf("no cell to damage: %v", err)
	}
	bucket := strings.Split(victim.Row, "/")[2]
	victim.Value = []byte{1, 2, 3}
	if err := st.Put(context.Background(), "puma", []store.Cell{victim}); err != nil {
		t.Fatal(err)
	}
	st.Close()

	var log testkit.LogBuffer
	pn := startLogged(t, cfg, Puma, &log)
	admin := "http://" + pn.p.AdminAddr() + "/readyz"
	testkit.Eventually(t, "admin /readyz to name the damaged shard", func() error {
		code, body := getBody(t, admin)
		if strings.Count(body, "failed at ") > 1 {
			t.Fatalf("readyz names more than the damaged shard as failed:\n%s", body)
		}
		// The other shards may still be recovering when the damaged one
		// fails: wait until they run, and only the damaged one is named.
		if code == http.StatusServiceUnavailable && strings.Contains(body, "orders/"+bucket+": failed at ") &&
			strings.Contains(body, "does not fit app orders") && strings.Count(body, "\n") == 2 {
			return nil
		}
		return fmt.Errorf("%d\n%s", code, body)
	})
	pn.stop(t)

	sv := startLogged(t, cfg, Serving, &log)
	defer sv.stop(t)
	params := url.Values{"app": {"orders"}, "from": {fmt.Sprint(base)}, "to": {fmt.Sprint(base + 180)}}
	code, body := getBody(t, "http://"+sv.p.Serving.Addr()+"/api/v1/query?"+params.Encode())
	var a partialAnswer
	if err := json.Unmarshal([]byte(body), &a); err != nil || code != 200 {
		t.Fatalf("%d %s: %v", code, body, err)
	}
	if !a.Partial || len(a.Missing) != 1 || fmt.Sprint(a.Missing[0].Bucket) != bucket || a.Missing[0].Category != "orders" ||
		a.Missing[0].State != "failed" || !strings.Contains(a.Missing[0].Error, "does not fit app orders") {
		t.Fatalf("answer without shard %s: %s", bucket, body)
	}
	want := expected(all)
	if len(a.Rows) == 0 || len(a.Rows) >= len(want) {
		t.Fatalf("%d rows of %d: the other shards must answer, and only they", len(a.Rows), len(want))
	}
	for _, row := range a.Rows {
		one := queryAnswer{Rows: a.Rows[:0:0]}
		one.Rows = append(one.Rows, row)
		ws, _ := time.Parse(time.RFC3339, row.WindowStart)
		k := fmt.Sprintf("%d|%s|%s", ws.Unix(), row.Key["region"], row.Key["kind"])
		if d := diff(one, map[string]*agg{k: want[k]}); d != "" {
			t.Fatalf("row of a healthy shard: %s", d)
		}
	}

	c, err := thriftsrv.Dial(sv.p.Serving.ThriftAddr(), thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	res, err := freeway.NewQueryClient(c.TClient()).Query(context.Background(), &freeway.QueryRequest{App: "orders", FromUnix: base, ToUnix: base + 180})
	if err != nil {
		t.Fatal(err)
	}
	if !res.GetPartial() || len(res.MissingShards) != 1 || fmt.Sprint(res.MissingShards[0].Bucket) != bucket ||
		res.MissingShards[0].State != "failed" || !strings.Contains(res.MissingShards[0].GetError(), "does not fit app orders") || len(res.Rows) != len(a.Rows) {
		t.Fatalf("Thrift answer: %v", res)
	}
}
