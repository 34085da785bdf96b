package hbasestore

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math"
	"net"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/internal/store"
	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

func TestParseURL(t *testing.T) {
	ok := []struct {
		url                     string
		addr, ns, prefix        string
		pool                    int
		socketTimeout, connTime time.Duration
	}{
		{"hbase://127.0.0.1:9090", "127.0.0.1:9090", "", DefaultPrefix, defaultPoolSize, defaultSocketTimeout, defaultConnectTimeout},
		{"hbase://127.0.0.1", "127.0.0.1:9090", "", DefaultPrefix, defaultPoolSize, defaultSocketTimeout, defaultConnectTimeout},
		{"hbase://h:1/", "h:1", "", DefaultPrefix, defaultPoolSize, defaultSocketTimeout, defaultConnectTimeout},
		{"hbase://h:1/test_x-1.", "h:1", "", "test_x-1.", defaultPoolSize, defaultSocketTimeout, defaultConnectTimeout},
		{"hbase://h:1/prod:fw_", "h:1", "prod", "fw_", defaultPoolSize, defaultSocketTimeout, defaultConnectTimeout},
		{"hbase://h:1/prod:", "h:1", "prod", "", defaultPoolSize, defaultSocketTimeout, defaultConnectTimeout},
		{"hbase://[::1]:9091/p_?pool=9&timeout=2s&connect_timeout=250ms", "[::1]:9091", "", "p_", 9, 2 * time.Second, 250 * time.Millisecond},
	}
	for _, tc := range ok {
		c, err := parseURL(tc.url)
		if err != nil {
			t.Errorf("%s: %v", tc.url, err)
			continue
		}
		if c.addr != tc.addr || c.namespace != tc.ns || c.prefix != tc.prefix || c.poolSize != tc.pool ||
			c.socketTimeout != tc.socketTimeout || c.connectTimeout != tc.connTime {
			t.Errorf("%s: got %+v", tc.url, c)
		}
	}
	bad := []string{
		"http://h:9090",
		"hbase://",
		"hbase://:9090",
		"hbase://h:0",
		"hbase://h:x",
		"hbase://h:9090/bad/prefix",
		"hbase://h:9090/-x",
		"hbase://h:9090/.x",
		"hbase://h:9090/na-me:x",
		"hbase://h:9090/:x",
		"hbase://h:9090?pool=0",
		"hbase://h:9090?timeout=-1s",
		"hbase://h:9090?timeout=soon",
		"hbase://h:9090?colour=blue",
		"hbase://user@h:9090",
	}
	for _, u := range bad {
		if c, err := parseURL(u); err == nil {
			t.Errorf("%s: accepted as %+v", u, c)
		}
		if _, err := Open(u); err == nil || !strings.Contains(err.Error(), "open store") {
			t.Errorf("Open(%s) = %v", u, err)
		}
	}
}

func TestStringAndNames(t *testing.T) {
	s, err := Open("hbase://127.0.0.1:9090/prod:fw_")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if got := s.String(); got != "hbase://127.0.0.1:9090/prod:fw_" {
		t.Errorf("String() = %s", got)
	}
	if got := s.dataName("ckpt"); got != "prod:fw_ckpt" {
		t.Errorf("dataName = %s", got)
	}
	if tn := s.adminName("ckpt"); string(tn.Ns) != "prod" || string(tn.Qualifier) != "fw_ckpt" {
		t.Errorf("adminName = %s:%s", tn.Ns, tn.Qualifier)
	}
	d, _ := Open("hbase://127.0.0.1")
	defer d.Close()
	if got, tn := d.dataName("t"), d.adminName("t"); got != "freeway_t" || string(tn.Ns) != "default" {
		t.Errorf("default names: %s, %s:%s", got, tn.Ns, tn.Qualifier)
	}
}

