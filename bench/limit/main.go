// Command limit is the hand-written limit of make bench: one goroutine
// reads the bench's JSON lines file, finds "ts", "key" and "value" in
// each line by a hand scan (no JSON decoder), and counts and sums value
// per key per minute in a map. It writes the cells as CSV
// (key,window_start_ms,count,sum) and one JSON line of figures on stdout.
// It is what one core can do on these lines without a pipeline: the
// bound Freeway's end-to-end rate is compared with.
//
//	limit -in lines.json -out cells.csv
package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"os"
	"runtime"
	"time"
)

// window is one minute of one key.
type window struct {
	start, count, sum int64
}

func main() {
	in := flag.String("in", "", "lines file (JSON lines with ts in Unix ms, key and value)")
	out := flag.String("out", "", "where the cells go (CSV)")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("limit: ")
	if *in == "" || *out == "" {
		log.Fatal("usage: limit -in LINES -out CELLS.csv")
	}
	runtime.GOMAXPROCS(1)
	start := time.Now()
	keys, n, err := scan(*in)
	if err != nil {
		log.Fatal(err)
	}
	elapsed := time.Since(start)
	if err := write(*out, keys); err != nil {
		log.Fatal(err)
	}
	// The harness reads this line: an unwritten result is a failed run.
	if err := json.NewEncoder(os.Stdout).Encode(map[string]any{"records": n, "seconds": elapsed.Seconds(), "keys": len(keys)}); err != nil {
		log.Fatal(err)
	}
}

var (
	tsField    = []byte(`"ts":`)
	keyField   = []byte(`"key":"`)
	valueField = []byte(`"value":`)
)

func scan(path string) (map[string][]window, int64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, 0, err
	}
	defer func() { _ = f.Close() }() // read only
	keys := make(map[string][]window, 1<<14)
	var n int64
	r := bufio.NewReaderSize(f, 4<<20)
	for {
		line, err := r.ReadSlice('\n')
		if len(line) > 0 {
			ts, ok1 := number(line, tsField)
			v, ok2 := number(line, valueField)
			k, ok3 := str(line, keyField)
			if !ok1 || !ok2 || !ok3 {
				return nil, n, fmt.Errorf("line %d: no ts, key or value: %q", n+1, line)
			}
			w := ts - ts%60000
			ws := keys[string(k)] // no allocation for the lookup
			i := len(ws) - 1
			for i >= 0 && ws[i].start != w {
				i--
			}
			if i < 0 {
				ws = append(ws, window{start: w})
				i = len(ws) - 1
				keys[string(k)] = ws
			}
			ws[i].count++
			ws[i].sum += v
			n++
		}
		if err == io.EOF {
			return keys, n, nil
		}
		if err != nil {
			if errors.Is(err, bufio.ErrBufferFull) {
				return nil, n, fmt.Errorf("line %d is over 4MiB", n+1)
			}
			return nil, n, err
		}
	}
}

// number is the integer after field in line.
func number(line, field []byte) (int64, bool) {
	i := bytes.Index(line, field)
	if i < 0 {
		return 0, false
	}
	var v int64
	j := i + len(field)
	start := j
	for ; j < len(line) && line[j] >= '0' && line[j] <= '9'; j++ {
		v = v*10 + int64(line[j]-'0')
	}
	return v, j > start
}

// str is the string after field (up to the closing quote; the bench's
// keys hold no escapes).
func str(line, field []byte) ([]byte, bool) {
	i := bytes.Index(line, field)
	if i < 0 {
		return nil, false
	}
	rest := line[i+len(field):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil, false
	}
	return rest[:j], true
}

func write(path string, keys map[string][]window) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	w := bufio.NewWriter(f)
	for k, ws := range keys {
		for _, x := range ws {
			_, _ = fmt.Fprintf(w, "%s,%d,%d,%d\n", k, x.start, x.count, x.sum) // a bufio.Writer keeps its first error for Flush
		}
	}
	if err := w.Flush(); err != nil {
		_ = f.Close() // the write error is the one reported
		return err
	}
	return f.Close()
}
