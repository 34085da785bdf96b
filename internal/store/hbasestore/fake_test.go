package hbasestore

import (
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/apache/thrift/lib/go/thrift"

	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

// fakeGateway serves THBaseService over framed binary Thrift on a loopback
// port, with a scriptable handler: enough to test the client's connection
// handling, retries and error mapping without HBase.
type fakeGateway struct {
	t  *testing.T
	ln net.Listener

	mu    sync.Mutex
	conns map[net.Conn]bool
	dials int
	calls map[string]int
	// maxFrame, when set, is the largest frame served, as the gateway's
	// hbase.regionserver.thrift.framed.max_frame_size_in_mb: a larger one
	// closes the connection.
	maxFrame int32

	// Hooks; nil means a plain success.
	tableExists  func(n int) (bool, error)
	createTable  func(n int) error
	putMultiple  func(n int, table []byte, puts []*hbase.TPut) error
	get          func(ctx context.Context, n int, table []byte, g *hbase.TGet) (*hbase.TResult_, error)
	checkAndPut  func(n int) (bool, error)
	deletes      func(n int, dels []*hbase.TDelete)
	openScanner  func(n int, scan *hbase.TScan) (int32, error)
	scannerRows  func(n int, id, numRows int32) ([]*hbase.TResult_, error)
	closeScanner func(n int, id int32) error
}

func newFakeGateway(t *testing.T) *fakeGateway {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &fakeGateway{t: t, ln: ln, conns: map[net.Conn]bool{}, calls: map[string]int{}}
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			g.mu.Lock()
			g.conns[c] = true
			g.dials++
			g.mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				g.serve(c)
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		g.dropConnections()
		wg.Wait()
	})
	return g
}

func (g *fakeGateway) serve(c net.Conn) {
	defer func() {
		g.mu.Lock()
		delete(g.conns, c)
		g.mu.Unlock()
		c.Close()
	}()
	g.mu.Lock()
	cfg := &thrift.TConfiguration{MaxFrameSize: g.maxFrame}
	g.mu.Unlock()
	trans := thrift.NewTFramedTransportConf(thrift.NewTSocketFromConnConf(c, cfg), cfg)
	proto := thrift.NewTBinaryProtocolConf(trans, cfg)
	proc := hbase.NewTHBaseServiceProcessor(g)
	for {
		if ok, err := proc.Process(context.Background(), proto, proto); !ok || err != nil {
			return
		}
	}
}

// dropConnections closes every open connection, as a gateway restart would.
func (g *fakeGateway) dropConnections() {
	g.mu.Lock()
	defer g.mu.Unlock()
	for c := range g.conns {
		c.Close()
	}
}

func (g *fakeGateway) addr() string { return g.ln.Addr().String() }

func (g *fakeGateway) count(method string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.calls[method]
}

func (g *fakeGateway) dialCount() int {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.dials
}

func (g *fakeGateway) next(method string) int {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.calls[method]++
	return g.calls[method]
}

// open returns a store on the fake with short waits.
func (g *fakeGateway) open(t *testing.T) *Store {
	t.Helper()
	s, err := Open("hbase://" + g.addr())
	if err != nil {
		t.Fatal(err)
	}
	s.initWait, s.backoffMin, s.backoffMax = 5*time.Second, time.Millisecond, 10*time.Millisecond
	t.Cleanup(func() { s.Close() })
	return s
}

func (g *fakeGateway) Get(ctx context.Context, table []byte, tget *hbase.TGet) (*hbase.TResult_, error) {
	n := g.next("get")
	if g.get != nil {
		return g.get(ctx, n, table, tget)
	}
	return &hbase.TResult_{}, nil
}

func (g *fakeGateway) PutMultiple(_ context.Context, table []byte, tputs []*hbase.TPut) error {
	n := g.next("putMultiple")
	if g.putMultiple != nil {
		return g.putMultiple(n, table, tputs)
	}
	return nil
}

func (g *fakeGateway) CheckAndPut(_ context.Context, _, _, _, _, _ []byte, _ *hbase.TPut) (bool, error) {
	n := g.next("checkAndPut")
	if g.checkAndPut != nil {
		return g.checkAndPut(n)
	}
	return true, nil
}

func (g *fakeGateway) DeleteMultiple(_ context.Context, _ []byte, dels []*hbase.TDelete) ([]*hbase.TDelete, error) {
	n := g.next("deleteMultiple")
	if g.deletes != nil {
		g.deletes(n, dels)
	}
	return nil, nil
}

func (g *fakeGateway) OpenScanner(_ context.Context, _ []byte, tscan *hbase.TScan) (int32, error) {
	n := g.next("openScanner")
	if g.openScanner != nil {
		return g.openScanner(n, tscan)
	}
	return int32(n), nil
}

func (g *fakeGateway) GetScannerRows(_ context.Context, id, numRows int32) ([]*hbase.TResult_, error) {
	n := g.next("getScannerRows")
	if g.scannerRows != nil {
		return g.scannerRows(n, id, numRows)
	}
	return nil, nil
}

func (g *fakeGateway) CloseScanner(_ context.Context, id int32) error {
	n := g.next("closeScanner")
	if g.closeScanner != nil {
		return g.closeScanner(n, id)
	}
	return nil
}

func (g *fakeGateway) TableExists(context.Context, *hbase.TTableName) (bool, error) {
	n := g.next("tableExists")
	if g.tableExists != nil {
		return g.tableExists(n)
	}
	return true, nil
}

func (g *fakeGateway) CreateTable(context.Context, *hbase.TTableDescriptor) error {
	n := g.next("createTable")
	if g.createTable != nil {
		return g.createTable(n)
	}
	return nil
}

func (g *fakeGateway) DisableTable(context.Context, *hbase.TTableName) error {
	g.next("disableTable")
	return nil
}

func (g *fakeGateway) DeleteTable(context.Context, *hbase.TTableName) error {
	g.next("deleteTable")
	return nil
}

func ioError(msg string) error { return &hbase.TIOError{Message: &msg} }