// TestInvalidArgumentsBeforeRPC: arguments are checked before any network
// call; the store points at a port where nothing listens, so a call that
// got as far as dialing would fail with a connect error instead.
func TestInvalidArgumentsBeforeRPC(t *testing.T) {
	s, err := Open("hbase://127.0.0.1:1?connect_timeout=100ms")
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	ctx := context.Background()
	c := store.Cell{Row: "r", Column: "c", Timestamp: 1, Value: []byte("v")}
	with := func(f func(*store.Cell)) []store.Cell { x := c; f(&x); return []store.Cell{x} }
	checks := map[string]error{
		"empty table":           s.Put(ctx, "", []store.Cell{c}),
		"table with a slash":    s.Put(ctx, "a/b", []store.Cell{c}),
		"table with a colon":    s.Put(ctx, "ns:t", []store.Cell{c}),
		"empty row":             s.Put(ctx, "t", with(func(c *store.Cell) { c.Row = "" })),
		"empty column":          s.Put(ctx, "t", with(func(c *store.Cell) { c.Column = "" })),
		"negative timestamp":    s.Put(ctx, "t", with(func(c *store.Cell) { c.Timestamp = -1 })),
		"LATEST_TIMESTAMP":      s.Put(ctx, "t", with(func(c *store.Cell) { c.Timestamp = math.MaxInt64 })),
		"row over 32767 bytes":  s.Put(ctx, "t", with(func(c *store.Cell) { c.Row = strings.Repeat("r", 1<<15) })),
		"scan of a bad table":   s.Scan(ctx, "", "", "", 1, nil),
		"delete of a bad table": s.DeleteNewer(ctx, "", "", "", 1),
		"retention bad table":   s.DeleteUpTo(ctx, "a b", "", "", 1),
	}
	_, checks["get empty row"] = s.Get(ctx, "t", "", store.Latest)
	_, checks["check and put another row"] = s.CheckAndPut(ctx, "t", "other", "c", nil, []store.Cell{c})
	_, checks["check and put empty column"] = s.CheckAndPut(ctx, "t", "r", "", nil, []store.Cell{c})
	_, checks["check and put empty row"] = s.CheckAndPut(ctx, "t", "", "c", nil, nil)
	for what, err := range checks {
		if !errors.Is(err, store.ErrInvalid) {
			t.Errorf("%s: %v, want ErrInvalid", what, err)
		}
	}
	// Nothing to do needs no gateway either.
	if err := s.Put(ctx, "t", nil); err != nil {
		t.Errorf("empty put: %v", err)
	}
	if cells, err := s.Get(ctx, "t", "r", -1); err != nil || cells != nil {
		t.Errorf("get as of -1: %v %v", cells, err)
	}
	if err := s.DeleteNewer(ctx, "t", "", "", math.MaxInt64); err != nil {
		t.Errorf("delete newer than MaxInt64: %v", err)
	}
	if err := s.DeleteUpTo(ctx, "t", "", "", -1); err != nil {
		t.Errorf("delete up to -1: %v", err)
	}
	if err := s.Scan(ctx, "t", "b", "a", store.Latest, nil); err != nil {
		t.Errorf("empty range: %v", err)
	}
	// And a real call reports the connection problem with context.
	err = s.Put(ctx, "t", []store.Cell{c})
	if err == nil || !strings.HasPrefix(err.Error(), "hbase check table freeway_t: connect 127.0.0.1:1") {
		t.Errorf("put to a dead gateway: %v", err)
	}
}

func TestReadRange(t *testing.T) {
	for _, tc := range []struct{ asOf, max int64 }{
		{0, 1},
		{41, 42},
		{math.MaxInt64 - 1, math.MaxInt64},
		{store.Latest, math.MaxInt64},
	} {
		r := readRange(tc.asOf)
		if r.MinStamp != 0 || r.MaxStamp != tc.max {
			t.Errorf("readRange(%d) = [%d, %d), want [0, %d)", tc.asOf, r.MinStamp, r.MaxStamp, tc.max)
		}
	}
}

func TestGroupPuts(t *testing.T) {
	fam := []byte(Family)
	puts := groupPuts(fam, []store.Cell{
		{Row: "b", Column: "x", Timestamp: 1, Value: []byte("1")},
		{Row: "a", Column: "x", Timestamp: 1, Value: []byte("2")},
		{Row: "b", Column: "y", Timestamp: 1},
		{Row: "b", Column: "x", Timestamp: 2, Value: []byte("3")},
		{Row: "b", Column: "x", Timestamp: 1, Value: []byte("4")}, // replaces the first
	})
	var got []string
	for _, p := range puts {
		var cols []string
		for _, cv := range p.ColumnValues {
			if string(cv.Family) != Family || cv.Timestamp == nil || cv.Value == nil {
				t.Fatalf("bad column value %+v", cv)
			}
			cols = append(cols, fmt.Sprintf("%s@%d=%s", cv.Qualifier, *cv.Timestamp, cv.Value))
		}
		if p.Timestamp != nil {
			t.Errorf("row %s has a put-wide timestamp", p.Row)
		}
		got = append(got, fmt.Sprintf("%s%v", p.Row, cols))
	}
	want := []string{"b[x@1=4 y@1= x@2=3]", "a[x@1=2]"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("groupPuts = %v, want %v", got, want)
	}
}

