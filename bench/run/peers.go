package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/freeway-dev/freeway/internal/loadgen"
)

// peer is a system run on the very same lines file.
type peer struct {
	name    string
	version string
	// command returns the command that reads lines and writes cells to out.
	command func(lines, out string) *exec.Cmd
	// parse reads the figures the command printed: records and the
	// seconds of its processing (start-up left out where it says so).
	parse func(stdout string, wall time.Duration) (records int64, seconds float64, err error)
	note  string
}

// peerRun is one run of a peer.
type peerRun struct {
	Records    int64   `json:"records"`
	Seconds    float64 `json:"seconds"`
	PerSec     float64 `json:"entries_per_second"`
	WallSec    float64 `json:"process_seconds"`
	CPUSec     float64 `json:"cpu_seconds"`
	PerCPUSec  float64 `json:"entries_per_cpu_second"`
	PeakRSSMiB float64 `json:"peak_rss_mib"`
	Exact      bool    `json:"exact"`
	Totals     string  `json:"totals"`
	Err        string  `json:"error,omitempty"`
}

func (p *peer) run(ctx context.Context, lines, work string, want map[loadgen.Cell]loadgen.Agg) peerRun {
	out := filepath.Join(work, "cells-"+strings.ToLower(strings.Fields(p.name)[0])+".csv")
	_ = os.Remove(out) // what an earlier run left, if any
	cmd := p.command(lines, out)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	start := time.Now()
	stdout, err := cmd.Output()
	wall := time.Since(start)
	var r peerRun
	r.WallSec = wall.Seconds()
	if cmd.ProcessState != nil {
		r.CPUSec = (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			r.PeakRSSMiB = float64(ru.Maxrss) / 1024
		}
	}
	if err != nil {
		r.Err = fmt.Sprintf("%v: %s", err, lastLines(stderr.String(), 5))
		return r
	}
	r.Records, r.Seconds, err = p.parse(string(stdout), wall)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	if r.Seconds > 0 {
		r.PerSec = float64(r.Records) / r.Seconds
	}
	if r.CPUSec > 0 {
		r.PerCPUSec = float64(r.Records) / r.CPUSec
	}
	got, err := loadgen.ReadCells(out)
	if err != nil {
		r.Err = err.Error()
		return r
	}
	r.Exact, r.Totals = loadgen.Compare(want, got)
	_ = os.Remove(out) // best effort: a work file, read
	return r
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// jsonFigures reads {"records": N, "seconds": S, ...}.
func jsonFigures(stdout string, _ time.Duration) (int64, float64, error) {
	var f struct {
		Records int64   `json:"records"`
		Seconds float64 `json:"seconds"`
	}
	if err := json.Unmarshal([]byte(lastLines(stdout, 1)), &f); err != nil {
		return 0, 0, fmt.Errorf("figures %q: %w", stdout, err)
	}
	return f.Records, f.Seconds, nil
}

func limitPeer(binary string) *peer {
	return &peer{
		name:    "hand-written limit",
		version: "bench/limit, 1 goroutine",
		command: func(lines, out string) *exec.Cmd { return exec.Command(binary, "-in", lines, "-out", out) },
		parse:   jsonFigures,
		note:    "one goroutine (GOMAXPROCS=1): a hand scan for ts, key and value in each line, and a map of key to its minutes; seconds from opening the file to the last line",
	}
}

func duckdbPeer(python, script string, threads int) *peer {
	version := "?"
	if out, err := exec.Command(python, "-c", "import duckdb; print(duckdb.__version__)").Output(); err == nil {
		version = strings.TrimSpace(string(out))
	}
	return &peer{
		name:    "DuckDB",
		version: version + ", " + strconv.Itoa(threads) + " threads",
		command: func(lines, out string) *exec.Cmd {
			return exec.Command(python, script, lines, out, strconv.Itoa(threads))
		},
		parse: jsonFigures,
		note:  "`read_json` (newline-delimited, columns ts, key, value) + GROUP BY key, minute as one batch query; seconds of the query, reading the file included",
	}
}

// flinkJVMFlags open the JDK modules Flink 1.20 needs on Java 17.
var flinkJVMFlags = []string{
	"--add-opens=java.base/java.lang=ALL-UNNAMED", "--add-opens=java.base/java.util=ALL-UNNAMED",
	"--add-opens=java.base/java.lang.reflect=ALL-UNNAMED", "--add-opens=java.base/java.io=ALL-UNNAMED",
	"--add-opens=java.base/java.nio=ALL-UNNAMED", "--add-opens=java.base/sun.nio.ch=ALL-UNNAMED",
	"--add-opens=java.base/java.net=ALL-UNNAMED", "--add-opens=java.base/java.text=ALL-UNNAMED",
	"--add-opens=java.base/java.time=ALL-UNNAMED", "--add-opens=java.base/java.util.concurrent=ALL-UNNAMED",
	"--add-opens=java.base/java.util.concurrent.atomic=ALL-UNNAMED",
	"-Dlog4j2.level=WARN", "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn",
}

func flinkPeer(dir string, parallelism int, version string) (*peer, error) {
	cp, err := os.ReadFile(filepath.Join(dir, "target", "classpath.txt"))
	if err != nil {
		return nil, fmt.Errorf("flink job not built (mvn -q -f %s/pom.xml package): %w", dir, err)
	}
	jar := filepath.Join(dir, "target", "flink-window-1.jar")
	if _, err := os.Stat(jar); err != nil {
		return nil, fmt.Errorf("flink job not built: %w", err)
	}
	classpath := jar + string(os.PathListSeparator) + strings.TrimSpace(string(cp))
	return &peer{
		name:    "Flink",
		version: version + ", local mini-cluster, parallelism " + strconv.Itoa(parallelism),
		command: func(lines, out string) *exec.Cmd {
			args := append(append([]string{}, flinkJVMFlags...), "-cp", classpath, "dev.freeway.bench.WindowJob", lines, out, strconv.Itoa(parallelism))
			return exec.Command("java", args...)
		},
		parse: func(stdout string, _ time.Duration) (int64, float64, error) {
			f := map[string]int64{}
			for _, kv := range strings.Fields(lastLines(stdout, 1)) {
				k, v, _ := strings.Cut(kv, "=")
				n, err := strconv.ParseInt(v, 10, 64)
				if err != nil {
					return 0, 0, fmt.Errorf("flink figures %q", stdout)
				}
				f[k] = n
			}
			if f["first_record_ms"] == 0 || f["end_ms"] == 0 {
				return 0, 0, fmt.Errorf("flink figures %q", stdout)
			}
			return f["records"], float64(f["end_ms"]-f["first_record_ms"]) / 1000, nil
		},
		note: "streaming job: FileSource of text lines, Jackson readTree, keyBy key, 1-minute tumbling event-time windows (1 s out of orderness), count + sum, results collected to the client; seconds from the first line parsed to the last result (the mini-cluster's start-up, a few seconds, left out; CPU-seconds are the whole JVM's)",
	}, nil
}

// flinkVersion reads the Flink version the pom pins.
func flinkVersion(dir string) string {
	b, err := os.ReadFile(filepath.Join(dir, "pom.xml"))
	if err != nil {
		return "?"
	}
	s := string(b)
	if i := strings.Index(s, "<flink.version>"); i >= 0 {
		rest := s[i+len("<flink.version>"):]
		if j := strings.Index(rest, "<"); j >= 0 {
			return rest[:j]
		}
	}
	return "?"
}
