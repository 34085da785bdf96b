package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/freeway"
	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/testkit"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
)

// inProcess runs `freeway all` on the file cfgFile in the test's process,
// as the command does (the runner, its reloads), until the test ends.
type inProcess struct {
	log  *testkit.LogBuffer
	done chan error
}

func runInProcess(t *testing.T, cfgFile string, opts ...func(*runner)) *inProcess {
	t.Helper()
	load := func() (freeway.Config, error) { return loadConfig(cfgFile, func(*freeway.Config) {}) }
	cfg, err := load()
	if err != nil {
		t.Fatal(err)
	}
	ip := &inProcess{log: &testkit.LogBuffer{}, done: make(chan error, 1)}
	r := &runner{target: freeway.All, load: load, log: slog.New(slog.NewTextHandler(ip.log, nil))}
	for _, o := range opts {
		o(r)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { ip.done <- r.run(ctx, cfg) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-ip.done:
			if err != nil {
				t.Errorf("run: %v", err)
			}
		case <-time.After(testkit.Deadline):
			t.Error("the process does not stop")
		}
	})
	return ip
}

// alive fails t if the process has ended.
func (ip *inProcess) alive(t *testing.T) {
	t.Helper()
	select {
	case err := <-ip.done:
		ip.done <- err // for the cleanup
		t.Fatalf("the process ended: %v\n%s", err, ip.log)
	default:
	}
}

// waitMetrics waits until api's /metrics has every line of want.
func (ip *inProcess) waitMetrics(t *testing.T, api string, want ...string) {
	t.Helper()
	testkit.Eventually(t, "the reload metrics", func() error {
		ip.alive(t)
		code, body, err := get(api + "/metrics")
		if err != nil {
			return err
		}
		if code != http.StatusOK {
			return fmt.Errorf("/metrics: %d", code)
		}
		for _, w := range want {
			if !strings.Contains(body, "\n"+w+"\n") {
				return fmt.Errorf("no %q in /metrics", w)
			}
		}
		return nil
	})
}

