package agg

import (
	"encoding/binary"
	"fmt"
	"slices"

	"github.com/axiomhq/hyperloglog"
	"github.com/cespare/xxhash/v2"
)

// ExactDistinct is how many distinct values count_distinct keeps exactly
// (their hashes, 8 bytes each) before it turns to a HyperLogLog.
const ExactDistinct = 256

// hllPrecision: 2^14 registers, 0.81% standard error, 16 KiB dense.
const hllPrecision = 14

// Encodings of a count_distinct state (the format byte).
const (
	distinctExact = 1 // uvarint n, then n ascending hashes, 8 bytes each
	distinctHLL   = 2 // the sketch's own encoding (axiomhq/hyperloglog, version 2)
)

type distinctKind struct{}

func (distinctKind) Init() State { return &distinct{} }

// MaxBytes: a sparse sketch holds at most 2^14 delta-encoded keys (5
// bytes at most each) and a temporary set of at most 2^14/100 keys (4
// bytes each) before it turns dense (2^14 bytes).
func (distinctKind) MaxBytes() int {
	const m = 1 << hllPrecision
	return 1 + 4 + 4 + 4*(m/100+1) + 12 + 5*m
}

func (distinctKind) Unmarshal(b []byte) (State, error) {
	r := &reader{b: b}
	switch f := r.byte(); f {
	case distinctExact:
		n := r.count(ExactDistinct, 8)
		d := &distinct{exact: make([]uint64, n)}
		for i := range d.exact {
			d.exact[i] = r.u64()
			if i > 0 && d.exact[i] <= d.exact[i-1] && r.err == nil {
				r.fail("count_distinct: hashes out of order")
			}
		}
		if err := r.done(); err != nil {
			return nil, fmt.Errorf("count_distinct: %w", err)
		}
		return d, nil
	case distinctHLL:
		if len(r.b) < 2 || r.b[1] != hllPrecision {
			return nil, fmt.Errorf("count_distinct: %w: not a sketch of precision %d", errDamaged, hllPrecision)
		}
		sk, err := unmarshalHLL(r.b)
		if err != nil {
			return nil, fmt.Errorf("count_distinct: %w: %w", errDamaged, err)
		}
		return &distinct{hll: sk}, nil
	default:
		if r.err != nil {
			return nil, fmt.Errorf("count_distinct: %w", r.err)
		}
		return nil, fmt.Errorf("count_distinct: %w: unknown format %d", errDamaged, f)
	}
}

// unmarshalHLL decodes a sketch; the library validates its input, and a
// panic it might still raise on damaged bytes is an error here.
func unmarshalHLL(b []byte) (sk *hyperloglog.Sketch, err error) {
	defer func() {
		if p := recover(); p != nil {
			sk, err = nil, fmt.Errorf("decode sketch: %v", p)
		}
	}()
	sk = new(hyperloglog.Sketch)
	if err := sk.UnmarshalBinary(b); err != nil {
		return nil, err
	}
	return sk, nil
}

// distinct counts distinct values: exactly (sorted hashes) while there are
// at most ExactDistinct of them, then in a HyperLogLog holding the same
// hashes, which is the sketch one would have got by inserting every value
// into it from the start.
type distinct struct {
	exact []uint64 // sorted, while hll is nil
	hll   *hyperloglog.Sketch
}

func (d *distinct) Add(in *Input) bool {
	d.insert(xxhash.Sum64String(in.Str))
	return true
}

func (d *distinct) insert(h uint64) {
	if d.hll != nil {
		d.hll.InsertHash(h)
		return
	}
	i, found := slices.BinarySearch(d.exact, h)
	if found {
		return
	}
	if len(d.exact) < ExactDistinct {
		d.exact = slices.Insert(d.exact, i, h)
		return
	}
	d.toSketch()
	d.hll.InsertHash(h)
}

func (d *distinct) toSketch() {
	sk, err := hyperloglog.NewSketch(hllPrecision, true)
	if err != nil {
		panic(err) // a constant precision the library accepts
	}
	for _, h := range d.exact {
		sk.InsertHash(h)
	}
	d.hll, d.exact = sk, nil
}

func (d *distinct) Merge(src State) {
	s := src.(*distinct)
	if s.hll != nil {
		if d.hll == nil {
			d.toSketch()
		}
		if err := d.hll.Merge(s.hll); err != nil {
			panic(err) // both have hllPrecision
		}
		return
	}
	if d.hll != nil {
		for _, h := range s.exact {
			d.hll.InsertHash(h)
		}
		return
	}
	// The union of two sorted sets.
	union := make([]uint64, 0, len(d.exact)+len(s.exact))
	i, j := 0, 0
	for i < len(d.exact) || j < len(s.exact) {
		switch {
		case j == len(s.exact) || (i < len(d.exact) && d.exact[i] < s.exact[j]):
			union = append(union, d.exact[i])
			i++
		case i == len(d.exact) || s.exact[j] < d.exact[i]:
			union = append(union, s.exact[j])
			j++
		default:
			union = append(union, d.exact[i])
			i++
			j++
		}
	}
	d.exact = union
	if len(union) > ExactDistinct {
		d.toSketch()
	}
}

func (d *distinct) Marshal(b []byte) []byte {
	if d.hll == nil {
		b = append(b, distinctExact)
		b = binary.AppendUvarint(b, uint64(len(d.exact)))
		for _, h := range d.exact {
			b = binary.LittleEndian.AppendUint64(b, h)
		}
		return b
	}
	b = append(b, distinctHLL)
	out, err := d.hll.AppendBinary(b)
	if err != nil {
		panic(err) // a sketch made with a valid precision
	}
	return out
}

func (d *distinct) Result() any {
	if d.hll == nil {
		return float64(len(d.exact))
	}
	return float64(d.hll.Estimate())
}
