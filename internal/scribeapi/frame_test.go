package scribeapi

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/scribewire"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// rawPeer accepts one connection, records each frame it reads and
// answers it with reply(seqid).
func rawPeer(t *testing.T, reply func(seqID int32) []byte) (string, <-chan []byte) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ln.Close() })
	frames := make(chan []byte, 16)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		for {
			var size [4]byte
			if _, err := io.ReadFull(c, size[:]); err != nil {
				return
			}
			f := make([]byte, 4+binary.BigEndian.Uint32(size[:]))
			copy(f, size[:])
			if _, err := io.ReadFull(c, f[4:]); err != nil {
				return
			}
			frames <- f
			// strict header: version|type, name, seqid
			nameLen := binary.BigEndian.Uint32(f[8:])
			seq := int32(binary.BigEndian.Uint32(f[12+nameLen:]))
			if _, err := c.Write(reply(seq)); err != nil {
				return
			}
		}
	}()
	return ln.Addr().String(), frames
}

// replyFrame is a framed LogBatch reply: rc, or an exception.
func replyFrame(t *testing.T, seq int32, rc scribethrift.ResultCode, exc thrift.TApplicationException) []byte {
	t.Helper()
	return replyFrameOf(t, "LogBatch", seq, rc, exc)
}

// replyFrameOf is a framed reply to the call name (Log or LogBatch:
// their results are the same struct on the wire).
func replyFrameOf(t *testing.T, name string, seq int32, rc scribethrift.ResultCode, exc thrift.TApplicationException) []byte {
	t.Helper()
	ctx := context.Background()
	buf := thrift.NewTMemoryBuffer()
	p := thrift.NewTBinaryProtocolConf(buf, nil)
	var err error
	if exc != nil {
		err = errors.Join(p.WriteMessageBegin(ctx, name, thrift.EXCEPTION, seq), exc.Write(ctx, p))
	} else {
		err = errors.Join(p.WriteMessageBegin(ctx, name, thrift.REPLY, seq),
			(&scribethrift.ScribeLogBatchResult{Success: &rc}).Write(ctx, p))
	}
	if err = errors.Join(err, p.WriteMessageEnd(ctx)); err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(buf.Len())), buf.Bytes()...)
}

