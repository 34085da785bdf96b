package hdfs

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"io"
	"io/fs"
	mathrand "math/rand"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/enginetest"

	"github.com/freeway-dev/freeway/internal/dfs"
	"github.com/freeway-dev/freeway/internal/dfs/dfstest"
)

const (
	// crashURLEnv and crashNameEnv make the test binary a writer that
	// dies holding a file open; see TestCrashedWriter.
	crashURLEnv  = "FREEWAY_HDFS_CRASH_URL"
	crashNameEnv = "FREEWAY_HDFS_CRASH_NAME"
	crashExit    = 3

	// testBlockSize makes files of a few MiB span several blocks, so the
	// suite crosses block boundaries on write and read. It is the lowest
	// block size a NameNode allows by default
	// (dfs.namenode.fs-limits.min-block-size).
	testBlockSize = 1 << 20
)

func TestMain(m *testing.M) {
	if url := os.Getenv(crashURLEnv); url != "" {
		os.Exit(crashingWriter(url, os.Getenv(crashNameEnv)))
	}
	os.Exit(m.Run())
}

// engineAddr returns the NameNode to test against, or skips the test.
func engineAddr(t *testing.T) string {
	t.Helper()
	return enginetest.Addr(t, enginetest.HDFS)
}

// openTestFS opens a fresh root /freeway-test/<random> and removes it when
// the test ends. params are added to the URL's query.
func openTestFS(t *testing.T, addr string, params ...string) (*FS, string) {
	t.Helper()
	var b [8]byte
	rand.Read(b[:])
	root := fmt.Sprintf("/freeway-test/%x", b)
	if len(params) == 0 {
		params = []string{"io_timeout=30s"}
	}
	url := fmt.Sprintf("hdfs://%s%s?block_size=%d&%s", addr, root, testBlockSize, strings.Join(params, "&"))
	fsys, err := Open(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := fsys.client().RemoveAll(root); err != nil {
			t.Errorf("remove test root %s: %v", root, err)
		}
		fsys.client().Remove("/freeway-test") // only if no other run uses it
		fsys.Close()
	})
	return fsys, url
}

func TestConformance(t *testing.T) {
	addr := engineAddr(t)
	dfstest.Run(t, func(t *testing.T) dfs.FS {
		fsys, _ := openTestFS(t, addr)
		return fsys
	})
}

// crashData is what the crashing writer writes: one and a half blocks, so
// that one block is complete and one under construction when it dies.
func crashData() []byte {
	data := make([]byte, testBlockSize+testBlockSize/2)
	mathrand.New(mathrand.NewSource(7)).Read(data)
	return data
}

// crashingWriter runs in a child process: it creates name, writes and
// syncs crashData and exits without closing the file or the connection,
// as a writer killed mid-segment would.
func crashingWriter(url, name string) int {
	fsys, err := Open(url)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	f, err := fsys.Create(name)
	if err != nil {
		fmt.Println(err)
		return 1
	}
	data := crashData()
	if _, err := f.Write(data); err != nil {
		fmt.Println(err)
		return 1
	}
	if err := f.Sync(); err != nil {
		fmt.Println(err)
		return 1
	}
	fmt.Printf("wrote %d bytes\n", len(data))
	return crashExit
}

// TestCrashedWriter checks the rule Freeway's writers follow after a crash:
// the dead writer's file, still under construction and leased to a client
// that is gone, can be removed at once by another client, its name cannot
// be reused, and a new segment beside it can be written and published.
func TestCrashedWriter(t *testing.T) {
	addr := engineAddr(t)
	fsys, url := openTestFS(t, addr)
	crashed := dfs.TempName("cat/0/0000000000000001")

	cmd := exec.Command(os.Args[0], "-test.run=^$")
	cmd.Env = append(os.Environ(), crashURLEnv+"="+url, crashNameEnv+"="+crashed)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() != crashExit {
		t.Fatalf("crashing writer: %v\n%s", err, out)
	}
	data := crashData()
	if !strings.Contains(string(out), fmt.Sprintf("wrote %d bytes", len(data))) {
		t.Fatalf("crashing writer said %q", out)
	}

	st, err := fsys.Stat(crashed)
	if err != nil {
		t.Fatalf("stat crashed file: %v", err)
	}
	t.Logf("crashed file: NameNode reports %d of %d bytes written", st.Size(), len(data))
	if r, err := fsys.Open(crashed); err != nil {
		t.Logf("open crashed file: %v", err)
	} else {
		got, err := io.ReadAll(r)
		r.Close()
		if err != nil {
			t.Logf("read crashed file: %v", err)
		}
		if !bytes.HasPrefix(data, got) {
			t.Fatalf("crashed file shows %d bytes that are not a prefix of what was written", len(got))
		}
		t.Logf("crashed file: %d of %d bytes readable", len(got), len(data))
	}

	if f, err := fsys.Create(crashed); !errors.Is(err, fs.ErrExist) {
		if err == nil {
			f.Close()
		}
		t.Fatalf("create over the crashed file: %v, want fs.ErrExist", err)
	} else {
		t.Logf("create over the crashed file: %v", err)
	}

	next := "cat/0/0000000000000002"
	if err := dfs.WriteFile(fsys, next, []byte("after the crash")); err != nil {
		t.Fatalf("write the next segment beside the crashed one: %v", err)
	}
	if got, err := dfs.ReadFile(fsys, next); err != nil || string(got) != "after the crash" {
		t.Fatalf("read the next segment: %q, %v", got, err)
	}

	if err := fsys.Remove(crashed); err != nil {
		t.Fatalf("remove the crashed file: %v", err)
	}
	if _, err := fsys.Stat(crashed); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("crashed file still there: %v", err)
	}
	infos, err := fsys.ReadDir("cat/0")
	if err != nil {
		t.Fatal(err)
	}
	if len(infos) != 1 || infos[0].Name() != "0000000000000002" {
		t.Fatalf("cat/0 holds %d entries, want only the new segment", len(infos))
	}
}

