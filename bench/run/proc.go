package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/freeway-dev/freeway/internal/admin"
	"github.com/freeway-dev/freeway/internal/loadgen"
)

// fwProc is a freeway process under test.
type fwProc struct {
	cmd     *exec.Cmd
	dir     string // its data directory and log
	cfgPath string
	logPath string
	agent   string // Scribe address of the agent
	writer  string // Scribe address of calligraphus
	http    string // serving (or admin) address
	exited  chan struct{}
	exitErr error // set before exited is closed
	started time.Time
}

// backends are the URLs of dfs, store and coord ("" = embedded).
type backends struct{ dfs, store, coord string }

func (b backends) String() string {
	if b.dfs == "" {
		return ""
	}
	st := b.store
	if st == "" {
		st = "embedded store"
	}
	return b.dfs + ", " + st + ", " + b.coord
}

// fwConfig is what varies between the bench's freeway runs.
type fwConfig struct {
	target     string // all (default), calligraphus or agent
	apps       string // the apps: YAML list items, indented by 2
	categories string // the categories: map, indented by 2 ("" = none)
	checkpoint time.Duration
	segmentAge time.Duration // calligraphus.segment_max_age (0: the default)
	pprof      bool
	be         backends
	// upstream replaces the agent's upstream (the writer of this
	// process): the agent-alone run names an address where nothing
	// listens, so that nothing ships.
	upstream string
	// maxInFlight is agent.max_in_flight (0: the default).
	maxInFlight int
	// batchBytes and batchEntries are agent.batch_bytes and
	// agent.batch_entries (0: the defaults).
	batchBytes   int64
	batchEntries int
	// seqWindow is agent.seq_window (0: the default).
	seqWindow int
	// maxQueueBytes is agent.max_queue_bytes (0: the default).
	maxQueueBytes int64
}

// startFreeway writes a config into dir and starts the binary on it.
func startFreeway(binary, dir string, fc fwConfig, ports []int) (*fwProc, error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if ports == nil {
		var err error
		if ports, err = freePorts(3); err != nil {
			return nil, err
		}
	}
	fw := &fwProc{dir: dir, cfgPath: filepath.Join(dir, "freeway.yaml"), logPath: filepath.Join(dir, "freeway.log"),
		agent: fmt.Sprintf("127.0.0.1:%d", ports[0]), writer: fmt.Sprintf("127.0.0.1:%d", ports[1]),
		http: fmt.Sprintf("127.0.0.1:%d", ports[2])}
	target := fc.target
	if target == "" {
		target = "all"
	}
	checkpoint := fc.checkpoint
	if checkpoint == 0 {
		checkpoint = 5 * time.Second
	}
	var b strings.Builder
	fmt.Fprintf(&b, "# written by bench/run\ndata_dir: %s\nlog: {level: warn}\n", filepath.Join(dir, "data"))
	if fc.be.dfs != "" {
		fmt.Fprintf(&b, "dfs: %s\ncoord: %s\n", fc.be.dfs, fc.be.coord)
		if fc.be.store != "" {
			fmt.Fprintf(&b, "store: %s\n", fc.be.store)
		}
	}
	upstream := fc.upstream
	if upstream == "" {
		upstream = fw.writer
	}
	fmt.Fprintf(&b, "agent:\n  listen: %s\n  upstream: [%s]\n", fw.agent, upstream)
	if fc.maxInFlight > 0 {
		fmt.Fprintf(&b, "  max_in_flight: %d\n", fc.maxInFlight)
	}
	if fc.batchBytes > 0 {
		fmt.Fprintf(&b, "  batch_bytes: %d\n", fc.batchBytes)
	}
	if fc.batchEntries > 0 {
		fmt.Fprintf(&b, "  batch_entries: %d\n", fc.batchEntries)
	}
	if fc.seqWindow > 0 {
		fmt.Fprintf(&b, "  seq_window: %d\n", fc.seqWindow)
	}
	if fc.maxQueueBytes > 0 {
		fmt.Fprintf(&b, "  max_queue_bytes: %d\n", fc.maxQueueBytes)
	}
	fmt.Fprintf(&b, "calligraphus:\n  listen: %s\n", fw.writer)
	if fc.segmentAge > 0 {
		fmt.Fprintf(&b, "  segment_max_age: %v\n", fc.segmentAge)
	}
	fmt.Fprintf(&b, "puma:\n  checkpoint_interval: %v\n  max_cells: 4000000\n", checkpoint)
	fmt.Fprintf(&b, "serving:\n  listen: %s\n  thrift_listen: \"\"\n  max_rows: 2000000\n  pprof: %v\n", fw.http, fc.pprof)
	if fc.categories != "" {
		b.WriteString("categories:\n" + fc.categories)
	}
	b.WriteString("apps:\n" + fc.apps)
	if err := os.WriteFile(fw.cfgPath, []byte(b.String()), 0o644); err != nil {
		return nil, err
	}
	args := []string{target, "--config", fw.cfgPath}
	if target != "all" {
		args = append(args, "--admin-listen", fw.http)
	}
	return fw, fw.start(binary, args)
}

