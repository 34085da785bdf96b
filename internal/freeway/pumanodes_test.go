package freeway

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/config"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/puma"
)

// TestSplitPumaOnRealEngines runs two Puma nodes with query listeners
// (puma.listen) and a standalone serving process on ZooKeeper and HBase:
// the nodes split the shards, serving answers exact totals by fanning out
// to them (fresh, no stale shard), and once one node stops the other
// takes its shards and the answers stay exact.
func TestSplitPumaOnRealEngines(t *testing.T) {
	zk, _, hbase := engines(t)
	suffix := randomSuffix()
	dir := t.TempDir()
	cfg := testConfig(dir)
	cfg.DFS = "file://" + filepath.Join(dir, "dfs")
	cfg.Store = fmt.Sprintf("hbase://%s/split_%s_", hbase, suffix)
	cfg.Coord = fmt.Sprintf("zk://%s/freeway-test/split-%s?session_timeout=2s", zk, suffix)
	cfg.Buckets = 6
	cfg.Puma.TakeoverGrace = config.Duration(time.Second)
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	writer := startTarget(t, cfg, Calligraphus)
	defer writer.stop(t)
	agentCfg := cfg
	agentCfg.Agent.Upstream = []string{writer.p.Calligraphus.Addr()}
	agent := startTarget(t, agentCfg, Agent)
	defer agent.stop(t)
	var pumas []*running
	for _, id := range []string{"puma-a", "puma-b"} {
		c := cfg
		c.Puma.ID, c.Puma.Listen = id, "127.0.0.1:0"
		pumas = append(pumas, startTarget(t, c, Puma))
	}
	defer pumas[1].stop(t)
	srv := startTarget(t, cfg, Serving)
	defer srv.stop(t)

	first := orders(1500, 0, base)
	send(t, agent.p.Agent.Addr(), first, 100)
	waitTotals(t, srv.p.Serving.Addr(), base, base+180, expected(first))
	testkit.Eventually(t, "both nodes running shards, every answer fresh", func() error {
		for i, pm := range pumas {
			n := 0
			for _, st := range pm.p.Puma.Statuses() {
				if st.State == puma.StateRunning {
					n++
				}
			}
			if n == 0 || n > 4 {
				return fmt.Errorf("node %d runs %d of 6 shards", i, n)
			}
		}
		if stale := staleShards(t, srv.p.Serving.Addr()); len(stale) > 0 {
			return fmt.Errorf("stale shards %v", stale)
		}
		return nil
	})

	pumas[0].stop(t)
	second := orders(700, 3, base)
	send(t, agent.p.Agent.Addr(), second, 100)
	all := slices.Concat(first, second)
	waitTotals(t, srv.p.Serving.Addr(), base, base+180, expected(all))
	testkit.Eventually(t, "the remaining node running every shard", func() error {
		n := 0
		for _, st := range pumas[1].p.Puma.Statuses() {
			if st.State == puma.StateRunning {
				n++
			}
		}
		if n != 6 {
			return fmt.Errorf("runs %d of 6 shards", n)
		}
		if stale := staleShards(t, srv.p.Serving.Addr()); len(stale) > 0 {
			return fmt.Errorf("stale shards %v", stale)
		}
		return nil
	})
	waitTotals(t, srv.p.Serving.Addr(), base, base+180, expected(all))
}

// staleShards is the stale_shards of an answer of serving at addr.
func staleShards(t *testing.T, addr string) []string {
	t.Helper()
	params := url.Values{"app": {"orders"}, "from": {fmt.Sprint(base)}, "to": {fmt.Sprint(base + 180)}}
	resp, err := http.Get("http://" + addr + "/api/v1/query?" + params.Encode())
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	var a struct {
		StaleShards []string `json:"stale_shards"`
		AsOf        struct {
			Mode string `json:"mode"`
		} `json:"as_of"`
	}
	if err := json.Unmarshal(body, &a); err != nil || resp.StatusCode != http.StatusOK || a.AsOf.Mode != "fresh" {
		t.Fatalf("answer %d %s: %v", resp.StatusCode, body, err)
	}
	return a.StaleShards
}

// TestFanoutTokenRotated: serving's fan-out presents the query tokens
// file's first token to the Puma nodes, which check the same file, read
// again when it changes. Rotated as the README says (a new token first,
// then the old one removed, without a restart), the fan-out must present
// the new one: before, it kept the token read at start, every node
// refused it, and every answer came from the store, each shard named
// stale, until serving restarted.
func TestFanoutTokenRotated(t *testing.T) {
	zk, _, hbase := engines(t)
	suffix := randomSuffix()
	dir := t.TempDir()
	tokens := filepath.Join(dir, "query-tokens")
	writeTokens := func(body string) {
		t.Helper()
		tmp := tokens + ".new"
		if err := os.WriteFile(tmp, []byte(body), 0o600); err != nil {
			t.Fatal(err)
		}
		if err := os.Rename(tmp, tokens); err != nil {
			t.Fatal(err)
		}
	}
	const oldToken, newToken = "q-old-5d1e0c7a9b3f", "q-new-8e2a4f6c1d0b"
	writeTokens(oldToken + "\n")
	cfg := testConfig(dir)
	cfg.DFS = "file://" + filepath.Join(dir, "dfs")
	cfg.Store = fmt.Sprintf("hbase://%s/rotate_%s_", hbase, suffix)
	cfg.Coord = fmt.Sprintf("zk://%s/freeway-test/rotate-%s?session_timeout=2s", zk, suffix)
	cfg.Buckets = 2
	cfg.Auth.QueryTokensFile = tokens
	if err := cfg.Validate(); err != nil {
		t.Fatal(err)
	}
	pc := cfg
	pc.Puma.ID, pc.Puma.Listen = "puma-a", "127.0.0.1:0"
	pm := startTarget(t, pc, Puma)
	defer pm.stop(t)
	srv := startTarget(t, cfg, Serving)
	defer srv.stop(t)

	hc := &http.Client{Timeout: 30 * time.Second}
	defer hc.CloseIdleConnections()
	u := srv.p.Serving.URL() + "/api/v1/query?" + url.Values{"app": {"orders"}, "from": {fmt.Sprint(base)}, "to": {fmt.Sprint(base + 180)}}.Encode()
	fresh := func(token string) func() error {
		return func() error {
			code, body := getWith(t, hc, u, token)
			if code != http.StatusOK {
				return fmt.Errorf("query: %d %s", code, body)
			}
			var a struct {
				StaleShards []string `json:"stale_shards"`
			}
			if err := json.Unmarshal(body, &a); err != nil {
				t.Fatal(err)
			}
			if len(a.StaleShards) > 0 {
				return fmt.Errorf("stale shards %v", a.StaleShards)
			}
			return nil
		}
	}
	testkit.Eventually(t, "every shard answered by the node", fresh(oldToken))

	writeTokens(newToken + "\n" + oldToken + "\n")
	writeTokens(newToken + "\n")
	if code, _ := getWith(t, hc, u, oldToken); code != http.StatusUnauthorized {
		t.Fatalf("the removed token still works on serving: %d", code)
	}
	testkit.Eventually(t, "every shard answered by the node after the rotation", fresh(newToken))
}