// TestCloseReplicatingRetries writes many files at once and reports how
// often Close met ErrReplicating. Whether it happens at all depends on
// the NameNode's timing, so the count is logged, not asserted; the retry
// itself is tested with a fake in file_test.go.
func TestCloseReplicatingRetries(t *testing.T) {
	addr := engineAddr(t)
	fsys, _ := openTestFS(t, addr)
	const files = 40
	data := bytes.Repeat([]byte("x"), testBlockSize+1000) // two blocks each
	var wg sync.WaitGroup
	errs := make(chan error, files)
	for i := range files {
		wg.Add(1)
		go func() {
			defer wg.Done()
			f, err := fsys.Create(fmt.Sprintf("r/%02d", i))
			if err != nil {
				errs <- err
				return
			}
			if _, err := f.Write(data); err != nil {
				f.Close()
				errs <- err
				return
			}
			errs <- f.Close()
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	for i := range files {
		st, err := fsys.Stat(fmt.Sprintf("r/%02d", i))
		if err != nil || st.Size() != int64(len(data)) {
			t.Fatalf("file %d after close: %v, %v", i, st, err)
		}
	}
	t.Logf("ErrReplicating retries: %d over %d closes", fsys.replicatingRetries.Load(), files)
}

func TestRenameOntoDirectory(t *testing.T) {
	fsys, _ := openTestFS(t, engineAddr(t))
	if err := dfs.WriteFile(fsys, "f", []byte("x")); err != nil {
		t.Fatal(err)
	}
	if err := fsys.MkdirAll("d"); err != nil {
		t.Fatal(err)
	}
	if err := fsys.Rename("f", "d"); !errors.Is(err, fs.ErrExist) {
		t.Fatalf("rename a file over a directory: %v, want fs.ErrExist", err)
	}
	if err := fsys.Rename("f", "missing/parent/f"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("rename into a missing directory: %v, want fs.ErrNotExist", err)
	}
	if _, err := fsys.Open("d"); err == nil {
		t.Fatal("opened a directory for reading")
	}
	if f, err := fsys.Create("d"); !errors.Is(err, fs.ErrExist) {
		if err == nil {
			f.Close()
		}
		t.Fatalf("create over a directory: %v, want fs.ErrExist", err)
	}
	if f, err := fsys.Create("f/child"); err == nil {
		f.Close()
		t.Fatal("created a file under a file")
	}
}

func TestRemoveAll(t *testing.T) {
	fsys, _ := openTestFS(t, engineAddr(t))
	for _, name := range []string{"a/b/1", "a/b/2", "a/3", "keep"} {
		if err := dfs.WriteFile(fsys, name, []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if err := fsys.RemoveAll("a"); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Stat("a"); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat a removed tree: %v, want fs.ErrNotExist", err)
	}
	if _, err := fsys.Stat("keep"); err != nil {
		t.Fatalf("a sibling of the removed tree: %v", err)
	}
	if err := fsys.RemoveAll("a"); err != nil {
		t.Fatalf("remove a tree that does not exist: %v", err)
	}
	if err := fsys.RemoveAll("../x"); !errors.Is(err, fs.ErrInvalid) {
		t.Fatalf("remove outside the root: %v, want fs.ErrInvalid", err)
	}
	// "" is the root itself.
	if err := fsys.RemoveAll(""); err != nil {
		t.Fatal(err)
	}
	if _, err := fsys.Stat(""); !errors.Is(err, fs.ErrNotExist) {
		t.Fatalf("stat the removed root: %v, want fs.ErrNotExist", err)
	}
}

func TestReadAtKeepsReadOffset(t *testing.T) {
	fsys, _ := openTestFS(t, engineAddr(t))
	data := make([]byte, 2*testBlockSize+100)
	mathrand.New(mathrand.NewSource(3)).Read(data)
	if err := dfs.WriteFile(fsys, "f", data); err != nil {
		t.Fatal(err)
	}
	r, err := fsys.Open("f")
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	head := make([]byte, 1000)
	if _, err := io.ReadFull(r, head); err != nil {
		t.Fatal(err)
	}
	// Parallel ReadAt calls, as io.ReaderAt allows, across block edges.
	var wg sync.WaitGroup
	for _, off := range []int64{testBlockSize - 5, 2 * testBlockSize, 17, int64(len(data)) - 50} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			buf := make([]byte, 50)
			if n, err := r.ReadAt(buf, off); err != nil || !bytes.Equal(buf[:n], data[off:off+50]) {
				t.Errorf("readat %d: %d bytes, %v", off, n, err)
			}
		}()
	}
	wg.Wait()
	if n, err := r.ReadAt(make([]byte, 10), int64(len(data))); n != 0 || err != io.EOF {
		t.Errorf("readat the end: %d, %v; want 0, io.EOF", n, err)
	}
	rest, err := io.ReadAll(r)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(rest, data[1000:]) {
		t.Fatalf("read after readat resumed at the wrong place: %d bytes", len(rest))
	}
}

// TestOpenUnreachable needs no engine: nothing listens on port 1. Open
// fails (a hang would be the package's timeout) with an error that says
// what it was opening; how long it took is logged, not bounded.
func TestOpenUnreachable(t *testing.T) {
	start := time.Now()
	_, err := Open("hdfs://127.0.0.1:1/freeway?user=test&dial_timeout=2s")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("open succeeded with no NameNode")
	}
	if !strings.HasPrefix(err.Error(), "open hdfs: ") {
		t.Errorf("error reads %q", err)
	}
	t.Logf("after %v: %v", elapsed.Round(time.Millisecond), err)
}

