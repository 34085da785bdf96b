package calligraphus

import (
	"errors"
	"fmt"
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
