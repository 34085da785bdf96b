package thriftsrv

import (
	"math"

	"github.com/apache/thrift/lib/go/thrift"
)

// ArgsFrame is what a processor function may ask of the protocol the
// server decodes calls with, to decode a call's arguments from its bytes
// in one pass instead of value by value (internal/scribewire does for
// Scribe's Log and LogBatch). A processor that finds its iprot is not an
// ArgsFrame decodes through the protocol as usual.
type ArgsFrame interface {
	// Args returns the unread bytes of the call's frame, its arguments, in
	// one slice, without consuming them: the protocol can still decode
	// them after. The slice is valid until the call is answered: until
	// the processor returns or calls ReadMessageEnd, whichever is first.
	// It is read-only.
	Args() []byte
	// ChargeDecoded charges n bytes of decoded values to the call's share
	// of the in-flight byte budget, as decoding through the protocol
	// would have; an error means there is no room: the processor returns
	// it, and the server answers the call as refused (busy). A negative
	// n gives back what was charged for values dropped (a decode given
	// up, to be done through the protocol); it does not fail.
	ChargeDecoded(n int64) error
	// MaxContainerSize is the limit on the elements of a list.
	MaxContainerSize() int32
}

var _ ArgsFrame = (*callProtocol)(nil)

func (p *callProtocol) Args() []byte { return p.frame.rest() }

func (p *callProtocol) ChargeDecoded(n int64) error { return p.charge(n) }

func (p *callProtocol) MaxContainerSize() int32 { return p.cfg.GetMaxContainerSize() }

// maxFlatPooled: buffers a frame was read into whole, or its arguments
// copied into, are pooled up to this size (a Scribe call of a thousand
// lines is ~200 KiB).
const maxFlatPooled = 1 << 20

// rest returns the unread bytes of the frame in one slice: a slice of its
// chunk when they are in one, else a copy (charged to the call as decoded
// values: it is at most the frame's size, which the call's charge
// reserves for them). Nothing is consumed.
func (f *frameReader) rest() []byte {
	if f.left == 0 {
		return nil
	}
	if c := f.cur(); int64(len(c)) == f.left {
		return c
	}
	if f.flat == nil {
		f.flat = f.budget.getFlat()
	}
	if int64(cap(*f.flat)) < f.left {
		*f.flat = make([]byte, 0, f.left)
	}
	b := (*f.flat)[:0]
	ci, off, left := f.ci, f.off, f.left
	for left > 0 {
		n := int(min(int64(f.csize-off), left))
		b = append(b, (*f.chunks[ci])[off:off+n]...)
		left -= int64(n)
		ci, off = ci+1, 0
	}
	*f.flat = b
	return b
}

func (b *Budget) getFlat() *[]byte {
	if v, ok := b.flats.Get().(*[]byte); ok {
		return v
	}
	return new([]byte)
}

func (b *Budget) putFlat(v *[]byte) {
	if cap(*v) > maxFlatPooled {
		return
	}
	*v = (*v)[:0]
	b.flats.Put(v)
}

// MemoryProtocol returns the protocol the server decodes a call's
// arguments with, over b (the bytes after the message header) under
// limits, with a budget of its own that never runs out, and the bytes
// its decoding has charged so far: for tests and fuzz targets that
// compare another decoder with this one.
func MemoryProtocol(b []byte, limits Limits) (thrift.TProtocol, func() int64) {
	fr := &frameReader{budget: NewBudget(math.MaxInt64/4, nil)}
	// b is all head: nothing is read, nothing fails.
	_ = fr.fill(nil, b, int64(len(b)), nil)
	p := newCallProtocol(fr, limits.withDefaults().Config())
	p.reset(math.MaxInt64/8, 0)
	return p, func() int64 { return p.used }
}
