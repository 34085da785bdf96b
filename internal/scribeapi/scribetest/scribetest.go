// Package scribetest speaks Scribe the way old clients do, byte by byte,
// for tests of Freeway's ingest ports: a hand-built framed Log call with a
// strict or non-strict message header, sent on a raw connection.
package scribetest

import (
	"bytes"
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// LogFrame builds a framed Log call of (category, message) entries, as an
// old Scribe client writes it: strict (versioned) or non-strict header.
func LogFrame(strict bool, entries [][2]string) []byte {
	var b bytes.Buffer
	w32 := func(v uint32) { _ = binary.Write(&b, binary.BigEndian, v) } // a bytes.Buffer does not fail
	str := func(s string) { w32(uint32(len(s))); b.WriteString(s) }
	if strict {
		w32(0x80010001) // version 1, CALL
		str("Log")
	} else {
		str("Log")
		b.WriteByte(1) // CALL
	}
	w32(1) // seqid
	b.WriteByte(15)
	_ = binary.Write(&b, binary.BigEndian, int16(1)) // field 1: list
	b.WriteByte(12)
	w32(uint32(len(entries)))
	for _, e := range entries {
		b.WriteByte(11)
		_ = binary.Write(&b, binary.BigEndian, int16(1))
		str(e[0])
		b.WriteByte(11)
		_ = binary.Write(&b, binary.BigEndian, int16(2))
		str(e[1])
		b.WriteByte(0)
	}
	b.WriteByte(0)
	frame := binary.BigEndian.AppendUint32(nil, uint32(b.Len()))
	return append(frame, b.Bytes()...)
}

// OK is how a successful Log reply ends: field 0 (i32) = 0 (OK), then the
// stop of the result struct.
var OK = []byte{8, 0, 0, 0, 0, 0, 0, 0}

// TryLater is how a TRY_LATER Log reply ends.
var TryLater = []byte{8, 0, 0, 0, 0, 0, 1, 0}

// LogFrameOf builds a strict framed Log call of n entries of category
// with message msg each, without copying msg n times into separate
// buffers first.
func LogFrameOf(category string, msg []byte, n int) []byte {
	var b bytes.Buffer
	w32 := func(v uint32) { _ = binary.Write(&b, binary.BigEndian, v) } // a bytes.Buffer does not fail
	b.Grow(n * (len(msg) + len(category) + 16))
	b.Write([]byte{0, 0, 0, 0})
	w32(0x80010001)
	w32(3)
	b.WriteString("Log")
	w32(1)
	b.Write([]byte{15, 0, 1, 12})
	w32(uint32(n))
	for range n {
		b.Write([]byte{11, 0, 1})
		w32(uint32(len(category)))
		b.WriteString(category)
		b.Write([]byte{11, 0, 2})
		w32(uint32(len(msg)))
		b.Write(msg)
		b.WriteByte(0)
	}
	b.WriteByte(0)
	f := b.Bytes()
	binary.BigEndian.PutUint32(f, uint32(len(f)-4))
	return f
}

// Call sends frame on conn and returns the reply frame's payload, or the
// error that ended the exchange (the server closed the connection, say).
func Call(conn net.Conn, frame []byte) ([]byte, error) {
	conn.SetDeadline(time.Now().Add(60 * time.Second))
	if _, err := conn.Write(frame); err != nil {
		return nil, err
	}
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		return nil, err
	}
	reply := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(conn, reply); err != nil {
		return nil, err
	}
	return reply, nil
}

// RawCall sends frame on a new connection to addr and returns the reply
// frame's payload.
func RawCall(t testing.TB, addr string, frame []byte) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close() //nolint:errcheck // the reply read below is the check
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	if _, err := conn.Write(frame); err != nil {
		t.Fatal(err)
	}
	var hdr [4]byte
	if _, err := io.ReadFull(conn, hdr[:]); err != nil {
		t.Fatalf("read reply: %v", err)
	}
	reply := make([]byte, binary.BigEndian.Uint32(hdr[:]))
	if _, err := io.ReadFull(conn, reply); err != nil {
		t.Fatal(err)
	}
	return reply
}
