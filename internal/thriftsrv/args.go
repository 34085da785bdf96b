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
	// them after (from that slice). The slice is valid until the call is
	// answered: until the processor returns or calls ReadMessageEnd,
	// whichever is first. It is read-only. A frame read in chunks is
	// copied into one slice, which it is read from thereafter, its
	// chunks given back: its bytes are held once, as its charge counts
	// them, whether the processor decodes the slice or the protocol.
	// While the copy is made it is held beside the chunks, in the room
	// the call reserved for decoded values: call Args before charging
	// any (ChargeDecoded). It returns nil where that room is short (a
	// call whose charge was cut to the whole budget, or one that charged
	// decoded values first): the processor then decodes through the
	// protocol, from the chunks.
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

func (p *callProtocol) Args() []byte {
	if n := p.frame.copies(); n > 0 && p.used+n > p.reserved {
		// Until rest has copied them and given the chunks back, the
		// bytes are held twice. Not charged beyond the reservation: a
		// charge that failed would refuse a call that can be decoded
		// without the copy.
		return nil
	}
	return p.frame.rest()
}

func (p *callProtocol) ChargeDecoded(n int64) error { return p.charge(n) }

func (p *callProtocol) MaxContainerSize() int32 { return p.cfg.GetMaxContainerSize() }

// maxFlatPooled: buffers a frame was read into whole, or its arguments
// copied into, are pooled up to this size (a Scribe call of a thousand
// lines is ~200 KiB).
const maxFlatPooled = 1 << 20

// copies is the bytes rest would copy: the unread bytes of a frame, if
// they are not in one chunk.
func (f *frameReader) copies() int64 {
	if f.left == 0 || int64(len(f.cur())) == f.left {
		return 0
	}
	return f.left
}

// rest returns the unread bytes of the frame in one slice, without
// consuming them: a slice of its chunk when they are in one; else they
// are copied into one slice, which the frame is read from thereafter
// as if it had been read whole, and its chunks go back to the pool. The
// copy takes the chunks' place: the frame's bytes are held once, as the
// call's charge counts them. (The chunks were kept until the call's
// end, and a processor that gave up on the copy and decoded through the
// protocol held the frame twice besides what it decoded: the copy
// uncharged, as the chunks, its decoded values the share of the charge
// reserved for them.)
func (f *frameReader) rest() []byte {
	if f.copies() == 0 {
		if f.left == 0 {
			return nil
		}
		return f.cur()
	}
	w := f.budget.getFlat()
	if int64(cap(*w)) < f.left {
		*w = make([]byte, 0, f.left)
	}
	b := (*w)[:0]
	ci, off, left := f.ci, f.off, f.left
	for left > 0 {
		n := int(min(int64(f.csize-off), left))
		b = append(b, (*f.chunks[ci])[off:off+n]...)
		left -= int64(n)
		ci, off = ci+1, 0
	}
	*w = b
	// Read in chunks: whole is nil.
	for _, c := range f.chunks {
		f.budget.putChunk(c)
	}
	clear(f.chunks)
	f.chunks = append(f.chunks[:0], w)
	f.whole, f.csize, f.ci, f.off = w, len(b), 0, 0
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
