// Package demo is the built-in load of `freeway all --demo`: real Apache
// access-log lines (embedded), replayed in a loop with their timestamps
// moved to the present, sent through a stock Scribe Log call to the agent.
// Each line goes to category "access" as it is, and as a JSON object to
// category "access_json", so the example config shows both formats.
package demo

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/tls"
	_ "embed"
	"encoding/json"
	"fmt"
	"log/slog"
	"regexp"
	"strconv"
	"time"

	"github.com/freeway-dev/freeway/internal/scribeapi"
	"github.com/freeway-dev/freeway/internal/thriftsrv"
	scribethrift "github.com/freeway-dev/freeway/thrift/gen/scribe"
)

// The categories the demo load sends to: each line as it is, and as JSON.
const (
	RawCategory  = "access"
	JSONCategory = "access_json"
)

//go:embed access.log.gz
var accessLogGz []byte

// Lines returns the embedded access-log lines.
func Lines() ([][]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(accessLogGz))
	if err != nil {
		return nil, fmt.Errorf("read embedded access log: %w", err)
	}
	var lines [][]byte
	sc := bufio.NewScanner(zr)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		lines = append(lines, append([]byte(nil), sc.Bytes()...))
	}
	return lines, sc.Err()
}

var lineRE = regexp.MustCompile(`^(\S+) \S+ \S+ \[([^\]]+)\] "(\S+) (\S+)[^"]*" (\d{3}) (\d+|-)(?: "([^"]*)" "([^"]*)")?`)

// TimeLayout is the access log's time layout.
const TimeLayout = "02/Jan/2006:15:04:05 -0700"

// Rewrite returns line with its timestamp replaced by t, and the same
// record as JSON; ok is false for a line that does not parse.
func Rewrite(line []byte, t time.Time) (raw, js []byte, ok bool) {
	m := lineRE.FindSubmatchIndex(line)
	if m == nil {
		return nil, nil, false
	}
	ts := t.UTC().Format(TimeLayout)
	raw = make([]byte, 0, len(line)+8)
	raw = append(raw, line[:m[4]]...)
	raw = append(raw, ts...)
	raw = append(raw, line[m[5]:]...)
	group := func(i int) string {
		if m[2*i] < 0 {
			return ""
		}
		return string(line[m[2*i]:m[2*i+1]])
	}
	status, _ := strconv.Atoi(group(5))
	rec := map[string]any{
		"ts": float64(t.UnixMilli()) / 1000, "ip": group(1), "method": group(3), "path": group(4),
		"status": status, "referrer": group(7), "agent": group(8),
	}
	if b, err := strconv.Atoi(group(6)); err == nil {
		rec["bytes"] = b
	}
	js, _ = json.Marshal(rec)
	return raw, js, true
}

// Run sends about rate lines a second to the Scribe server at addr (over
// TLS with tc, when not nil) until ctx ends, reconnecting as needed.
func Run(ctx context.Context, addr string, tc *tls.Config, rate int, log *slog.Logger) error {
	log = log.With("component", "demo")
	lines, err := Lines()
	if err != nil {
		return err
	}
	const tick = 100 * time.Millisecond
	perTick := max(rate*int(tick/time.Millisecond)/1000, 1)
	t := time.NewTicker(tick)
	defer t.Stop()
	var client *scribeapi.Client
	defer func() {
		if client != nil {
			_ = client.Close() // the load stops either way
		}
	}()
	next, sent := 0, 0
	log.Info("demo load started", "to", addr, "lines_per_second", rate, "categories", RawCategory+", "+JSONCategory)
	for {
		select {
		case <-ctx.Done():
			log.Info("demo load stopped", "lines_sent", sent)
			return nil
		case <-t.C:
		}
		if client == nil {
			client, err = scribeapi.DialTLS(addr, tc, thriftsrv.Limits{}, 10*time.Second)
			if err != nil {
				log.Warn("demo cannot reach the agent; retrying", "err", err)
				client = nil
				continue
			}
		}
		now := time.Now()
		var entries []*scribethrift.LogEntry
		for i := 0; i < perTick; i++ {
			raw, js, ok := Rewrite(lines[next], now.Add(time.Duration(i)*tick/time.Duration(perTick)))
			next = (next + 1) % len(lines)
			if !ok {
				continue
			}
			entries = append(entries, &scribethrift.LogEntry{Category: RawCategory, Message: raw}, &scribethrift.LogEntry{Category: JSONCategory, Message: js})
		}
		rc, err := client.Log(ctx, entries)
		if err != nil {
			log.Warn("demo send failed; reconnecting", "err", err)
			_ = client.Close() // reconnecting; the send error is logged
			client = nil
			continue
		}
		if rc == scribethrift.ResultCode_OK {
			sent += len(entries) / 2
		}
	}
}