func TestBatches(t *testing.T) {
	size := func(n int) int { return n }
	got := batches([]int{4, 4, 4, 20, 1, 1}, 10, size)
	if fmt.Sprint(got) != "[[4 4] [4] [20] [1 1]]" {
		t.Fatalf("batches = %v", got)
	}
	if got := batches([]int{}, 10, size); len(got) != 0 {
		t.Fatalf("batches of nothing = %v", got)
	}
}

func TestVersionDeletes(t *testing.T) {
	fam := []byte(Family)
	cv := func(q string, ts int64) *hbase.TColumnValue {
		return &hbase.TColumnValue{Family: fam, Qualifier: []byte(q), Timestamp: thrift.Int64Ptr(ts)}
	}
	r := &hbase.TResult_{Row: []byte("r"), ColumnValues: []*hbase.TColumnValue{cv("a", 9), cv("a", 7), cv("b", 8)}}
	d, full := versionDeletes(r, fam)
	if full || d.DeleteType != hbase.TDeleteType_DELETE_COLUMN || !d.IsSetDeleteType() || d.Timestamp != nil {
		t.Fatalf("delete %+v full=%v", d, full)
	}
	var got []string
	for _, c := range d.Columns {
		got = append(got, fmt.Sprintf("%s@%d", c.Qualifier, c.GetTimestamp()))
	}
	if fmt.Sprint(got) != "[a@9 a@7 b@8]" {
		t.Fatalf("columns %v", got)
	}
	for i := range Versions - 1 {
		r.ColumnValues = append(r.ColumnValues, cv("c", int64(20+i)))
	}
	if _, full := versionDeletes(r, fam); full {
		t.Fatal("full one version early")
	}
	r.ColumnValues = append(r.ColumnValues, cv("c", 99))
	if _, full := versionDeletes(r, fam); !full {
		t.Fatal("a column with Versions versions is not reported")
	}
	if d, _ := versionDeletes(&hbase.TResult_{}, fam); d != nil {
		t.Fatalf("delete for an empty row: %+v", d)
	}
}

func TestTableCreationWaitsForMasterAndToleratesARace(t *testing.T) {
	g := newFakeGateway(t)
	g.tableExists = func(n int) (bool, error) {
		if n <= 2 {
			return false, ioError("org.apache.hadoop.hbase.PleaseHoldException: Master is initializing\n\tat org.apache...")
		}
		return false, nil
	}
	g.createTable = func(n int) error {
		if n == 1 {
			return ioError("org.apache.hadoop.hbase.ipc.ServerNotRunningYetException: Server is not running yet")
		}
		return ioError("org.apache.hadoop.hbase.TableExistsException: freeway_t")
	}
	var tables []string
	var mu sync.Mutex
	g.putMultiple = func(_ int, table []byte, _ []*hbase.TPut) error {
		mu.Lock()
		tables = append(tables, string(table))
		mu.Unlock()
		return nil
	}
	s := g.open(t)
	ctx := context.Background()
	var wg sync.WaitGroup
	for i := range 5 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := s.Put(ctx, "t", []store.Cell{{Row: fmt.Sprint(i), Column: "c", Timestamp: 1}}); err != nil {
				t.Errorf("put: %v", err)
			}
		}()
	}
	wg.Wait()
	if n := g.count("tableExists"); n != 3 {
		t.Errorf("tableExists called %d times, want 3 (two refusals, then once for all writers)", n)
	}
	if n := g.count("createTable"); n != 2 {
		t.Errorf("createTable called %d times, want 2", n)
	}
	if len(tables) != 5 || tables[0] != "freeway_t" {
		t.Errorf("puts went to %v", tables)
	}
}

