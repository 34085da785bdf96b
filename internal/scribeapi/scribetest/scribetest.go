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
	w32 := func(v uint32) { binary.Write(&b, binary.BigEndian, v) }
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
	binary.Write(&b, binary.BigEndian, int16(1)) // field 1: list
	b.WriteByte(12)
	w32(uint32(len(entries)))
	for _, e := range entries {
		b.WriteByte(11)
		binary.Write(&b, binary.BigEndian, int16(1))
		str(e[0])
		b.WriteByte(11)
		binary.Write(&b, binary.BigEndian, int16(2))
		str(e[1])
		b.WriteByte(0)
	}
	b.WriteByte(0)
	frame := binary.BigEndian.AppendUint32(nil, uint32(b.Len()))
	return append(frame, b.Bytes()...)
}

// OK is how a successful Log reply ends: field 0 (i32) = 0 (OK), then the
// stops of the result struct and the message.
var OK = []byte{8, 0, 0, 0, 0, 0, 0, 0}

// RawCall sends frame on a new connection to addr and returns the reply
// frame's payload.
func RawCall(t testing.TB, addr string, frame []byte) []byte {
	t.Helper()
	conn, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
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
