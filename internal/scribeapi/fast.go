package scribeapi

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"sync"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// EntriesHandler is a Handler that also takes a call's entries as slices
// into the call's bytes (internal/scribewire), without a LogEntry and a
// message allocated per entry. The server gives Log and LogBatch calls to
// these methods when their arguments decode on scribewire's fast path,
// and to the Handler's methods otherwise (a LogEntry with metadata,
// unknown fields, malformed input: the generated code's decode and
// errors). Both must take the same entries the same way.
//
// The entries' bytes, and the entries and batch themselves, are valid
// only until the method returns: a handler that keeps messages longer
// copies them first (scribewire.OwnMessages).
type EntriesHandler interface {
	Handler
	LogEntries(ctx context.Context, entries []scribewire.Entry) (scribethrift.ResultCode, error)
	// LogBatchEntries gets a nil batch where LogBatch gets a nil one.
	LogBatchEntries(ctx context.Context, batch *scribewire.Batch, entries []scribewire.Entry) (scribethrift.ResultCode, error)
}

// useFastPath puts the fast processor functions in front of the
// generated ones for Log and LogBatch.
func useFastPath(p *scribethrift.ScribeProcessor, h EntriesHandler) {
	decoders := &sync.Pool{New: func() any { return &scribewire.Decoder{} }}
	for _, name := range []string{"Log", "LogBatch"} {
		slow, _ := p.GetProcessorFunction(name)
		p.AddToProcessorMap(name, &fastProcessor{name: name, batch: name == "LogBatch", h: h, slow: slow, decoders: decoders})
	}
}

// fastProcessor serves Log or LogBatch: it decodes the arguments from the
// frame's bytes with scribewire and answers as the generated processor
// function does; where scribewire gives up it hands the call, still
// unread, to the generated one.
type fastProcessor struct {
	name     string
	batch    bool
	h        EntriesHandler
	slow     thrift.TProcessorFunction
	decoders *sync.Pool
}

func (p *fastProcessor) Process(ctx context.Context, seqID int32, iprot, oprot thrift.TProtocol) (bool, thrift.TException) {
	af, ok := iprot.(thriftsrv.ArgsFrame)
	if !ok {
		return p.slow.Process(ctx, seqID, iprot, oprot)
	}
	d := p.decoders.Get().(*scribewire.Decoder)
	defer func() {
		d.Reserve = nil // a pooled decoder keeps no call's protocol
		d.Release()
		if d.Poolable() {
			p.decoders.Put(d)
		}
	}()
	d.MaxContainerSize = af.MaxContainerSize()
	// A list is charged at its header, before its entries are decoded, as
	// the generated code charges it: a call without room for them is
	// refused, or waits, before they are allocated, not after.
	var reserved int64
	var rerr error
	d.Reserve = func(n int64) bool {
		if rerr = af.ChargeDecoded(n); rerr != nil {
			return false
		}
		reserved += n
		return true
	}
	if p.batch {
		ok = d.DecodeLogBatch(af.Args())
	} else {
		ok = d.DecodeLog(af.Args())
	}
	if d.Refused {
		// As when the generated decode runs out of budget: the server
		// refuses the call (busy) whatever is answered here.
		_ = iprot.ReadMessageEnd(ctx)
		return false, thrift.WrapTException(rerr)
	}
	if !ok {
		// The generated code charges what it decodes: what was decoded
		// here is dropped, and its charge given back.
		d.Release()
		_ = af.ChargeDecoded(-reserved) // giving back does not fail
		return p.slow.Process(ctx, seqID, iprot, oprot)
	}
	if err := af.ChargeDecoded(d.Charge - reserved); err != nil {
		// As when the generated decode runs out of budget: the server
		// refuses the call (busy) whatever is answered here.
		_ = iprot.ReadMessageEnd(ctx)
		return false, thrift.WrapTException(err)
	}
	var rc scribethrift.ResultCode
	var herr error
	if p.batch {
		rc, herr = p.h.LogBatchEntries(ctx, d.Batch, d.Entries)
	} else {
		rc, herr = p.h.LogEntries(ctx, d.Entries)
	}
	// The frame's bytes go back to the pool only now: the entries pointed
	// into them.
	_ = iprot.ReadMessageEnd(ctx)
	var res thrift.TStruct
	typ := thrift.REPLY
	switch {
	case herr != nil && errors.Is(herr, thrift.ErrAbandonRequest):
		return false, thrift.WrapTException(herr)
	case herr != nil:
		typ = thrift.EXCEPTION
		res = thrift.NewTApplicationException(thrift.INTERNAL_ERROR, "Internal error processing "+p.name+": "+herr.Error())
	case p.batch:
		res = &scribethrift.ScribeLogBatchResult{Success: &rc}
	default:
		res = &scribethrift.ScribeLogResult{Success: &rc}
	}
	werr := oprot.WriteMessageBegin(ctx, p.name, typ, seqID)
	if werr == nil {
		werr = res.Write(ctx, oprot)
	}
	if werr == nil {
		werr = oprot.WriteMessageEnd(ctx)
	}
	if werr == nil {
		werr = oprot.Flush(ctx)
	}
	if werr != nil {
		return false, thrift.WrapTException(werr)
	}
	return true, thrift.WrapTException(herr)
}

// encodedArgs are a call's arguments already encoded in the binary
// protocol (scribewire's Append functions), written as they are.
type encodedArgs []byte