func TestMasterWaitIsBounded(t *testing.T) {
	g := newFakeGateway(t)
	g.tableExists = func(int) (bool, error) {
		return false, ioError("org.apache.hadoop.hbase.PleaseHoldException: Master is initializing")
	}
	s := g.open(t)
	s.initWait = 50 * time.Millisecond
	// The put returns (no context ends it) with the master's error, after
	// asking again while the wait lasted (backoff 1-10ms in 50ms).
	err := s.Put(context.Background(), "t", []store.Cell{{Row: "r", Column: "c", Timestamp: 1}})
	if err == nil || !strings.Contains(err.Error(), "hbase check table freeway_t: org.apache.hadoop.hbase.PleaseHoldException: Master is initializing") {
		t.Fatalf("err = %v", err)
	}
	if n := g.count("tableExists"); n < 2 {
		t.Errorf("tableExists called %d times, want it asked again while the master initialized", n)
	}
}

func TestErrorsCarryContext(t *testing.T) {
	g := newFakeGateway(t)
	g.putMultiple = func(int, []byte, []*hbase.TPut) error {
		return ioError("org.apache.hadoop.hbase.DoNotRetryIOException: boom\n\tat org.apache.hadoop.hbase.Foo(Foo.java:1)")
	}
	g.scannerRows = func(int, int32, int32) ([]*hbase.TResult_, error) {
		return nil, ioError("java.io.IOException: disk on fire")
	}
	s := g.open(t)
	ctx := context.Background()
	err := s.Put(ctx, "t", []store.Cell{{Row: "r", Column: "c", Timestamp: 1}})
	if err == nil || err.Error() != "hbase put freeway_t: org.apache.hadoop.hbase.DoNotRetryIOException: boom" {
		t.Fatalf("put error = %v", err)
	}
	var tio *hbase.TIOError
	if !errors.As(err, &tio) {
		t.Fatalf("put error does not unwrap to TIOError: %#v", err)
	}
	if n := g.count("putMultiple"); n != 1 {
		t.Errorf("a server error was retried: %d calls", n)
	}
	err = s.Scan(ctx, "t", "", "", store.Latest, func(string, []store.Cell) error { return nil })
	if err == nil || err.Error() != "hbase scan freeway_t: java.io.IOException: disk on fire" {
		t.Fatalf("scan error = %v", err)
	}
	if n := g.count("closeScanner"); n != 1 {
		t.Errorf("scanner closed %d times after an error", n)
	}
}

func TestReconnectAfterGatewayRestart(t *testing.T) {
	g := newFakeGateway(t)
	s := g.open(t)
	ctx := context.Background()
	if _, err := s.Get(ctx, "t", "r", store.Latest); err != nil {
		t.Fatal(err)
	}
	g.dropConnections()
	time.Sleep(20 * time.Millisecond) // let the FIN arrive
	if _, err := s.Get(ctx, "t", "r", store.Latest); err != nil {
		t.Fatalf("get after the gateway dropped the connection: %v", err)
	}
	if n := g.dialCount(); n != 2 {
		t.Errorf("%d connections, want 2", n)
	}
}

// TestRetriesOnlyIdempotentCalls: the connection dies while the gateway
// handles the call. A put (explicit timestamps) is sent again; a
// CheckAndPut is not, since it may have been applied.
func TestRetriesOnlyIdempotentCalls(t *testing.T) {
	g := newFakeGateway(t)
	g.putMultiple = func(n int, _ []byte, _ []*hbase.TPut) error {
		if n == 1 {
			g.dropConnections()
		}
		return nil
	}
	g.checkAndPut = func(int) (bool, error) {
		g.dropConnections()
		return true, nil
	}
	s := g.open(t)
	ctx := context.Background()
	cells := []store.Cell{{Row: "r", Column: "c", Timestamp: 1}}
	if err := s.Put(ctx, "t", cells); err != nil {
		t.Fatalf("put: %v", err)
	}
	if n := g.count("putMultiple"); n != 2 {
		t.Errorf("putMultiple called %d times, want 2", n)
	}
	ok, err := s.CheckAndPut(ctx, "t", "r", "c", nil, cells)
	if err == nil || ok {
		t.Fatalf("check and put on a dying connection: %v %v", ok, err)
	}
	if !strings.HasPrefix(err.Error(), "hbase check and put freeway_t: ") {
		t.Errorf("error without context: %v", err)
	}
	if n := g.count("checkAndPut"); n != 1 {
		t.Errorf("checkAndPut called %d times, want 1", n)
	}
}