func (fw *fwProc) start(binary string, args []string) error {
	logf, err := os.OpenFile(fw.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	// Each start has its own exited channel and command, closed and
	// waited for by its own goroutine: a restart (after the previous
	// process was seen to exit) shares nothing with the previous one's
	// goroutine, which may still be returning.
	exited := make(chan struct{})
	cmd := exec.Command(binary, args...)
	cmd.Stdout, cmd.Stderr = logf, logf
	// Should the harness die (a ^C, a closed pipe), freeway dies with it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	fw.exited, fw.exitErr, fw.cmd = exited, nil, cmd
	fw.started = time.Now()
	if err := cmd.Start(); err != nil {
		_ = logf.Close() // the start error is the one reported
		return fmt.Errorf("start %s: %w", binary, err)
	}
	go func() {
		err := cmd.Wait()
		_ = logf.Close() // freeway has exited; its log is complete
		fw.exitErr = err // read only once exited is closed
		close(exited)
	}()
	return nil
}

// restart starts the binary again on the same config and data.
func (fw *fwProc) restart(binary string) error {
	return fw.start(binary, fw.cmd.Args[1:])
}

func freePorts(n int) ([]int, error) {
	var ports []int
	var lns []net.Listener
	defer func() {
		for _, l := range lns {
			_ = l.Close() // only held to pick free ports
		}
	}()
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			return nil, err
		}
		lns = append(lns, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// waitReady polls /readyz until 200, every poll.
func (fw *fwProc) waitReady(limit, poll time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		select {
		case <-fw.exited:
			return fmt.Errorf("freeway exited at start: %w (log: %s)", fw.exitErr, fw.logPath)
		default:
		}
		resp, err := http.Get("http://" + fw.http + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body) // only the status matters
			_ = resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
		}
		time.Sleep(poll)
	}
	return fmt.Errorf("freeway not ready within %v (log: %s)", limit, fw.logPath)
}

// stop sends SIGTERM and waits for a clean exit.
func (fw *fwProc) stop(limit time.Duration) error {
	_ = fw.cmd.Process.Signal(syscall.SIGTERM) // fails only once it has exited, which the wait below sees
	select {
	case <-fw.exited:
		if fw.exitErr != nil {
			return fmt.Errorf("freeway did not stop cleanly: %w (log: %s)", fw.exitErr, fw.logPath)
		}
		return nil
	case <-time.After(limit):
		fw.kill()
		return fmt.Errorf("freeway did not stop within %v of SIGTERM", limit)
	}
}

func (fw *fwProc) kill() {
	if fw.cmd == nil || fw.cmd.Process == nil {
		return
	}
	select {
	case <-fw.exited:
	default:
		_ = fw.cmd.Process.Kill() // fails only once it has exited, which the wait below sees
		<-fw.exited
	}
}

// metrics reads /metrics: series (name with labels, as written) to value.
func (fw *fwProc) metrics() (map[string]float64, error) {
	return admin.Scrape(http.DefaultClient, fw.http)
}

// metric reads one series.
func (fw *fwProc) metric(name string) (float64, error) {
	m, err := fw.metrics()
	if err != nil {
		return 0, err
	}
	return m[name], nil
}

// waitMetric polls a series every poll until it reaches at least want;
// seen, when not nil, is given every scrape read meanwhile.
func (fw *fwProc) waitMetric(name string, want float64, limit, poll time.Duration, seen func(map[string]float64)) (time.Time, error) {
	deadline := time.Now().Add(limit)
	var v float64
	for {
		select {
		case <-fw.exited:
			return time.Time{}, fmt.Errorf("freeway exited: %w (log: %s)", fw.exitErr, fw.logPath)
		default:
		}
		m, err := fw.metrics()
		now := time.Now()
		if err == nil {
			v = m[name]
			if seen != nil {
				seen(m)
			}
		}
		if err == nil && v >= want {
			return now, nil
		}
		if now.After(deadline) {
			return time.Time{}, fmt.Errorf("%s reached %.0f of %.0f within %v (log: %s)", name, v, want, limit, fw.logPath)
		}
		time.Sleep(poll)
	}
}