func reinitialize(t *testing.T, agent string) {
	t.Helper()
	c, err := scribeapi.Dial(agent, thriftsrv.Limits{}, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := c.Reinitialize(context.Background()); err != nil {
		t.Fatal(err)
	}
}

// get answers GET url's status and body, or an error.
func get(url string) (int, string, error) {
	resp, err := http.Get(url)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// TestReloadResultsInMetrics: fb303 reinitialize is oneway and SIGHUP has
// no answer: a file they reload that does not validate was refused in
// the log alone, and nothing an operator polls said the process ran on
// the previous configuration. /metrics counts each reload asked for by
// result and says whether the last one took, across the restarts
// reloads make.
func TestReloadResultsInMetrics(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 4)
	cfgFile := filepath.Join(dir, "freeway.yaml")
	data := filepath.Join(dir, "data")
	writeConfig(t, cfgFile, data, ports, "")
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	ip := runInProcess(t, cfgFile)

	waitMetrics := func(want ...string) { t.Helper(); ip.waitMetrics(t, api, want...) }
	waitMetrics(`freeway_config_reloads_total{result="error"} 0`, `freeway_config_reloads_total{result="ok"} 0`,
		"freeway_config_last_reload_successful 1")

	// A broken file, by fb303 reinitialize: the process runs on, and says so.
	writeConfig(t, cfgFile, data, ports, "\n  colour: red")
	reinitialize(t, agent)
	waitMetrics(`freeway_config_reloads_total{result="error"} 1`, "freeway_config_last_reload_successful 0")
	if len(ip.log.Lines("configuration not reloaded", `unknown key \"colour\"`)) != 1 {
		t.Fatalf("want the refusal logged once:\n%s", ip.log)
	}

	// The file fixed: the components restart with it (a registry of
	// their own) and the counts carry over.
	writeConfig(t, cfgFile, data, ports, "\n  max_queue_bytes: 512MiB")
	reinitialize(t, agent)
	waitMetrics(`freeway_config_reloads_total{result="error"} 1`, `freeway_config_reloads_total{result="ok"} 1`,
		"freeway_config_last_reload_successful 1")
	logWeb(t, agent)
}

// TestReloadThatCannotStartRunsThePrevious: a reloaded file that
// validates but whose components cannot start (serving.listen moved to
// an address in use) is to leave the process on the previous
// configuration; the modules built before serving kept the agent's
// queue and the ports, the previous configuration could not start
// again, and the process ended.
func TestReloadThatCannotStartRunsThePrevious(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	dir := t.TempDir()
	ports := freePorts(t, 4)
	cfgFile := filepath.Join(dir, "freeway.yaml")
	data := filepath.Join(dir, "data")
	writeConfig(t, cfgFile, data, ports, "")
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	ip := runInProcess(t, cfgFile)
	ready := func() error {
		ip.alive(t)
		code, body, err := get(api + "/readyz")
		if err == nil && code != http.StatusOK {
			err = fmt.Errorf("/readyz: %d %s", code, body)
		}
		return err
	}
	testkit.Eventually(t, "readiness", ready)

	writeConfig(t, cfgFile, data, []int{ports[0], ports[1], held.Addr().(*net.TCPAddr).Port, ports[3]}, "")
	reinitialize(t, agent)
	ip.waitMetrics(t, api, `freeway_config_reloads_total{result="error"} 1`, "freeway_config_last_reload_successful 0")
	testkit.Eventually(t, "readiness on the previous configuration", ready)
	logWeb(t, agent)
	ip.alive(t)
}

// TestReloadTriesAnAddressInUseAgain: the components of a reload bind
// the addresses the previous ones just gave up, and a process binding a
// port of its own choosing can be given one of them meanwhile (CI saw
// TestReloadResultsInMetrics's writer port taken for a moment). A
// reload that finds an address in use tries again before it falls back
// to the previous configuration: here serving.listen moves to a port
// held until the first retry.
func TestReloadTriesAnAddressInUseAgain(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	var once sync.Once
	var tries atomic.Int32
	retried := make(chan struct{})
	dir := t.TempDir()
	ports := freePorts(t, 4)
	cfgFile := filepath.Join(dir, "freeway.yaml")
	data := filepath.Join(dir, "data")
	writeConfig(t, cfgFile, data, ports, "")
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	ip := runInProcess(t, cfgFile, func(r *runner) {
		r.inUseHook = func() {
			tries.Add(1)
			once.Do(func() {
				held.Close() // given back before the next try
				close(retried)
			})
		}
	})
	logWeb(t, agent)

	moved := []int{ports[0], ports[1], held.Addr().(*net.TCPAddr).Port, ports[3]}
	writeConfig(t, cfgFile, data, moved, "")
	reinitialize(t, agent)
	select {
	case <-retried:
	case <-time.After(testkit.Deadline):
		t.Fatalf("the reload did not try again:\n%s", ip.log)
	}
	ip.waitMetrics(t, fmt.Sprintf("http://127.0.0.1:%d", moved[2]), `freeway_config_reloads_total{result="error"} 0`,
		`freeway_config_reloads_total{result="ok"} 1`, "freeway_config_last_reload_successful 1")
	if n := tries.Load(); n != 1 {
		t.Errorf("the reload tried again %d times, want once", n)
	}
	logWeb(t, agent)
}

// TestReloadKeepsAQueueWithUnshippedEntries: a reload that moves the
// agent's queue (data_dir here) while it holds entries acknowledged to
// apps and not yet shipped (its upstream down) left them in the old
// directory for good. It is refused, counted and logged, by POST
// /admin/reload (422) and fb303 reinitialize alike, and the agent runs
// on with its queue.
func TestReloadKeepsAQueueWithUnshippedEntries(t *testing.T) {
	dir := t.TempDir()
	ports := freePorts(t, 4)
	dead := freePorts(t, 1)[0] // nothing listens: the queue keeps what it takes
	cfgFile := filepath.Join(dir, "freeway.yaml")
	data := filepath.Join(dir, "data")
	upstream := fmt.Sprintf("\n  upstream: [\"127.0.0.1:%d\"]", dead)
	writeConfig(t, cfgFile, data, ports, upstream)
	agent := fmt.Sprintf("127.0.0.1:%d", ports[0])
	api := fmt.Sprintf("http://127.0.0.1:%d", ports[2])
	ip := runInProcess(t, cfgFile)
	logWeb(t, agent)

	writeConfig(t, cfgFile, filepath.Join(dir, "elsewhere"), ports, upstream)
	resp, err := http.Post(api+"/admin/reload", "application/json", nil)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnprocessableEntity || !strings.Contains(string(body), "not yet shipped") {
		t.Fatalf("POST /admin/reload: %d %s, want 422 naming the unshipped entries", resp.StatusCode, body)
	}
	reinitialize(t, agent)
	ip.waitMetrics(t, api, `freeway_config_reloads_total{result="error"} 2`, "freeway_config_last_reload_successful 0")
	if len(ip.log.Lines("configuration not reloaded", "not yet shipped")) != 1 {
		t.Fatalf("want the refused reinitialize logged once:\n%s", ip.log)
	}
	// Still the first queue: its entry is there, and more are taken.
	code, body2, err := get(api + "/api/v1/status")
	if err != nil || code != http.StatusOK || !strings.Contains(body2, `"queue_entries":1`) {
		t.Fatalf("status: %d %v %s", code, err, body2)
	}
	logWeb(t, agent)
	ip.alive(t)
}
