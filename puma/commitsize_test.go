package puma

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/freeway-dev/freeway/internal/apps"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/ptail"
)

// gatewayFrame is the HBase Thrift2 gateway's default frame limit
// (hbase.regionserver.thrift.framed.max_frame_size_in_mb, 2).
const gatewayFrame = 2 << 20

// worstAgents returns n distinct agent strings as costly for the commit
// row as a client may send: 128 bytes (the longest kept as they are) of
// the characters of alphabet (its first repeated), longer ones and ones
// that are not UTF-8.
func worstAgents(n int, alphabet string) []string {
	out := make([]string, n)
	for i := range out {
		b := []byte(strings.Repeat(alphabet[:1], maxAgentKey))
		for j, v := 0, i; v > 0; j, v = j+1, v/len(alphabet) {
			b[j] = alphabet[v%len(alphabet)]
		}
		switch i % 3 {
		case 1: // long: kept hashed, with its id (clipped)
			b = append(b, strings.Repeat("&", 100)...)
		case 2: // not UTF-8
			b[len(b)-1] = 0xff
		}
		out[i] = string(b)
	}
	return out
}

// worstDedup is a dedup holding n of the worst keys at the highest
// sequence number.
func worstDedup(n int, alphabet string) *dedup {
	d := newDedup(n, 1)
	for _, a := range worstAgents(n, alphabet) {
		k, _, _, _ := d.touch(a, 1, 9_999_999_999_999)
		k.seq = math.MaxInt64
	}
	if len(d.keys) != n {
		panic(fmt.Sprintf("%d keys, want %d", len(d.keys), n))
	}
	return d
}

// TestCommitRowKeyBytes: a key, however an agent names itself, takes at
// most commitKeyBytes of each high-water map of the commit row, so that
// the README's figures for max_agents_per_shard hold. Keys JSON escapes
// took up to six bytes a character: 2048 keys of 128 '<' made a commit
// row of 1.6 MB and its CheckAndPut (the previous and the new value) over
// the HBase gateway's default 2 MB frame, at the default settings.
func TestCommitRowKeyBytes(t *testing.T) {
	for _, tc := range []struct {
		n        int
		alphabet string
	}{
		{DefaultConfig().MaxAgentsPerShard, "<>&\x01"}, // escaped by JSON
		{MaxAgentsLimit, "<>&\x01"},
		{MaxAgentsLimit, "abcd"}, // plain
	} {
		n, d := tc.n, worstDedup(tc.n, tc.alphabet)
		var state commitState
		state.HighWater, state.HighWaterSeen = d.save()
		empty, err := json.Marshal(commitState{})
		if err != nil {
			t.Fatal(err)
		}
		val, err := json.Marshal(state)
		if err != nil {
			t.Fatal(err)
		}
		per := float64(len(val)-len(empty)) / float64(n)
		t.Logf("%d keys: a map of %d bytes, %.0f a key", n, len(val)-len(empty), per)
		if per > commitKeyBytes {
			t.Errorf("%d keys take %.0f bytes a key of the commit row, over %d", n, per, commitKeyBytes)
		}
		// The shard's map alone, in the previous value and the new one.
		if 2*len(val) > gatewayFrame {
			t.Errorf("%d keys: a CheckAndPut of %d bytes, over the gateway's default frame", n, 2*len(val))
		}
		for key := range state.HighWater {
			if len(key) > maxAgentKey || !plainJSON(key) || dedupKey(key) != key {
				t.Errorf("key %q", key)
			}
		}
	}
}

// TestStoredKeyOfOldHashedKey: a hashed key written by the code before,
// whose id has characters now replaced, stays the key of its agent, so
// that its high water still deduplicates after an upgrade.
func TestStoredKeyOfOldHashedKey(t *testing.T) {
	agent := "a<b\x01/" + strings.Repeat("s", 200)
	newKey := dedupKey(agent)
	if !strings.HasPrefix(newKey, "a?b?/#") {
		t.Fatalf("dedupKey = %q", newKey)
	}
	_, sum, _ := strings.Cut(newKey, "/#")
	oldKey := "a<b\x01/#" + sum // what the code before kept
	if got := storedKey(oldKey); got != newKey {
		t.Fatalf("storedKey(%q) = %q, want %q", oldKey, got, newKey)
	}
	d := newDedup(10, 1)
	d.load(map[string]uint64{oldKey: 7}, nil, t0, t0)
	if k, _, _, _ := d.touch(agent, 1, t0); k.seq != 7 || len(d.keys) != 1 {
		t.Fatalf("the agent's high water after loading the old row: %d (%d keys)", k.seq, len(d.keys))
	}
	// A key kept as it was by the code before (short, escaped characters)
	// is its agent's: it hashes as the agent does now.
	short := "h<1/inc"
	if storedKey(short) != dedupKey(short) || dedupKey(short) == short {
		t.Fatalf("storedKey(%q) = %q", short, storedKey(short))
	}
	for _, k := range []string{"host-1/abc", dedupKey(agent), "é/x"} {
		if storedKey(k) != k || !utf8.ValidString(k) {
			t.Errorf("storedKey(%q) = %q", k, storedKey(k))
		}
	}
}

// frameStore refuses, as the HBase gateway at its default frame limit
// does by dropping the connection, a CheckAndPut whose expected and new
// values together exceed gatewayFrame.
type frameStore struct {
	store.Store
}

var errFrameDropped = errors.New("connection reset by peer")

func (f frameStore) CheckAndPut(ctx context.Context, table, row, column string, expected []byte, cells []store.Cell) (bool, error) {
	n := len(expected)
	for _, c := range cells {
		n += len(c.Value)
	}
	if n > gatewayFrame {
		return false, errFrameDropped
	}
	return f.Store.CheckAndPut(ctx, table, row, column, expected, cells)
}

