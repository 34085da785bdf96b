package puma

import (
	"cmp"
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"sort"
	"strings"
	"unicode/utf8"
)

// A shard drops an agent entry it has counted already: each block from
// Freeway's agent names its sender in Block.Agent, "agent_id/incarnation"
// (or "agent_id" from agents that predate incarnations), and numbers its
// entries; an entry at or below the high water of its key is a re-send.
// The incarnation is a secret of the agent's queue run: only the agent id,
// before the first "/", is ever logged.

// maxAgentKey bounds the length of a key as the shard keeps it: a longer
// one, or one that JSON would not write byte for byte in the commit row
// (not valid UTF-8, or with a character it escapes, up to six bytes for
// one: a key of 128 '<' would take 768 bytes of every commit row, and
// 2048 such keys a CheckAndPut over the HBase gateway's 2 MB frame), is
// kept as its agent id, clipped, with those characters as '?', and a hash
// of the whole. So a key costs at most commitKeyBytes of the row.
const maxAgentKey = 128

// maxAgentID bounds the agent id kept in a hashed key.
const maxAgentID = 64

// commitKeyBytes bounds what one key takes of each high-water map of a
// commit row: the quoted key, its high water (at most 19 digits: a
// sequence number is a positive int64), and its last-seen time in
// high_water_seen_ms (13 digits until the year 2286), with separators.
const commitKeyBytes = maxAgentKey + 2 + 1 + 19 + 1 + 13 + 1

// dedupKey is the key a shard keeps for a block's Agent.
func dedupKey(agent string) string {
	if len(agent) <= maxAgentKey && plainJSON(agent) {
		return agent
	}
	id := plainID(strings.ToValidUTF8(agentID(agent), "?"))
	if len(id) > maxAgentID {
		cut := maxAgentID
		for cut > 0 && !utf8.RuneStart(id[cut]) {
			cut--
		}
		id = id[:cut]
	}
	sum := sha256.Sum256([]byte(agent))
	return id + "/#" + hex.EncodeToString(sum[:16])
}

// plainJSON reports whether encoding/json writes s, in a string, as its
// bytes: valid UTF-8 without a character it escapes.
func plainJSON(s string) bool {
	return utf8.ValidString(s) && !strings.ContainsFunc(s, jsonEscaped)
}

// jsonEscaped reports whether encoding/json escapes r in a string:
// control characters, '"', '\\', the HTML characters '<', '>', '&'
// (escaped by default), U+2028 and U+2029.
func jsonEscaped(r rune) bool {
	switch r {
	case '"', '\\', '<', '>', '&', '\u2028', '\u2029':
		return true
	}
	return r < 0x20
}

// plainID is id, valid UTF-8, with the characters JSON escapes as '?'.
func plainID(id string) string {
	return strings.Map(func(r rune) rune {
		if jsonEscaped(r) {
			return '?'
		}
		return r
	}, id)
}

// storedKey is the key a shard keeps for a key read from a commit row. A
// row of the code before may hold a hashed key whose id has characters
// JSON escapes: it keeps its hash with the id as dedupKey now writes it,
// so that it is the key of its agent still (hashing it again would not).
// Any other key is taken as an agent's.
func storedKey(stored string) string {
	id, sum, ok := strings.Cut(stored, "/#")
	if ok && len(id) <= maxAgentID && !strings.Contains(id, "/") && len(sum) == 32 && strings.Trim(sum, "0123456789abcdef") == "" &&
		utf8.ValidString(id) && strings.ContainsFunc(id, jsonEscaped) {
		return plainID(id) + "/#" + sum
	}
	return dedupKey(stored)
}

// agentID is the stable agent id of a key: what comes before the first
// "/". It is what may be logged.
func agentID(key string) string {
	id, _, _ := strings.Cut(key, "/")
	return id
}

// agentKey is one deduplication key and its high water.
type agentKey struct {
	key    string
	id     string // agentID(key)
	seq    uint64 // the highest sequence number applied
	seenMs int64  // the latest arrival time of a block from it
	// win: which numbers below seq were seen (window.go); nil when all
	// were.
	win    *window
	dirty  bool // win changed since the last checkpoint
	stored bool // a window row may exist for it
}

