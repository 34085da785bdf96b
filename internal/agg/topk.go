package agg

import (
	"cmp"
	"encoding/binary"
	"fmt"
	"slices"
)

// TopItem is one value of a topk answer: Count overestimates the value's
// true count by at most Error.
type TopItem struct {
	Value string `json:"value"`
	Count uint64 `json:"count"`
	Error uint64 `json:"error"`
}

// Counters is how many counters a topk of k keeps: max(64, 4k).
func Counters(k int) int { return max(64, 4*k) }

// Encodings of a topk state (the format byte).
const (
	// topStream: uvarint total, uvarint n, then n counters (uvarint count,
	// uvarint error, value) in heap order.
	topStream = 1
	// topMerged: uvarint total, uvarint floor, uvarint n, then n entries
	// (uvarint count, uvarint error, uvarint covered, value) by value.
	topMerged = 2
)

type topKind struct{ k, m int }

func newTopKind(k int) topKind { return topKind{k: k, m: Counters(k)} }

func (t topKind) Init() State { return &topK{kind: t} }

// MaxBytes: m counters of two varints and a value of at most
// MaxTextBytes; a state read back is a table's, in stream form.
func (t topKind) MaxBytes() int {
	return 1 + 2*binary.MaxVarintLen64 + t.m*(2*binary.MaxVarintLen64+binary.MaxVarintLen16+MaxTextBytes+len("…")+16)
}

func (t topKind) Unmarshal(b []byte) (State, error) {
	r := &reader{b: b}
	s := &topK{kind: t}
	switch f := r.byte(); f {
	case topStream:
		s.total = r.uvarint()
		n := r.count(t.m, 3)
		s.heap = make([]counter, n)
		seen := make(map[string]bool, n)
		for i := range s.heap {
			c := &s.heap[i]
			c.count, c.err = r.uvarint(), r.uvarint()
			c.value = r.str(MaxTextBytes + 64)
			if seen[c.value] && r.err == nil {
				r.fail("topk: value listed twice")
			}
			seen[c.value] = true
			if r.err == nil && (c.err > c.count || (i > 0 && less(c, &s.heap[(i-1)/2]))) {
				r.fail("topk: counters out of order")
			}
		}
		if n > indexFrom {
			s.buildIndex()
		}
	case topMerged:
		s.total, s.floor = r.uvarint(), r.uvarint()
		n := r.count(1<<30, 4)
		s.merged = make(map[string]*entry, n)
		for range n {
			e := &entry{count: r.uvarint(), err: r.uvarint(), covered: r.uvarint()}
			v := r.str(MaxTextBytes + 64)
			if _, dup := s.merged[v]; dup && r.err == nil {
				r.fail("topk: value listed twice")
			}
			s.merged[v] = e
		}
	default:
		if r.err == nil {
			r.fail("unknown format %d", f)
		}
	}
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("topk: %w", err)
	}
	return s, nil
}

// topK is a Space-Saving summary (Metwally, Agrawal, El Abbadi, 2005).
//
// Fed by Add, it keeps at most m counters in a min-heap by count: a value
// already counted is incremented; a new one takes a free counter, or
// replaces the smallest one, inheriting its count (and that count as its
// error). Every count overestimates its value's true count by at most its
// error, itself at most total/m.
//
// Merged (a query's rows), it keeps the union of the summaries' counters
// without dropping any, with sums that do not depend on the order of the
// merges: for each value the counts and errors of the summaries that hold
// it, and covered, the sum of those summaries' floors; and floor, the sum
// of every summary's floor. A summary's floor bounds the true count of a
// value it does not hold: its smallest count when it is full, else 0. A
// value's count is then its counts plus floor − covered (what the
// summaries without it may have seen of it).
type topK struct {
	kind  topKind
	total uint64 // values counted
	// stream form
	heap  []counter
	index map[string]int32 // value → place in heap; nil while heap is short (searched)
	// merged form (heap and index are nil)
	merged map[string]*entry
	floor  uint64
}

type counter struct {
	value      string
	count, err uint64
}

type entry struct {
	count, err, covered uint64
}

// indexFrom is the heap length from which a summary keeps an index of
// its values; shorter ones are searched, which saves a map in the many
// cells that see few values.
const indexFrom = 16

// find returns the place of v in the heap, or -1.
func (s *topK) find(v string) int {
	if s.index != nil {
		if i, ok := s.index[v]; ok {
			return int(i)
		}
		return -1
	}
	for i := range s.heap {
		if s.heap[i].value == v {
			return i
		}
	}
	return -1
}

func (s *topK) buildIndex() {
	s.index = make(map[string]int32, max(len(s.heap), s.kind.m))
	for i, c := range s.heap {
		s.index[c.value] = int32(i)
	}
}

// less orders the heap: smallest count first; of equal counts the larger
// value first, so that of the smallest counters the one replaced is the
// same whatever order they were made in.
func less(a, b *counter) bool {
	if a.count != b.count {
		return a.count < b.count
	}
	return a.value > b.value
}