// TestCommitOverFrameNamesTheSetting: a backfill's high waters are a
// second map as large as the shard's in the commit row, so at the largest
// max_agents_per_shard a shard with a backfill commits over the gateway's
// default frame, and every checkpoint after fails. The error says why:
// the size, the agent keys of the shard and its backfills, and the
// setting that bounds them.
func TestCommitOverFrameNamesTheSetting(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	r1 := start(t, e.node("n1"))
	waitCommitted(t, r1.p, publishHistory(e, 0, 12))
	r1.stop(t)
	e.apps = []*apps.App{orders(t, func(s *apps.Spec) {
		s.Window, s.Windows = 0, []config.Duration{config.Duration(time.Minute), config.Duration(2 * time.Minute)}
	})}
	p2 := e.node("n2", func(c *Config, d *Deps) { c.MaxAgentsPerShard, d.Store = MaxAgentsLimit, frameStore{e.st} })
	s := testShard(t, p2, 0)
	adopt(p2, s)
	if len(s.backfills) != 1 {
		t.Fatalf("%d backfills", len(s.backfills))
	}
	fill := func(seq uint64) {
		s.mu.Lock()
		defer s.mu.Unlock()
		for _, d := range []*dedup{s.highWater, s.backfills[0].dedup} {
			for _, a := range worstAgents(MaxAgentsLimit, "abcd") {
				k, _, _, _ := d.touch(a, 1, t0)
				k.seq = seq
			}
		}
	}
	fill(1 << 40)
	if err := s.checkpoint(ctx); err != nil { // the previous value is small
		t.Fatalf("first checkpoint: %v", err)
	}
	fill(1<<40 + 1)
	err := s.checkpoint(ctx)
	if !errors.Is(err, errFrameDropped) {
		t.Fatalf("second checkpoint: %v, want the dropped frame", err)
	}
	t.Log(err)
	for _, want := range []string{"puma.max_agents_per_shard", "max_frame_size_in_mb", "agent keys", "1 backfill"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("the error %q does not say %q", err, want)
		}
	}
	// The next checkpoint first fences the commit of unknown outcome, a
	// CheckAndPut as large: it says so too.
	err = s.checkpoint(ctx)
	if !errors.Is(err, errFrameDropped) || !strings.Contains(err.Error(), "puma.max_agents_per_shard") {
		t.Fatalf("third checkpoint: %v", err)
	}
	t.Log(err)
	// A node that takes the shard over claims it with a CheckAndPut as
	// large as the last commit's value, twice: it says so too.
	s3, err := newShard(p2, "orders", 0, s.lease)
	if err != nil {
		t.Fatal(err)
	}
	err = s3.recover(ctx)
	if !errors.Is(err, errFrameDropped) || !strings.Contains(err.Error(), "puma.max_agents_per_shard") {
		t.Fatalf("claim: %v", err)
	}
	t.Log(err)
}

// TestOldKeyWindowCarriedOver: a key the code before kept as the agent
// sent it, now kept hashed, keeps its window of numbers seen, so that an
// entry below its high water that had not arrived is still counted after
// the upgrade.
func TestOldKeyWindowCarriedOver(t *testing.T) {
	ctx := context.Background()
	e := newEnv(t, orders(t))
	raw := "h<1/inc"
	s := testShard(t, e.node("n1"), 0)
	b := agent(raw, 1, ones(4, 1)...)
	b.Seqs = []uint64{1, 2, 3, 5} // 4 not yet arrived
	s.apply(b, ptail.Position{Offset: 1})
	if err := s.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	// Make the rows what the code before wrote: the key as sent.
	key := dedupKey(raw)
	var state map[string]any
	if err := json.Unmarshal(commitRowOf(t, e.st, "orders", 0), &state); err != nil {
		t.Fatal(err)
	}
	hw := state["high_water"].(map[string]any)
	hw[raw] = hw[key]
	delete(hw, key)
	val, err := json.Marshal(state)
	if err != nil {
		t.Fatal(err)
	}
	epoch := s.committed.Epoch
	row := dedupPrefix("orders", 0) + key
	cells, err := e.st.Get(ctx, "puma", row, store.Latest)
	if err != nil || len(cells) != 1 {
		t.Fatalf("window row: %v %v", cells, err)
	}
	oldRow := dedupPrefix("orders", 0) + raw
	if err := e.st.Put(ctx, "puma", []store.Cell{
		{Row: commitRow("orders", 0), Column: "commit", Timestamp: epoch, Value: val},
		{Row: oldRow, Column: "w", Timestamp: cells[0].Timestamp, Value: cells[0].Value},
	}); err != nil {
		t.Fatal(err)
	}
	if err := e.st.DeleteUpTo(ctx, "puma", row, row+"\x00", epoch); err != nil {
		t.Fatal(err)
	}

	s2 := testShard(t, e.node("n2"), 0)
	s2.apply(agent(raw, 3, ones(3, 1)...), ptail.Position{Offset: 2}) // 3, 5 re-sent, 4 new
	if s2.entries != 1 || s2.dups != 2 {
		t.Fatalf("entries %d dups %d, want 1 and 2", s2.entries, s2.dups)
	}
	if err := s2.checkpoint(ctx); err != nil {
		t.Fatal(err)
	}
	if err := s2.checkpoint(ctx); err != nil { // deletes the old row after the commit
		t.Fatal(err)
	}
	if got := countRows(t, e.st, oldRow); got != 0 {
		t.Fatalf("the old window row is left: %d", got)
	}
}
