package copier_test

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"

	"github.com/freeway-dev/freeway/copier"
	"github.com/freeway-dev/freeway/internal/coord/inproc"
	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
	"github.com/freeway-dev/freeway/internal/store/boltstore"
)

// One pass from a pipeline's local dfs to a backup directory, as
// `freeway copier --once` would make it.
func ExampleCopier_CopyOnce() {
	dir, err := os.MkdirTemp("", "copier-example")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(dir)
	src, _ := localfs.New(filepath.Join(dir, "dfs"))
	dst, _ := localfs.New(filepath.Join(dir, "backup"))
	progress, err := boltstore.Open(filepath.Join(dir, "store.db"))
	if err != nil {
		log.Fatal(err) //nolint:gocritic // an example: a failure here may leave the temporary directory behind
	}
	defer progress.Close()

	// A writer published one segment of bucket 0 of category "access".
	enc := segment.NewEncoder()
	seg := enc.AppendBlock(enc.AppendHeader(nil), &segment.Block{Messages: [][]byte{[]byte("GET / 200")}})
	name := layout.BucketDir("access", 0) + "/" + layout.SegmentName(1, 0)
	if err := dfs.WriteFile(src, name, seg); err != nil {
		log.Fatal(err)
	}

	cfg := copier.DefaultConfig()
	cfg.Destination = dst.String()
	c, err := copier.New(cfg, copier.Deps{Source: src, Dest: dst, Store: progress, Coord: inproc.NewHub().Session()})
	if err != nil {
		log.Fatal(err)
	}
	for range 2 {
		st, err := c.CopyOnce(context.Background())
		if err != nil {
			log.Fatal(err)
		}
		fmt.Printf("copied %d, skipped %d\n", st.Copied, st.Skipped)
	}
	last, _ := copier.LastCopied(context.Background(), progress, cfg.Table, "access", 0)
	fmt.Println("progress of access/0:", last)
	// Output:
	// copied 1, skipped 0
	// copied 0, skipped 0
	// progress of access/0: 0000000000000001-0000000000000000.seg
}