func (s *topK) Add(in *Input) bool {
	v := TopValue(in.Str)
	s.total++
	if s.merged != nil {
		s.mergedAdd(v, 1, 0, 0)
		return true
	}
	if i := s.find(v); i >= 0 {
		s.heap[i].count++
		s.down(i)
		return true
	}
	if len(s.heap) < s.kind.m {
		s.heap = append(s.heap, counter{value: v, count: 1})
		if s.index != nil {
			s.index[v] = int32(len(s.heap) - 1)
		} else if len(s.heap) > indexFrom {
			s.buildIndex()
		}
		s.up(len(s.heap) - 1)
		return true
	}
	min := &s.heap[0]
	if s.index != nil {
		delete(s.index, min.value)
		s.index[v] = 0
	}
	min.value, min.err = v, min.count
	min.count++
	s.down(0)
	return true
}

func (s *topK) swap(i, j int) {
	s.heap[i], s.heap[j] = s.heap[j], s.heap[i]
	if s.index != nil {
		s.index[s.heap[i].value] = int32(i)
		s.index[s.heap[j].value] = int32(j)
	}
}

func (s *topK) up(i int) {
	for i > 0 {
		p := (i - 1) / 2
		if !less(&s.heap[i], &s.heap[p]) {
			return
		}
		s.swap(i, p)
		i = p
	}
}

func (s *topK) down(i int) {
	for {
		small, l, r := i, 2*i+1, 2*i+2
		if l < len(s.heap) && less(&s.heap[l], &s.heap[small]) {
			small = l
		}
		if r < len(s.heap) && less(&s.heap[r], &s.heap[small]) {
			small = r
		}
		if small == i {
			return
		}
		s.swap(i, small)
		i = small
	}
}

// streamFloor is the true-count bound of a value a stream summary does not
// hold.
func (s *topK) streamFloor() uint64 {
	if len(s.heap) < s.kind.m {
		return 0
	}
	return s.heap[0].count
}

func (s *topK) mergedAdd(v string, count, err, covered uint64) {
	e := s.merged[v]
	if e == nil {
		e = &entry{}
		s.merged[v] = e
	}
	e.count += count
	e.err += err
	e.covered += covered
}

// toMerged turns a stream summary into the merged form.
func (s *topK) toMerged() {
	if s.merged != nil {
		return
	}
	f := s.streamFloor()
	s.merged = make(map[string]*entry, len(s.heap))
	for _, c := range s.heap {
		s.merged[c.value] = &entry{count: c.count, err: c.err, covered: f}
	}
	s.floor = f
	s.heap, s.index = nil, nil
}

func (s *topK) Merge(src State) {
	o := src.(*topK)
	s.toMerged()
	s.total += o.total
	if o.merged == nil {
		f := o.streamFloor()
		s.floor += f
		for _, c := range o.heap {
			s.mergedAdd(c.value, c.count, c.err, f)
		}
		return
	}
	s.floor += o.floor
	for v, e := range o.merged {
		s.mergedAdd(v, e.count, e.err, e.covered)
	}
}

func (s *topK) Marshal(b []byte) []byte {
	if s.merged == nil {
		b = append(b, topStream)
		b = binary.AppendUvarint(b, s.total)
		b = binary.AppendUvarint(b, uint64(len(s.heap)))
		for _, c := range s.heap {
			b = binary.AppendUvarint(b, c.count)
			b = binary.AppendUvarint(b, c.err)
			b = appendStr(b, c.value)
		}
		return b
	}
	b = append(b, topMerged)
	b = binary.AppendUvarint(b, s.total)
	b = binary.AppendUvarint(b, s.floor)
	b = binary.AppendUvarint(b, uint64(len(s.merged)))
	values := make([]string, 0, len(s.merged))
	for v := range s.merged {
		values = append(values, v)
	}
	slices.Sort(values)
	for _, v := range values {
		e := s.merged[v]
		b = binary.AppendUvarint(b, e.count)
		b = binary.AppendUvarint(b, e.err)
		b = binary.AppendUvarint(b, e.covered)
		b = appendStr(b, v)
	}
	return b
}

// Result lists the k values of the highest counts, highest first (of equal
// counts the smaller value first): never nil.
func (s *topK) Result() any {
	var items []TopItem
	if s.merged == nil {
		items = make([]TopItem, 0, len(s.heap))
		for _, c := range s.heap {
			items = append(items, TopItem{Value: c.value, Count: c.count, Error: c.err})
		}
	} else {
		items = make([]TopItem, 0, len(s.merged))
		for v, e := range s.merged {
			extra := s.floor - e.covered
			items = append(items, TopItem{Value: v, Count: e.count + extra, Error: e.err + extra})
		}
	}
	slices.SortFunc(items, func(a, b TopItem) int {
		if c := cmp.Compare(b.Count, a.Count); c != 0 {
			return c
		}
		return cmp.Compare(a.Value, b.Value)
	})
	if len(items) > s.kind.k {
		items = items[:s.kind.k:s.kind.k]
	}
	return items
}