// dedup is a shard's deduplication state. Its size is bounded: a key not
// seen for the horizon (in arrival time, so that a replay of old segments
// behaves as the first reading did) is forgotten at the next checkpoint,
// and beyond max keys the least recently seen are forgotten at once. An
// entry re-sent after its key was forgotten is counted again: for such
// entries delivery is at-least-once.
type dedup struct {
	keys       map[string]*agentKey
	byID       map[string][]*agentKey // agent id → its keys (incarnations)
	clockMs    int64                  // the latest arrival time of any block
	max        int
	horizonMs  int64
	dirty      []*agentKey     // keys whose window changed since the last checkpoint
	forgot     map[string]bool // keys forgotten since the last checkpoint that had a window row
	gone       []goneRow       // window rows to delete after a commit
	forgotRows []string        // rows of no key of this dedup to delete after the next commit
	// charge, when set, adds the bytes the keys and windows take (or give
	// back, n < 0) to the node's memory accounting; bytes is what this
	// dedup has charged and not given back.
	charge func(n int64)
	bytes  int64
}

func newDedup(max int, horizonMs int64) *dedup {
	return &dedup{keys: map[string]*agentKey{}, byID: map[string][]*agentKey{}, max: max, horizonMs: horizonMs, forgot: map[string]bool{}}
}

// newDedup is a shard's (or a backfill's) dedup, charged to the node.
func (p *Puma) newDedup() *dedup {
	d := newDedup(p.cfg.MaxAgentsPerShard, p.cfg.DedupHorizon.D().Milliseconds())
	d.charge = p.chargeDedup
	return d
}

// chargeDedup adds n bytes of dedup state to the node's memory.
func (p *Puma) chargeDedup(n int64) {
	p.cells.add(0, n)
	p.dedupBytes.Add(n)
}

// Memory. A key's window (16 KiB: segment.SeqWindow bits) and the key itself are charged to the
// node's puma.memory_limit (cellBudget bytes, freeway_puma_dedup_bytes)
// for as long as the key is kept. Dedup state is never refused or
// dropped to make room: forgetting a window would count re-sent entries
// twice. Once the node's bytes, cells' and dedup's together, reach the
// limit, it is new cells that are refused (reason max_cells), as for any
// other memory; max_agents_per_shard and dedup_horizon are what bound the
// dedup state itself.

// keyOverhead approximates what a kept key costs beside its text and
// window: the agentKey, its entries in keys and byID.
const keyOverhead = 128

// windowBytes is what a key's window costs.
const windowBytes = winWords * 8

// keyBytes is what k costs, its window included.
func keyBytes(k *agentKey) int64 {
	n := int64(keyOverhead + len(k.key))
	if k.win != nil {
		n += windowBytes
	}
	return n
}

// account adds n bytes to what the dedup holds and charges them.
func (d *dedup) account(n int64) {
	d.bytes += n
	if d.charge != nil && n != 0 {
		d.charge(n)
	}
}

// setWin gives k, a key d keeps, its window w, charging it if k had none.
func (d *dedup) setWin(k *agentKey, w *window) {
	if k.win == nil && w != nil {
		d.account(windowBytes)
	}
	k.win = w
}

// release gives back every byte the dedup charged (its shard stops, its
// backfill joined).
func (d *dedup) release() { d.account(-d.bytes) }

