package agg

import (
	"encoding/binary"
	"fmt"
	"strings"
)

// edgeFormat is the encoding of a first or last state: format byte, flags
// (1: set, 2: a number), varint event time, varint arrival time, the
// number (8 bytes, when one), the text.
const edgeFormat = 1

// edgeKind is first (last false) or last.
type edgeKind struct{ last bool }

func (k edgeKind) Init() State { return &edge{last: k.last} }

func (edgeKind) MaxBytes() int {
	return 2 + 2*binary.MaxVarintLen64 + 8 + binary.MaxVarintLen16 + MaxTextBytes
}

func (k edgeKind) Unmarshal(b []byte) (State, error) {
	r := &reader{b: b}
	e := &edge{last: k.last}
	if f := r.byte(); f != edgeFormat && r.err == nil {
		r.fail("unknown format %d", f)
	}
	flags := r.byte()
	if flags&^3 != 0 && r.err == nil {
		r.fail("bad flags %d", flags)
	}
	if flags&1 != 0 {
		e.set, e.isNum = true, flags&2 != 0
		e.ts, e.arrival = r.varint(), r.varint()
		if e.isNum {
			e.num = r.float()
		}
		e.str = r.str(MaxTextBytes)
	}
	if err := r.done(); err != nil {
		return nil, fmt.Errorf("%s: %w", k.name(), err)
	}
	return e, nil
}

func (k edgeKind) name() string {
	if k.last {
		return "last"
	}
	return "first"
}

// edge is the value of first (the earliest event time) or last (the
// latest). Order: event time, then the block's arrival time; then, within
// a cell, the order of arrival (first keeps the earlier line, last takes
// the later) and, between cells, the value's text (first the smaller, last
// the larger), so that a merge does not depend on the order of merges.
type edge struct {
	last        bool
	set         bool
	ts, arrival int64
	isNum       bool
	num         float64
	str         string // clipped to MaxTextBytes
}

// cmpTime compares (ts, arrival) of a with b's.
func cmpTime(ts, arrival int64, e *edge) int {
	switch {
	case ts != e.ts:
		if ts < e.ts {
			return -1
		}
		return 1
	case arrival != e.arrival:
		if arrival < e.arrival {
			return -1
		}
		return 1
	}
	return 0
}

func (e *edge) Add(in *Input) bool {
	if e.set {
		c := cmpTime(in.TimeMs, in.ArrivalMs, e)
		if (!e.last && c >= 0) || (e.last && c < 0) {
			return true
		}
	}
	e.set, e.ts, e.arrival = true, in.TimeMs, in.ArrivalMs
	e.isNum, e.num = in.IsNum, in.Num
	e.str = EdgeValue(in.Str)
	return true
}

func (e *edge) Merge(src State) {
	o := src.(*edge)
	if !o.set {
		return
	}
	if e.set {
		c := cmpTime(o.ts, o.arrival, e)
		if c == 0 {
			c = strings.Compare(o.str, e.str)
		}
		if (!e.last && c >= 0) || (e.last && c <= 0) {
			return
		}
	}
	*e = edge{last: e.last, set: true, ts: o.ts, arrival: o.arrival, isNum: o.isNum, num: o.num, str: o.str}
}

func (e *edge) Marshal(b []byte) []byte {
	b = append(b, edgeFormat)
	if !e.set {
		return append(b, 0)
	}
	flags := byte(1)
	if e.isNum {
		flags |= 2
	}
	b = append(b, flags)
	b = binary.AppendVarint(b, e.ts)
	b = binary.AppendVarint(b, e.arrival)
	if e.isNum {
		b = appendFloat(b, e.num)
	}
	return appendStr(b, e.str)
}

// Result is the value: a number if the record said so (a JSON number),
// else its text; nil with no input.
func (e *edge) Result() any {
	if !e.set {
		return nil
	}
	if e.isNum {
		return finite(e.num)
	}
	return e.str
}
