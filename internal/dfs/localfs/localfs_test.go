package localfs_test

import (
	"testing"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/dfs/localfs"
)

func TestConformance(t *testing.T) {
	dfstest.Run(t, func(t *testing.T) dfs.FS {
		fsys, err := localfs.New(t.TempDir())
		if err != nil {
			t.Fatal(err)
		}
		return fsys
	})
}