// cpu is the process's user + system CPU time so far, from /proc.
func (fw *fwProc) cpu() (time.Duration, error) { return procCPU(fw.cmd.Process.Pid) }

func procCPU(pid int) (time.Duration, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0, err
	}
	// Fields after the command (which may hold spaces) in parentheses.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, errors.New("bad /proc stat")
	}
	f := strings.Fields(s[i+1:])
	if len(f) < 13 {
		return 0, errors.New("short /proc stat")
	}
	utime, _ := strconv.ParseInt(f[11], 10, 64)
	stime, _ := strconv.ParseInt(f[12], 10, 64)
	const ticks = 100 // USER_HZ on Linux
	return time.Duration(utime+stime) * time.Second / ticks, nil
}

// status reads a kB field of /proc/PID/status (VmRSS, VmHWM) in bytes.
func (fw *fwProc) status(field string) (float64, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", fw.cmd.Process.Pid))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			kb, err := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
			return kb * 1024, err
		}
	}
	return 0, fmt.Errorf("no %s in /proc status", field)
}

// query runs a query and decodes the answer.
func (fw *fwProc) query(ctx context.Context, params url.Values) (*answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+fw.http+"/api/v1/query?"+params.Encode(), nil)
	if err != nil {
		return nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer func() { _ = resp.Body.Close() }() // read only
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<10))
		return nil, fmt.Errorf("query %s: %s: %s", params.Encode(), resp.Status, b)
	}
	var a answer
	if err := json.NewDecoder(resp.Body).Decode(&a); err != nil {
		return nil, fmt.Errorf("query %s: %w", params.Encode(), err)
	}
	return &a, nil
}

// answer is a query's answer.
type answer struct {
	Rows []struct {
		WindowStart time.Time          `json:"window_start"`
		Key         map[string]string  `json:"key"`
		Values      map[string]float64 `json:"values"`
	} `json:"rows"`
	Truncated bool `json:"truncated"`
	Partial   bool `json:"partial"`
}

// cells reads an answer grouped by key as cells.
func (a *answer) cells(keyField, count, sum string) map[loadgen.Cell]loadgen.Agg {
	out := make(map[loadgen.Cell]loadgen.Agg, len(a.Rows))
	for _, r := range a.Rows {
		out[loadgen.Cell{Key: r.Key[keyField], WindowStart: r.WindowStart.UnixMilli()}] = loadgen.Agg{Count: int64(r.Values[count]), Sum: int64(r.Values[sum])}
	}
	return out
}

// runLoad runs `freeway load` with args and returns its summary, with
// the CPU time the generator took.
func runLoad(ctx context.Context, binary string, args ...string) (loadgen.Summary, time.Duration, error) {
	var sum loadgen.Summary
	cmd := exec.CommandContext(ctx, binary, append([]string{"load", "--json"}, args...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if jerr := json.Unmarshal(out, &sum); jerr != nil && err == nil {
		err = fmt.Errorf("freeway load answered %q: %w", out, jerr)
	}
	var cpu time.Duration
	if cmd.ProcessState != nil {
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	if err != nil {
		return sum, cpu, fmt.Errorf("freeway load %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(stderr.String()))
	}
	return sum, cpu, nil
}

// machine describes the host.
func machine() map[string]string {
	m := map[string]string{"nproc": strconv.Itoa(runtime.NumCPU()), "go": runtime.Version()}
	if out, err := exec.Command("lscpu").Output(); err == nil {
		for _, line := range strings.Split(string(out), "\n") {
			k, v, ok := strings.Cut(line, ":")
			if !ok {
				continue
			}
			switch k = strings.TrimSpace(k); k {
			case "Model name", "CPU(s)", "Thread(s) per core", "Hypervisor vendor", "CPU max MHz":
				m[k] = strings.TrimSpace(v)
			}
		}
	}
	if b, err := os.ReadFile("/proc/meminfo"); err == nil {
		for _, line := range strings.Split(string(b), "\n") {
			if rest, ok := strings.CutPrefix(line, "MemTotal:"); ok {
				kb, _ := strconv.ParseFloat(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(rest), "kB")), 64)
				m["memory"] = fmt.Sprintf("%.1f GiB", kb/(1<<20))
			}
		}
	}
	if out, err := exec.Command("java", "-version").CombinedOutput(); err == nil {
		m["java"] = strings.SplitN(strings.TrimSpace(string(out)), "\n", 2)[0]
	}
	return m
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}

func gitRev() string {
	out, err := exec.Command("git", "describe", "--always", "--dirty").Output()
	if err != nil {
		return "unknown"
	}
	return strings.TrimSpace(string(out))
}
