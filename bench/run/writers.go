package main

import (
	"fmt"
	"path/filepath"
	"strconv"
	"time"
)

// Several writers on the real engines (issue 10: "and more with more
// writers"): `freeway all` (one agent, its writer, Puma and serving)
// and o.writers-1 more writers, each a `freeway calligraphus` process on
// the same HDFS, HBase and ZooKeeper. The agent's upstream is then the
// writers' coordinator URL: it sends each batch to the next live writer
// in turn, and a writer forwards the entries of buckets another holds to
// that one (README, Scaling out). The buckets are spread among the
// writers through ZooKeeper.

// writerSet is the extra writers of a run with several.
type writerSet []*fwProc

// upstreamFor is the agent's upstream in a run on be with o.writers
// writers: the writer of its own process alone (""), or, with several,
// the coordinator URL they register under.
func upstreamFor(o options, be backends) string {
	if o.writers <= 1 {
		return ""
	}
	return strconv.Quote(be.coord) // a YAML string: the URL has colons
}

// startExtraWriters starts o.writers-1 `freeway calligraphus` processes
// on be beside fw (data directories under dir), and waits until each is
// ready and fw's agent sees every writer live.
func startExtraWriters(o options, dir string, be backends, apps string, fw *fwProc) (writerSet, error) {
	var ws writerSet
	for i := 1; i < o.writers; i++ {
		w, err := startFreeway(o.freeway, filepath.Join(dir, fmt.Sprintf("writer-%d", i+1)), fwConfig{target: "calligraphus", apps: apps, be: be}, nil)
		if err != nil {
			ws.kill()
			return nil, err
		}
		ws = append(ws, w)
		if err := w.waitReady(2*time.Minute, 50*time.Millisecond); err != nil {
			ws.kill()
			return nil, fmt.Errorf("writer %d: %w", i+1, err)
		}
	}
	if o.writers > 1 {
		if _, err := fw.waitMetric("freeway_agent_upstream_writers", float64(o.writers), time.Minute, 50*time.Millisecond, nil); err != nil {
			ws.kill()
			return nil, fmt.Errorf("the agent to see %d live writers: %w", o.writers, err)
		}
	}
	return ws, nil
}

// cpu is the CPU the extra writers have used.
func (ws writerSet) cpu() time.Duration {
	var sum time.Duration
	for _, w := range ws {
		if c, err := w.cpu(); err == nil {
			sum += c
		}
	}
	return sum
}

func (ws writerSet) kill() {
	for _, w := range ws {
		w.kill()
	}
}

// stop stops the extra writers; the first error is returned.
func (ws writerSet) stop(limit time.Duration) error {
	var first error
	for _, w := range ws {
		if err := w.stop(limit); err != nil && first == nil {
			first = err
		}
	}
	return first
}

// sum is a counter summed over fw and the extra writers.
func (ws writerSet) sum(fw *fwProc, name string) float64 {
	var total float64
	for _, p := range append([]*fwProc{fw}, ws...) {
		if m, err := p.metrics(); err == nil {
			total += m[name]
		}
	}
	return total
}
