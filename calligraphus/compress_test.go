package calligraphus

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"path"
	"slices"
	"testing"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestSegmentsAreCompressedAsConfigured: "auto" (the default) stores
// the blocks of log lines compressed (s2) in a fraction of the bytes on
// HDFS, and as they are on a local disk; "s2" and "none" do so on
// either. All read back (scan, ptail) as the entries sent.
func TestSegmentsAreCompressedAsConfigured(t *testing.T) {
	var want []string
	var es []*scribethrift.LogEntry
	for i := range 400 {
		m := fmt.Sprintf(`{"ts":%d,"key":"k%04d","status":200,"path":"/api/v1/items/%d"}`, 1796330585166+i, i%97, i*7)
		want = append(want, m)
		es = append(es, &scribethrift.LogEntry{Category: "cat", Message: []byte(m)})
	}
	sizes := map[segment.Compression]int{}
	for _, tc := range []struct {
		comp     string // "": the default
		hdfsLike bool
		want     segment.Compression
	}{
		{"", false, segment.Uncompressed},
		{"", true, segment.S2},
		{"s2", false, segment.S2},
		{"none", true, segment.Uncompressed},
	} {
		t.Run(fmt.Sprintf("compression=%q,hdfslike=%v", tc.comp, tc.hdfsLike), func(t *testing.T) {
			fsys := dfstest.NewFaulty(newLocal(t))
			if tc.hdfsLike {
				fsys = fsys.LikeHDFS()
			}
			_, co := inprocCoord(t)
			cfg := testConfig()
			if tc.comp != "" {
				cfg.Compression = tc.comp
			}
			s := startServer(t, cfg, fsys, co, nil)
			mustLog(t, s.dial(t), es)
			s.stop()
			dir := layout.BucketDir("cat", 0)
			if got := msgs(scan(t, fsys, dir)); !slices.Equal(got, want) {
				t.Fatalf("read back %d entries %q..., want %d", len(got), head(got), len(want))
			}
			if got := msgs(tail(t, fsys, dir, len(want))); !slices.Equal(got, want) {
				t.Fatalf("ptail read %q..., want %q...", head(got), head(want))
			}
			names := published(t, fsys, dir, false)
			if len(names) != 1 {
				t.Fatalf("segments %v, want one", names)
			}
			data, err := dfs.ReadFile(fsys, path.Join(dir, names[0]))
			if err != nil {
				t.Fatal(err)
			}
			if flags := segment.Compression(data[segment.HeaderSizeV2+segment.BlockHeaderSize]); flags != tc.want {
				t.Errorf("first block stored with flags %v, want %v", flags, tc.want)
			}
			sizes[tc.want] = len(data)
		})
	}
	if sizes[segment.S2]*3 > sizes[segment.Uncompressed] {
		t.Errorf("compressed segment %d bytes, uncompressed %d: not a third", sizes[segment.S2], sizes[segment.Uncompressed])
	}
}

func TestUnknownCompressionIsRefused(t *testing.T) {
	cfg := testConfig()
	cfg.Compression = "zstd"
	err := cfg.Validate()
	var fe *config.FieldError
	if !errors.As(err, &fe) || fe.Path != "compression" {
		t.Fatalf("compression zstd: %v, want a field error at compression", err)
	}
}

// TestSalvageMovesBlocksItDoesNotDecode: salvage checks each block's
// header and the CRC of its stored body, and moves the block as stored
// without decoding it: a block of a compression this version does not
// know (flags 2: a later version's writer crashed, this one took the
// bucket) is published with the others, for a reader that knows it,
// not dropped as damage with its acknowledged entries.
func TestSalvageMovesBlocksItDoesNotDecode(t *testing.T) {
	fsys := dfstest.NewFaulty(newLocal(t))
	_, co := inprocCoord(t)
	dir := "cat/0"
	enc := segment.NewEncoder()
	data := enc.AppendHeader(nil)
	for i, m := range []string{"acked-1", "later-compression", "acked-3"} {
		start := len(data)
		data = segment.AppendUnstampedAs(data, &segment.Block{Agent: "a/i", ArrivalMs: 1, Messages: [][]byte{[]byte(m)}, Seqs: []uint64{uint64(i + 1)}}, segment.S2)
		if i == 1 {
			body := data[start+segment.BlockHeaderSize:]
			body[0] = 2 // flags: a compression after s2
			binary.LittleEndian.PutUint32(data[start+24:], crc32.Checksum(body, crc32.MakeTable(crc32.Castagnoli)))
		}
		if err := enc.Stamp(data[start:]); err != nil {
			t.Fatal(err)
		}
	}
	name := writeCrashedSegment(t, fsys, dir, data)
	s := takeOver(t, fsys, co)
	s.stop()
	salvaged, err := dfs.ReadFile(fsys, path.Join(dir, name))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(salvaged, data) {
		t.Errorf("salvaged segment of %d bytes, want the %d of all three blocks as stored", len(salvaged), len(data))
	}
	// This version's readers pass over the block they cannot decode as
	// damage, counting its entry (its header's count).
	es, r := tailCounting(t, fsys, dir, 3)
	got := msgs(es)
	if !slices.Equal(got, []string{"acked-1", "acked-3", "new"}) || r.DamagedBlocks != 1 || r.DamagedEntries != 1 {
		t.Errorf("ptail read %q, %d damaged blocks of %d entries; want the others, 1 of 1", got, r.DamagedBlocks, r.DamagedEntries)
	}
}