func TestCancelAbortsCall(t *testing.T) {
	g := newFakeGateway(t)
	// The gateway answers the first get only when the test ends: the call
	// returning at all, with the context's error, is the check (no time
	// bound).
	release := make(chan struct{})
	defer close(release)
	g.get = func(_ context.Context, n int, _ []byte, _ *hbase.TGet) (*hbase.TResult_, error) {
		if n == 1 {
			<-release
		}
		return &hbase.TResult_{}, nil
	}
	s := g.open(t)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	_, err := s.Get(ctx, "t", "r", store.Latest)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err = %v", err)
	}
	if _, err := s.Get(context.Background(), "t", "r", store.Latest); err != nil {
		t.Fatalf("get after a cancelled one: %v", err)
	}
}

// TestScanResumesAfterLostScanner: the gateway forgets the scanner (it
// expired while fn was slow); the scan goes on from the row after the last
// one delivered, with no row lost or repeated.
func TestScanResumesAfterLostScanner(t *testing.T) {
	const total = 2*scanBatch + 10
	var rows []string
	for i := range total {
		rows = append(rows, fmt.Sprintf("r%04d", i))
	}
	g := newFakeGateway(t)
	var mu sync.Mutex
	pos := map[int32]int{}
	var starts []string
	g.openScanner = func(n int, scan *hbase.TScan) (int32, error) {
		mu.Lock()
		defer mu.Unlock()
		i := 0
		for i < len(rows) && rows[i] < string(scan.StartRow) {
			i++
		}
		pos[int32(n)] = i
		starts = append(starts, string(scan.StartRow))
		if scan.GetCaching() != scanBatch || scan.GetMaxVersions() != 1 || scan.TimeRange.MaxStamp != 8 {
			t.Errorf("scan %+v", scan)
		}
		return int32(n), nil
	}
	g.scannerRows = func(n int, id, numRows int32) ([]*hbase.TResult_, error) {
		if n == 2 {
			return nil, &hbase.TIllegalArgument{Message: thrift.StringPtr("Invalid scanner Id")}
		}
		mu.Lock()
		defer mu.Unlock()
		var out []*hbase.TResult_
		for i := pos[id]; i < len(rows) && len(out) < int(numRows); i++ {
			out = append(out, &hbase.TResult_{Row: []byte(rows[i]), ColumnValues: []*hbase.TColumnValue{
				{Family: []byte(Family), Qualifier: []byte("c"), Value: []byte(rows[i]), Timestamp: thrift.Int64Ptr(7)},
			}})
		}
		pos[id] += len(out)
		return out, nil
	}
	s := g.open(t)
	var seen []string
	err := s.Scan(context.Background(), "t", "r", "", 7, func(row string, cells []store.Cell) error {
		if len(cells) != 1 || string(cells[0].Value) != row || cells[0].Timestamp != 7 || cells[0].Row != row {
			t.Fatalf("row %s: %+v", row, cells)
		}
		seen = append(seen, row)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if fmt.Sprint(seen) != fmt.Sprint(rows) {
		t.Fatalf("saw %d rows, want %d", len(seen), len(rows))
	}
	if len(starts) != 2 || starts[0] != "r" || starts[1] != rows[scanBatch-1]+"\x00" {
		t.Fatalf("scanners opened at %q", starts)
	}
	if n := g.count("closeScanner"); n != 2 {
		t.Errorf("closeScanner called %d times, want 2", n)
	}
}

// hostileGateway answers every request on every connection with
// reply(seqID), then holds the connection until the client drops it.
func hostileGateway(t *testing.T, reply func(seqID int32) []byte) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	t.Cleanup(func() { ln.Close(); wg.Wait() })
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer c.Close()
				cfg := &thrift.TConfiguration{}
				in := thrift.NewTBinaryProtocolConf(thrift.NewTFramedTransportConf(thrift.NewTSocketFromConnConf(c, cfg), cfg), cfg)
				_, _, seq, err := in.ReadMessageBegin(context.Background())
				if err != nil {
					return
				}
				_, _ = c.Write(reply(seq)) // the client reading it is the check
				c.SetReadDeadline(time.Now().Add(5 * time.Second))
				_, _ = io.Copy(io.Discard, c)
			}()
		}
	}()
	return ln.Addr().String()
}