// TestOpenSilentNameNode needs no engine: a listener that accepts and
// never answers stands for a hung NameNode. Open fails with a timeout,
// which only io_timeout gives (the listener never closes a connection).
func TestOpenSilentNameNode(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	var mu sync.Mutex
	var conns []net.Conn
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns = append(conns, c)
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, _ = io.Copy(io.Discard, c) // a sink until the client goes
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		mu.Lock()
		for _, c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})

	start := time.Now()
	_, err = Open("hdfs://" + ln.Addr().String() + "/freeway?user=test&io_timeout=300ms")
	elapsed := time.Since(start)
	if err == nil {
		t.Fatal("open succeeded against a NameNode that never answers")
	}
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Errorf("error is not a timeout: %v", err)
	}
	t.Logf("after %v: %v", elapsed.Round(time.Millisecond), err)
}

// stallProxy forwards TCP connections to a NameNode and can hold back its
// answers, which makes a NameNode that hangs mid-call.
type stallProxy struct {
	ln      net.Listener
	stalled atomic.Bool
	wg      sync.WaitGroup
	mu      sync.Mutex
	conns   []net.Conn
}

func newStallProxy(t *testing.T, target string) *stallProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &stallProxy{ln: ln}
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			s, err := net.Dial("tcp", target)
			if err != nil {
				c.Close()
				continue
			}
			p.mu.Lock()
			p.conns = append(p.conns, c, s)
			p.mu.Unlock()
			p.wg.Add(2)
			go func() {
				defer p.wg.Done()
				_, _ = io.Copy(s, c) // a proxy: either side ending ends it
				s.Close()
			}()
			go func() {
				defer p.wg.Done()
				p.answer(c, s)
				c.Close()
			}()
		}
	}()
	t.Cleanup(func() {
		ln.Close()
		p.mu.Lock()
		for _, c := range p.conns {
			c.Close()
		}
		p.mu.Unlock()
		p.wg.Wait()
	})
	return p
}