// TestLogBatchFrameIsLogBatchEncoded: the frame LogBatchFrame writes
// from the caller's buffer is byte for byte the one LogBatchEncoded
// writes through the framed transport, call after call (the sequence
// ids too), and the answers (OK, TRY_LATER, an exception such as a
// stock server's unknown method) come back the same.
func TestLogBatchFrameIsLogBatchEncoded(t *testing.T) {
	answers := []func(seq int32) []byte{
		func(seq int32) []byte { return replyFrame(t, seq, scribethrift.ResultCode_OK, nil) },
		func(seq int32) []byte { return replyFrame(t, seq, scribethrift.ResultCode_TRY_LATER, nil) },
		func(seq int32) []byte {
			return replyFrame(t, seq, 0, thrift.NewTApplicationException(thrift.UNKNOWN_METHOD, "Invalid method name: 'LogBatch'"))
		},
	}
	answer := func(seq int32) []byte { return answers[(seq-1)%int32(len(answers))](seq) }
	inc := "incarnation"
	addrA, framesA := rawPeer(t, answer)
	addrB, framesB := rawPeer(t, answer)
	a, err := Dial(addrA, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Dial(addrB, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for round := range 2 * len(answers) {
		args := scribewire.AppendBatchHead(nil, "agent", int64(100+round), 3)
		for i := range 3 {
			args = scribewire.AppendEntry(args, "cat", bytes.Repeat([]byte{byte('a' + i)}, 10+round*1000*i))
		}
		args = scribewire.AppendBatchTail(args, 1764583200000, &inc)
		rcA, errA := a.LogBatchEncoded(ctx, args)
		rcB, errB := b.LogBatchFrame(ctx, append(make([]byte, BatchFrameHead), args...))
		fa, fb := <-framesA, <-framesB
		if !bytes.Equal(fa, fb) {
			t.Fatalf("round %d: frames differ:\n%x\n%x", round, fa, fb)
		}
		var aeA, aeB thrift.TApplicationException
		if rcA != rcB || (errA == nil) != (errB == nil) || errors.As(errA, &aeA) != errors.As(errB, &aeB) ||
			aeA != nil && aeA.TypeId() != aeB.TypeId() {
			t.Fatalf("round %d: answers differ: %v %v, %v %v", round, rcA, errA, rcB, errB)
		}
		if round%len(answers) == 2 && (aeB == nil || aeB.TypeId() != thrift.UNKNOWN_METHOD) {
			t.Fatalf("round %d: the exception was not passed on: %v", round, errB)
		}
	}
	if _, err := b.LogBatchFrame(ctx, make([]byte, BatchFrameHead-1)); err == nil {
		t.Fatal("a frame without room for its head was sent")
	}
}

// TestLogFrameIsLogEncoded: the same for Log: LogFrame's frames are
// LogEncoded's byte for byte, and so are the answers.
func TestLogFrameIsLogEncoded(t *testing.T) {
	answers := []func(seq int32) []byte{
		func(seq int32) []byte { return replyFrameOf(t, "Log", seq, scribethrift.ResultCode_OK, nil) },
		func(seq int32) []byte { return replyFrameOf(t, "Log", seq, scribethrift.ResultCode_TRY_LATER, nil) },
		func(seq int32) []byte {
			return replyFrameOf(t, "Log", seq, 0, thrift.NewTApplicationException(thrift.INTERNAL_ERROR, "Internal error processing Log"))
		},
	}
	answer := func(seq int32) []byte { return answers[(seq-1)%int32(len(answers))](seq) }
	addrA, framesA := rawPeer(t, answer)
	addrB, framesB := rawPeer(t, answer)
	a, err := Dial(addrA, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	b, err := Dial(addrB, thriftsrv.Limits{}, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	ctx := context.Background()
	for round := range 2 * len(answers) {
		args := scribewire.AppendLogHead(nil, 3)
		for i := range 3 {
			args = scribewire.AppendEntry(args, "cat", bytes.Repeat([]byte{byte('a' + i)}, 10+round*1000*i))
		}
		args = scribewire.AppendLogTail(args)
		rcA, errA := a.LogEncoded(ctx, args)
		rcB, errB := b.LogFrame(ctx, append(make([]byte, LogFrameHead), args...))
		fa, fb := <-framesA, <-framesB
		if !bytes.Equal(fa, fb) {
			t.Fatalf("round %d: frames differ:\n%x\n%x", round, fa, fb)
		}
		var aeA, aeB thrift.TApplicationException
		if rcA != rcB || (errA == nil) != (errB == nil) || errors.As(errA, &aeA) != errors.As(errB, &aeB) ||
			aeA != nil && aeA.TypeId() != aeB.TypeId() {
			t.Fatalf("round %d: answers differ: %v %v, %v %v", round, rcA, errA, rcB, errB)
		}
		if round%len(answers) == 1 && rcB != scribethrift.ResultCode_TRY_LATER {
			t.Fatalf("round %d: TRY_LATER answered %v", round, rcB)
		}
		if round%len(answers) == 2 && aeB == nil {
			t.Fatalf("round %d: the exception was not passed on: %v", round, errB)
		}
	}
	if _, err := b.LogFrame(ctx, make([]byte, LogFrameHead-1)); err == nil {
		t.Fatal("a frame without room for its head was sent")
	}
}

// emptyReplyFrame is a framed reply to the call name whose result struct
// holds no field: no result code, no exception.
func emptyReplyFrame(t *testing.T, name string, seq int32) []byte {
	t.Helper()
	ctx := context.Background()
	buf := thrift.NewTMemoryBuffer()
	p := thrift.NewTBinaryProtocolConf(buf, nil)
	if err := errors.Join(p.WriteMessageBegin(ctx, name, thrift.REPLY, seq),
		(&scribethrift.ScribeLogBatchResult{}).Write(ctx, p), p.WriteMessageEnd(ctx)); err != nil {
		t.Fatal(err)
	}
	return append(binary.BigEndian.AppendUint32(nil, uint32(buf.Len())), buf.Bytes()...)
}

// TestReplyWithoutResultIsAnError: a reply that holds no result code is
// a failed call (MISSING_RESULT), not OK, the code's zero value, which
// the generated code reads: an agent taking it for OK would drop from
// its queue entries the peer never stored.
func TestReplyWithoutResultIsAnError(t *testing.T) {
	ctx := context.Background()
	batch := scribewire.AppendBatchTail(scribewire.AppendEntry(scribewire.AppendBatchHead(nil, "agent", 1, 1), "cat", []byte("x")), 1764583200000, nil)
	log := scribewire.AppendLogTail(scribewire.AppendEntry(scribewire.AppendLogHead(nil, 1), "cat", []byte("x")))
	calls := []struct {
		name string
		call func(c *Client) (scribethrift.ResultCode, error)
	}{
		{"LogBatch", func(c *Client) (scribethrift.ResultCode, error) { return c.LogBatchEncoded(ctx, batch) }},
		{"LogBatch", func(c *Client) (scribethrift.ResultCode, error) {
			return c.LogBatchFrame(ctx, append(make([]byte, BatchFrameHead), batch...))
		}},
		{"Log", func(c *Client) (scribethrift.ResultCode, error) { return c.LogEncoded(ctx, log) }},
		{"Log", func(c *Client) (scribethrift.ResultCode, error) {
			return c.LogFrame(ctx, append(make([]byte, LogFrameHead), log...))
		}},
	}
	for i, tc := range calls {
		addr, frames := rawPeer(t, func(seq int32) []byte { return emptyReplyFrame(t, tc.name, seq) })
		c, err := Dial(addr, thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rc, err := tc.call(c)
		<-frames
		var ae thrift.TApplicationException
		if !errors.As(err, &ae) || ae.TypeId() != thrift.MISSING_RESULT {
			t.Errorf("call %d (%s): %v, %v; want a MISSING_RESULT error", i, tc.name, rc, err)
		}
		_ = c.Close()
	}
}
