package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// TestCrashRestartIsExact kills the whole process (SIGKILL: no final
// checkpoint, an open segment, an agent queue holding acknowledged but
// unshipped entries) and checks that after a restart every acknowledged
// entry is counted exactly once. The agent's queue segments are 4 KiB,
// so that it rolls, and reuses acknowledged segments' files, many times
// before the kill.
func TestCrashRestartIsExact(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs the binary")
	}
	bin := freewayBinary(t)
	dir := t.TempDir()
	ports := freePorts(t, 4)
	cfgFile := filepath.Join(dir, "freeway.yaml")
	cfg := fmt.Sprintf(`
data_dir: %s
agent: {listen: "127.0.0.1:%d", segment_bytes: 4KiB}
calligraphus: {listen: "127.0.0.1:%d", segment_max_age: 100ms}
serving: {listen: "127.0.0.1:%d", thrift_listen: "127.0.0.1:%d"}
puma: {checkpoint_interval: 300ms}
apps:
  - name: clicks
    category: clicks
    format: json
    time: {field: ts, layout: unix}
    group_by: [page]
    aggregates:
      - {name: n, fn: count}
      - {name: total, fn: sum, field: v}
`, filepath.Join(dir, "data"), ports[0], ports[1], ports[2], ports[3])
	if err := os.WriteFile(cfgFile, []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("127.0.0.1:%d", ports[2])

	var sentN, sentSum float64
	sendClicks := func(from, to int) {
		c, err := scribeapi.Dial(agent, thriftsrv.Limits{}, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for i := from; i < to; i += 50 {
			var es []*scribethrift.LogEntry
			for j := i; j < min(i+50, to); j++ {
				es = append(es, &scribethrift.LogEntry{Category: "clicks", Message: fmt.Appendf(nil, `{"ts": %d, "page": "p%d", "v": %d}`, 1_700_000_000+j%50, j%7, j%10)})
			}
			for {
				rc, err := c.Log(context.Background(), es)
				if err != nil {
					t.Fatal(err)
				}
				if rc == scribethrift.ResultCode_OK {
					break
				}
				time.Sleep(10 * time.Millisecond)
			}
			for j := i; j < min(i+50, to); j++ {
				sentN++
				sentSum += float64(j % 10)
			}
		}
	}

	p := startBinary(t, bin, cfgFile, api)
	sendClicks(0, 3000)
	waitTotals(t, api, sentN, sentSum)
	waitCheckpoint(t, api)
	// Acknowledged by the agent, then the process dies at once: some of
	// these are in the agent's queue, some in an open segment, none
	// checkpointed.
	sendClicks(3000, 4500)
	if err := p.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.Wait() // "signal: killed", as intended

	p = startBinary(t, bin, cfgFile, api)
	defer func() {
		_ = p.Process.Signal(syscall.SIGTERM) // stopping it; the test is above
		_ = p.Wait()
	}()
	sendClicks(4500, 5000)
	waitTotals(t, api, sentN, sentSum)
}

func freePorts(t *testing.T, n int) []int {
	var ls []net.Listener
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	for _, l := range ls {
		l.Close()
	}
	return ports
}

func startBinary(t *testing.T, bin, cfgFile, api string) *exec.Cmd {
	t.Helper()
	cmd := exec.Command(bin, "all", "--config", cfgFile, "--log.level", "warn")
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		resp, err := http.Get("http://" + api + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				return cmd
			}
		}
		time.Sleep(50 * time.Millisecond)
	}
	_ = cmd.Process.Kill() // failing anyway
	t.Fatal("freeway did not become ready")
	return nil
}

func waitTotals(t *testing.T, api string, n, sum float64) {
	t.Helper()
	url := "http://" + api + "/api/v1/query?app=clicks&from=1699999000&to=1700001000&group_by=&window=all"
	deadline := time.Now().Add(90 * time.Second)
	var last string
	for time.Now().Before(deadline) {
		resp, err := http.Get(url)
		if err == nil {
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var a struct {
				Rows []struct {
					Values map[string]float64 `json:"values"`
				} `json:"rows"`
			}
			if json.Unmarshal(body, &a) == nil && len(a.Rows) == 1 {
				if a.Rows[0].Values["n"] == n && a.Rows[0].Values["total"] == sum {
					return
				}
				if a.Rows[0].Values["n"] > n {
					t.Fatalf("counted more than sent: %v, sent n=%v", a.Rows[0].Values, n)
				}
			}
			last = string(body)
		}
		time.Sleep(100 * time.Millisecond)
	}
	resp, err := http.Get("http://" + api + "/metrics")
	if err == nil {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		for _, l := range strings.Split(string(body), "\n") {
			if strings.HasPrefix(l, "freeway_") {
				t.Log(l)
			}
		}
	}
	t.Fatalf("totals never reached n=%v sum=%v; last answer %s", n, sum, last)
}

// waitCheckpoint waits until every shard has committed what it has read.
func waitCheckpoint(t *testing.T, api string) {
	t.Helper()
	deadline := time.Now().Add(60 * time.Second)
	for time.Now().Before(deadline) {
		if metric(t, api, "freeway_puma_shards_uncommitted") == 0 {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatal("no checkpoint")
}

func metric(t *testing.T, api, name string) float64 {
	resp, err := http.Get("http://" + api + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			v, _ := strconv.ParseFloat(rest, 64)
			return v
		}
	}
	return 0
}
