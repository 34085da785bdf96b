package freeway

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"log/slog"
	"os"
	"slices"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/enginetest"

	"github.com/freeway-dev/freeway/internal/backends"
	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
	"github.com/freeway-dev/freeway/internal/layout"
	"github.com/freeway-dev/freeway/internal/segment"
)

// engines returns the addresses of the real engines, or skips (fails
// under FREEWAY_REQUIRE_ENGINES=1, as in `make test`).
func engines(t *testing.T) (zk, hdfsAddr, hbase string) {
	t.Helper()
	return enginetest.Addr(t, enginetest.ZK), enginetest.Addr(t, enginetest.HDFS), enginetest.Addr(t, enginetest.HBase)
}

func randomSuffix() string {
	b := make([]byte, 4)
	rand.Read(b)
	return hex.EncodeToString(b)
}

// startTarget runs one target of the pipeline as its own "process".
func startTarget(t *testing.T, cfg Config, target string) *running {
	t.Helper()
	cfg.Resolve()
	log := slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn})).With("target", target)
	p, err := New(cfg, target, Options{Version: "test", Log: log, AdminListen: "off"})
	if err != nil {
		t.Fatalf("start %s: %v", target, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{p: p, cancel: cancel, done: make(chan error, 1)}
	go func() { r.done <- p.Run(ctx) }()
	return r
}

// TestPipelineOnRealEngines runs the pipeline split into processes, as on
// a cluster, on real ZooKeeper, HDFS and HBase: an agent, a writer, a Puma
// node and a serving node that answers from HBase. It checks exact
// totals, restarts Puma (which recovers from HBase) and checks again, and
// checks the segment files are in HDFS.
func TestPipelineOnRealEngines(t *testing.T) {
	zk, hdfsAddr, hbase := engines(t)
	suffix := randomSuffix()
	cfg := testConfig(t.TempDir())
	cfg.DFS = fmt.Sprintf("hdfs://%s/freeway-test/e2e-%s", hdfsAddr, suffix)
	cfg.Store = fmt.Sprintf("hbase://%s/e2e_%s_", hbase, suffix)
	cfg.Coord = fmt.Sprintf("zk://%s/freeway-test/e2e-%s", zk, suffix)
	cfg.Calligraphus.SegmentMaxAge = config.Duration(300 * time.Millisecond)
	cfg.Puma.CheckpointInterval = config.Duration(500 * time.Millisecond)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { removeTree(t, cfg.DFS) })

	writer := startTarget(t, cfg, Calligraphus)
	defer writer.stop(t)
	agentCfg := cfg
	agentCfg.Agent.Upstream = []string{writer.p.Calligraphus.Addr()}
	agent := startTarget(t, agentCfg, Agent)
	defer agent.stop(t)
	pm := startTarget(t, cfg, Puma)
	srv := startTarget(t, cfg, Serving) // answers from HBase: committed state
	defer srv.stop(t)

	first := orders(2000, 0, base)
	send(t, agent.p.Agent.Addr(), first, 200)
	direct := orders(300, 5, base) // a stock client straight to the writer
	send(t, writer.p.Calligraphus.Addr(), direct, 100)
	all := slices.Concat(first, direct)
	waitTotals(t, srv.p.Serving.Addr(), base, base+180, expected(all))

	// Restart Puma: the new node recovers its shards from HBase.
	pm.stop(t)
	second := orders(700, 3, base)
	send(t, agent.p.Agent.Addr(), second, 100)
	pm = startTarget(t, cfg, Puma)
	defer pm.stop(t)
	all = append(all, second...)
	waitTotals(t, srv.p.Serving.Addr(), base, base+180, expected(all))

	// The bucket files are in HDFS, published, under <category>/<bucket>/.
	fsys, err := backends.OpenDFS(cfg.DFS)
	if err != nil {
		t.Fatal(err)
	}
	defer fsys.Close()
	segments := 0
	for b := 0; b < cfg.Buckets; b++ {
		infos, err := fsys.ReadDir(layout.BucketDir("orders", b))
		if err != nil {
			t.Fatalf("list bucket %d in HDFS: %v", b, err)
		}
		for _, fi := range infos {
			if _, _, ok := layout.ParseSegmentName(fi.Name()); ok && fi.Size() > segment.HeaderSizeV2 {
				segments++
			}
		}
	}
	if segments == 0 {
		t.Fatal("no segment files in HDFS")
	}
	t.Logf("%d segments in %s", segments, cfg.DFS)
}

// removeTree deletes a test root in the dfs.
func removeTree(t *testing.T, url string) {
	fsys, err := backends.OpenDFS(url)
	if err != nil {
		t.Logf("cleanup %s: %v", url, err)
		return
	}
	defer fsys.Close()
	if err := dfstest.RemoveAll(fsys, ""); err != nil {
		t.Logf("cleanup %s: %v", url, err)
	}
}