// touch returns the key of a block from agent whose first entry is first,
// arriving at ms. For a key it did not hold, back is the high water of
// another key of the same agent id at or above first, if there is one:
// the agent's sequence went backwards (its queue was restored from a
// backup or copied to another host). Its entries are counted all the same,
// under their own key. evicted counts the keys forgotten to stay within
// max.
func (d *dedup) touch(agent string, first uint64, ms int64) (k *agentKey, back uint64, backwards bool, evicted int) {
	key := dedupKey(agent)
	d.clockMs = max(d.clockMs, ms)
	if k = d.keys[key]; k != nil {
		k.seenMs = max(k.seenMs, ms)
		return k, 0, false, 0
	}
	k = &agentKey{key: key, id: agentID(key), seenMs: ms}
	if d.forgot[key] || d.rowGoing(key) {
		// Its old window row is still there: overwrite it with this
		// key's own (nothing seen yet), so that no recovery reads it.
		delete(d.forgot, key)
		k.win, k.stored = fullWindow(), true
		d.markDirty(k)
	}
	for _, o := range d.byID[k.id] {
		if first <= o.seq && (!backwards || o.seq > back) {
			back, backwards = o.seq, true
		}
	}
	d.insert(k)
	return k, back, backwards, d.evict(k)
}

func (d *dedup) insert(k *agentKey) {
	d.keys[k.key] = k
	d.byID[k.id] = append(d.byID[k.id], k)
	d.account(keyBytes(k))
}

func (d *dedup) remove(k *agentKey) {
	delete(d.keys, k.key)
	d.account(-keyBytes(k))
	if k.stored {
		d.forgot[k.key] = true
	}
	ks := d.byID[k.id]
	if i := slices.Index(ks, k); i >= 0 {
		ks[i] = ks[len(ks)-1]
		ks = ks[:len(ks)-1]
	}
	if len(ks) == 0 {
		delete(d.byID, k.id)
	} else {
		d.byID[k.id] = ks
	}
}

// evict forgets the least recently seen keys but keep once there are more
// than max, down to 15/16 of max so that a flood of new keys sorts the
// keys once every max/16 of them, not at each.
func (d *dedup) evict(keep *agentKey) int {
	if len(d.keys) <= d.max {
		return 0
	}
	target := d.max - d.max/16
	all := make([]*agentKey, 0, len(d.keys))
	for _, k := range d.keys {
		if k != keep {
			all = append(all, k)
		}
	}
	// Oldest first; ties by key, so that a replay forgets the same keys.
	slices.SortFunc(all, func(a, b *agentKey) int {
		return cmp.Or(cmp.Compare(a.seenMs, b.seenMs), strings.Compare(a.key, b.key))
	})
	n := len(d.keys) - target
	for _, k := range all[:n] {
		d.remove(k)
	}
	return n
}

// expire forgets the keys not seen for the horizon; it returns how many.
func (d *dedup) expire() int {
	n := 0
	for _, k := range d.keys {
		if k.seenMs < d.clockMs-d.horizonMs {
			d.remove(k)
			n++
		}
	}
	return n
}

// save returns the state for the commit row: the high waters by key, and
// when each key was last seen, in the byte order of the keys.
func (d *dedup) save() (hw map[string]uint64, seen []int64) {
	keys := make([]string, 0, len(d.keys))
	for key := range d.keys {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	hw = make(map[string]uint64, len(keys))
	seen = make([]int64, len(keys))
	for i, key := range keys {
		k := d.keys[key]
		hw[key] = k.seq
		seen[i] = k.seenMs
	}
	return hw, seen
}

// load restores the state saved in a commit row. A row written before
// keys had a last-seen time (seen does not match hw) gives every key
// fallbackMs, the row's commit time, and may hold keys that are now kept
// hashed. It returns how many keys it forgot to stay within max.
func (d *dedup) load(hw map[string]uint64, seen []int64, clockMs, fallbackMs int64) int {
	keys := make([]string, 0, len(hw))
	for key := range hw {
		keys = append(keys, key)
	}
	sort.Strings(keys)
	legacy := len(seen) != len(keys)
	d.clockMs = clockMs
	for i, stored := range keys {
		seenMs := fallbackMs
		if !legacy {
			seenMs = seen[i]
		}
		key := storedKey(stored)
		if k := d.keys[key]; k != nil { // two legacy keys hashing alike: keep the higher
			k.seq, k.seenMs = max(k.seq, hw[stored]), max(k.seenMs, seenMs)
			continue
		}
		d.insert(&agentKey{key: key, id: agentID(key), seq: hw[stored], seenMs: seenMs})
		d.clockMs = max(d.clockMs, seenMs)
	}
	return d.evict(nil)
}