// getReply is a framed reply to get whose result body writes.
func getReply(seq int32, body func(p thrift.TProtocol)) []byte {
	ctx := context.Background()
	buf := thrift.NewTMemoryBuffer()
	p := thrift.NewTBinaryProtocolConf(buf, nil)
	// Into a memory buffer: these do not fail.
	_ = p.WriteMessageBegin(ctx, "get", thrift.REPLY, seq)
	_ = p.WriteStructBegin(ctx, "get_result")
	_ = p.WriteFieldBegin(ctx, "success", thrift.STRUCT, 0)
	body(p)
	_ = p.Flush(ctx)
	out := binary.BigEndian.AppendUint32(nil, uint32(buf.Len()))
	return append(out, buf.Bytes()...)
}

// TestHostileRepliesAreRefusedBeforeAllocation: a reply claiming a 2 GB
// frame, a billion list elements, more elements than its frame can hold or
// a 1 GB string is refused without the client allocating anything near
// that.
func TestHostileRepliesAreRefusedBeforeAllocation(t *testing.T) {
	ctx := context.Background()
	replies := map[string]func(seq int32) []byte{
		"2 GB frame": func(int32) []byte { return []byte{0x7f, 0xff, 0xff, 0xff, 0, 0, 0, 0} },
		"huge list": func(seq int32) []byte {
			return getReply(seq, func(p thrift.TProtocol) {
				_ = p.WriteStructBegin(ctx, "TResult")
				_ = p.WriteFieldBegin(ctx, "columnValues", thrift.LIST, 2)
				_ = p.WriteListBegin(ctx, thrift.STRUCT, 1_000_000_000)
			})
		},
		"huge string": func(seq int32) []byte {
			return getReply(seq, func(p thrift.TProtocol) {
				_ = p.WriteStructBegin(ctx, "TResult")
				_ = p.WriteFieldBegin(ctx, "row", thrift.STRING, 1)
				_ = p.WriteI32(ctx, 1<<30)
			})
		},
		"list beyond the frame": func(seq int32) []byte {
			return getReply(seq, func(p thrift.TProtocol) {
				_ = p.WriteStructBegin(ctx, "TResult")
				_ = p.WriteFieldBegin(ctx, "columnValues", thrift.LIST, 2)
				_ = p.WriteListBegin(ctx, thrift.STRUCT, 500_000) // under the count limit, over the frame
			})
		},
	}
	for name, reply := range replies {
		t.Run(name, func(t *testing.T) {
			s, err := Open("hbase://" + hostileGateway(t, reply) + "?timeout=2s")
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			s.tableState("t").ready.Store(true) // straight to the get
			var before, after runtime.MemStats
			runtime.GC()
			runtime.ReadMemStats(&before)
			_, err = s.Get(ctx, "t", "r", store.Latest)
			runtime.ReadMemStats(&after)
			if err == nil {
				t.Fatal("hostile reply accepted")
			}
			if !strings.HasPrefix(err.Error(), "hbase get freeway_t: ") {
				t.Errorf("error without context: %v", err)
			}
			if grew := after.TotalAlloc - before.TotalAlloc; grew > 32<<20 {
				t.Fatalf("allocated %d MiB on a hostile reply (%v)", grew>>20, err)
			}
		})
	}
}