// answer copies the NameNode's answers to the client, holding each one
// while the proxy is stalled.
func (p *stallProxy) answer(client, server net.Conn) {
	buf := make([]byte, 32<<10)
	for {
		n, err := server.Read(buf)
		for p.stalled.Load() {
			time.Sleep(10 * time.Millisecond)
		}
		if n > 0 {
			if _, werr := client.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

func (p *stallProxy) addr() string { return p.ln.Addr().String() }

// TestNameNodeTimeoutRecovers hangs the NameNode mid-call: the call must
// fail with a timeout, and once the NameNode answers again the FS must
// come back with correct answers. Without timeoutConn closing the
// connection, colinmarc/hdfs would read the late answer as the answer to
// its next call.
func TestNameNodeTimeoutRecovers(t *testing.T) {
	proxy := newStallProxy(t, engineAddr(t))
	fsys, _ := openTestFS(t, proxy.addr(), "io_timeout=500ms")
	if err := dfs.WriteFile(fsys, "one", []byte("1")); err != nil {
		t.Fatal(err)
	}
	if err := dfs.WriteFile(fsys, "three", []byte("333")); err != nil {
		t.Fatal(err)
	}

	proxy.stalled.Store(true)
	start := time.Now()
	_, err := fsys.Stat("one")
	var nerr net.Error
	if !errors.As(err, &nerr) || !nerr.Timeout() {
		t.Fatalf("stat with the NameNode hung: %v, want a timeout", err)
	}
	t.Logf("hung NameNode: error after %v: %v", time.Since(start).Round(time.Millisecond), err)
	proxy.stalled.Store(false)

	// Each connection recovers on its own: the one that timed out fails
	// its next call too, which may come after others have succeeded.
	start = time.Now()
	for ok := 0; ok < len(fsys.clients); {
		st, err := fsys.Stat("one")
		if err == nil {
			if st.Size() != 1 {
				t.Fatalf("after recovery stat one: size %d", st.Size())
			}
			ok++
			continue
		}
		ok = 0
		if time.Since(start) > time.Minute { // a bound on retrying, not an assertion on speed
			t.Fatalf("no recovery after %v: %v", time.Since(start), err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Logf("recovered %v after the NameNode answered again", time.Since(start).Round(time.Millisecond))
	for range 3 {
		for name, size := range map[string]int64{"one": 1, "three": 3} {
			st, err := fsys.Stat(name)
			if err != nil || st.Size() != size || st.Name() != name {
				t.Fatalf("after recovery stat %s: %v, %v", name, st, err)
			}
		}
	}
}

// cutConn delivers at most left bytes, then reads end as if the DataNode
// closed the connection (io.EOF), as one killed in the middle of a
// packet does.
type cutConn struct {
	net.Conn
	left *atomic.Int64
}

func (c cutConn) Read(p []byte) (int, error) {
	left := c.left.Load()
	if left <= 0 {
		_ = c.Conn.Close()
		return 0, io.EOF
	}
	n, err := c.Conn.Read(p[:min(int64(len(p)), left)])
	c.left.Add(-int64(n))
	return n, err
}

// TestDataNodeCutShortIsAnError: a DataNode connection that ends before
// the block does, with no other replica to turn to, is a failed read, not
// the end of the file. colinmarc/hdfs reports it as io.ErrUnexpectedEOF
// (Read) or io.EOF (ReadAt), which a reader takes for a file cut short:
// ptail passed a published segment over as damaged when a DataNode died
// under its read (TestChaosEngines). The cut falls in the DataNode's
// answer, in the first packet, and in a later packet of a later block.
func TestDataNodeCutShortIsAnError(t *testing.T) {
	addr := engineAddr(t)
	fsys, url := openTestFS(t, addr)
	data := make([]byte, 2*testBlockSize+100)
	mathrand.New(mathrand.NewSource(5)).Read(data)
	if err := dfs.WriteFile(fsys, "f", data); err != nil {
		t.Fatal(err)
	}
	for _, cut := range []int64{1, 1000, 70_000, testBlockSize + 300_000} {
		t.Run(fmt.Sprint(cut), func(t *testing.T) {
			var left atomic.Int64
			left.Store(cut)
			cutting, err := open(url, func(dial dialFunc) dialFunc {
				return func(ctx context.Context, network, addr string) (net.Conn, error) {
					if left.Load() <= 0 {
						return nil, errors.New("connection refused (the DataNode is gone)")
					}
					c, err := dial(ctx, network, addr)
					if err != nil {
						return nil, err
					}
					return cutConn{Conn: c, left: &left}, nil
				}
			})
			if err != nil {
				t.Fatal(err)
			}
			defer cutting.Close()
			check := func(op string, n int, err error) {
				t.Helper()
				if err == nil || errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
					t.Errorf("%s cut after %d bytes from the DataNode: %d of %d bytes, %v; want an error that is no end of file", op, cut, n, len(data), err)
				}
				if err != nil && !strings.Contains(err.Error(), "/f") {
					t.Errorf("%s: %q does not name the file", op, err)
				}
			}
			r, err := cutting.Open("f")
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			n, err := io.ReadFull(r, make([]byte, len(data)))
			check("read", n, err)

			left.Store(cut)
			r2, err := cutting.Open("f")
			if err != nil {
				t.Fatal(err)
			}
			defer r2.Close()
			n, err = r2.ReadAt(make([]byte, len(data)), 0)
			check("readat", n, err)
		})
	}
}