func (a encodedArgs) Write(_ context.Context, oprot thrift.TProtocol) error {
	if _, ok := oprot.(*thrift.TBinaryProtocol); !ok {
		return thrift.NewTProtocolExceptionWithType(thrift.NOT_IMPLEMENTED, errors.New("encoded arguments need the binary protocol"))
	}
	// The binary protocol writes through to its transport: these bytes
	// follow the message header it wrote.
	if _, err := oprot.Transport().Write(a); err != nil {
		return thrift.NewTTransportExceptionFromError(err)
	}
	return nil
}

func (a encodedArgs) Read(context.Context, thrift.TProtocol) error {
	return errors.New("encoded arguments are only written")
}

// LogEncoded is Log with its arguments encoded already
// (scribewire.AppendLogHead, AppendEntry, AppendLogTail): no LogEntry
// and no protocol call per entry.
func (c *Client) LogEncoded(ctx context.Context, args []byte) (scribethrift.ResultCode, error) {
	var res scribethrift.ScribeLogResult
	meta, err := c.Client_().Call(ctx, "Log", encodedArgs(args), &res)
	c.SetLastResponseMeta_(meta)
	if err != nil {
		return 0, err
	}
	return result("Log", res.Success)
}

// LogBatchEncoded is LogBatch with its arguments encoded already
// (scribewire.AppendBatchHead, AppendEntry, AppendBatchTail).
func (c *Client) LogBatchEncoded(ctx context.Context, args []byte) (scribethrift.ResultCode, error) {
	var res scribethrift.ScribeLogBatchResult
	meta, err := c.Client_().Call(ctx, "LogBatch", encodedArgs(args), &res)
	c.SetLastResponseMeta_(meta)
	if err != nil {
		return 0, err
	}
	return result("LogBatch", res.Success)
}

// BatchFrameHead is the room LogBatchFrame needs before the arguments:
// the frame's size and LogBatch's message header (strict binary).
const BatchFrameHead = 4 + 4 + 4 + len("LogBatch") + 4

// BatchOverhead bounds what a LogBatch call's frame (after its size)
// holds besides its entries, each scribewire.EntrySize and 8 bytes more
// in a batch with seqs (a writer forwarding it): the message header, the
// agent id, the incarnation and the batch's other fields. A writer
// forwards in batches within max_call_bytes by it, and an agent takes no
// entry that a batch of it alone, forwarded, would put over its own.
func BatchOverhead(agentID, incarnation string) int64 {
	return int64(BatchFrameHead + 64 + len(agentID) + len(incarnation))
}

// LogFrameHead is the room LogFrame needs before the arguments.
const LogFrameHead = 4 + 4 + 4 + len("Log") + 4

// LogBatchFrame is LogBatchEncoded with the arguments encoded after
// BatchFrameHead bytes of room at the start of frame (the caller's
// buffer): the frame's size and the message header are written into
// that room and the frame goes out as it is, in one write, instead of
// being copied into the framed transport's buffer and written in two.
// The bytes on the wire are LogBatchEncoded's.
func (c *Client) LogBatchFrame(ctx context.Context, frame []byte) (scribethrift.ResultCode, error) {
	var res scribethrift.ScribeLogBatchResult
	if err := c.callFrame(ctx, "LogBatch", frame, &res); err != nil {
		return 0, err
	}
	return result("LogBatch", res.Success)
}

// LogFrame is LogBatchFrame for Log: LogEncoded with the arguments
// encoded after LogFrameHead bytes of room at the start of frame, sent
// in one write without a copy. The bytes on the wire are LogEncoded's.
func (c *Client) LogFrame(ctx context.Context, frame []byte) (scribethrift.ResultCode, error) {
	var res scribethrift.ScribeLogResult
	if err := c.callFrame(ctx, "Log", frame, &res); err != nil {
		return 0, err
	}
	return result("Log", res.Success)
}

// errNoResult is a reply that holds no result code.
var errNoResult = thrift.NewTApplicationException(thrift.MISSING_RESULT, "the reply holds no result code")

// result is a call's result code. A reply without one is an error, as
// Thrift's Java clients make it (MISSING_RESULT): the generated Go code
// reads it as the code's zero value, OK, and a sender that took that
// for OK would drop entries nobody stored. Freeway's writers and stock
// Scribe servers always set it; a broken proxy or server might not.
func result(name string, rc *scribethrift.ResultCode) (scribethrift.ResultCode, error) {
	if rc == nil {
		return 0, fmt.Errorf("%s: %w", name, errNoResult)
	}
	return *rc, nil
}

// callFrame writes the size and the call's message header into the room
// at the start of frame, sends it and reads the answer into res.
func (c *Client) callFrame(ctx context.Context, name string, frame []byte, res thrift.TStruct) error {
	head := 4 + 4 + 4 + len(name) + 4
	if len(frame) < head {
		return fmt.Errorf("%s: a frame of %d bytes has no room for its head", name, len(frame))
	}
	c.seq++
	h := frame[4:head]
	binary.BigEndian.PutUint32(h, uint32(thrift.VERSION_1)|uint32(thrift.CALL))
	binary.BigEndian.PutUint32(h[4:], uint32(len(name)))
	copy(h[8:], name)
	binary.BigEndian.PutUint32(h[8+len(name):], uint32(c.seq))
	if err := c.conn.WriteFrame(ctx, frame); err != nil {
		return err
	}
	return c.std.Recv(ctx, c.iprot, c.seq, name, res)
}