// TestDeleteShapes checks what deletes put on the wire: exact versions
// for DeleteNewer, one row delete at ts for DeleteUpTo, never a delete
// without a timestamp, and the time ranges at the int64 edges.
func TestDeleteShapes(t *testing.T) {
	g := newFakeGateway(t)
	var mu sync.Mutex
	var scans []string
	var dels []string
	g.openScanner = func(n int, scan *hbase.TScan) (int32, error) {
		mu.Lock()
		defer mu.Unlock()
		scans = append(scans, fmt.Sprintf("[%s,%s) t[%d,%d) v%d", scan.StartRow, scan.StopRow, scan.TimeRange.MinStamp, scan.TimeRange.MaxStamp, scan.GetMaxVersions()))
		return int32(n), nil
	}
	g.scannerRows = func(int, int32, int32) ([]*hbase.TResult_, error) {
		cv := func(q string, ts int64) *hbase.TColumnValue {
			return &hbase.TColumnValue{Family: []byte(Family), Qualifier: []byte(q), Value: []byte{}, Timestamp: thrift.Int64Ptr(ts)}
		}
		// One row: fewer than a batch, so each scan ends there.
		return []*hbase.TResult_{{Row: []byte("p/1"), ColumnValues: []*hbase.TColumnValue{cv("a", 9), cv("a", 7), cv("b", 8)}}}, nil
	}
	g.deletes = func(_ int, ds []*hbase.TDelete) {
		mu.Lock()
		defer mu.Unlock()
		for _, d := range ds {
			var cols []string
			for _, c := range d.Columns {
				if c.Timestamp == nil {
					t.Errorf("delete of %s:%s without a timestamp", d.Row, c.Qualifier)
				}
				cols = append(cols, fmt.Sprintf("%s@%d", c.Qualifier, c.GetTimestamp()))
			}
			if len(cols) == 0 && d.Timestamp == nil {
				t.Errorf("row delete of %s without a timestamp", d.Row)
			}
			dels = append(dels, fmt.Sprintf("%s type%d ts%d %v", d.Row, d.DeleteType, d.GetTimestamp(), cols))
		}
	}
	s := g.open(t)
	ctx := context.Background()
	if err := s.DeleteNewer(ctx, "t", "p/", "p0", 5); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteNewer(ctx, "t", "", "", -3); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUpTo(ctx, "t", "p/", "", store.Latest); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteUpTo(ctx, "t", "p/", "", 0); err != nil {
		t.Fatal(err)
	}
	wantScans := []string{
		"[p/,p0) t[6,9223372036854775807) v2147483647",
		"[,) t[0,9223372036854775807) v2147483647",
		"[p/,) t[0,9223372036854775807) v1",
		"[p/,) t[0,1) v1",
	}
	wantDels := []string{
		"p/1 type0 ts0 [a@9 a@7 b@8]",
		"p/1 type0 ts0 [a@9 a@7 b@8]",
		"p/1 type1 ts9223372036854775806 []",
		"p/1 type1 ts0 []",
	}
	if fmt.Sprint(scans) != fmt.Sprint(wantScans) {
		t.Errorf("scans:\n%s\nwant\n%s", strings.Join(scans, "\n"), strings.Join(wantScans, "\n"))
	}
	if fmt.Sprint(dels) != fmt.Sprint(wantDels) {
		t.Errorf("deletes:\n%s\nwant\n%s", strings.Join(dels, "\n"), strings.Join(wantDels, "\n"))
	}
}

// TestCheckAndPutOverFrameIsNamed: a CheckAndPut carries the expected
// value beside the put, so a frame over the gateway's limit may hold a
// put under maxRequest; the error the dropped connection gives names the
// size of the whole request and the gateway's setting.
func TestCheckAndPutOverFrameIsNamed(t *testing.T) {
	g := newFakeGateway(t)
	g.mu.Lock()
	g.maxFrame = 2 << 20 // the gateway's default
	g.mu.Unlock()
	s := g.open(t)
	expected := make([]byte, 1200<<10)
	value := make([]byte, 900<<10)
	_, err := s.CheckAndPut(context.Background(), "t", "r", "c", expected, []store.Cell{{Row: "r", Column: "c", Timestamp: 1, Value: value}})
	if err == nil {
		t.Fatal("a frame over the limit was served")
	}
	if !strings.Contains(err.Error(), "max_frame_size_in_mb") || !strings.Contains(err.Error(), fmt.Sprint(putSizeOf(t, value)+len(expected))) {
		t.Fatalf("error = %v", err)
	}
	if g.count("checkAndPut") != 0 {
		t.Fatal("the call was served")
	}
}

// putSizeOf is putSize of a put of value in row "r", column "c".
func putSizeOf(t *testing.T, value []byte) int {
	t.Helper()
	return putSize(groupPuts([]byte(Family), []store.Cell{{Row: "r", Column: "c", Timestamp: 1, Value: value}})[0])
}
