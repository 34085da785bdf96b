package hdfs

import (
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/colinmarc/hdfs/v2"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// replicating is the error colinmarc/hdfs returns from Close while the
// NameNode waits for block reports.
func replicating() error {
	return &os.PathError{Op: "create", Path: "/r/f", Err: hdfs.ErrReplicating}
}

// fakeWriter stands in for *hdfs.FileWriter: its Close answers from a
// script.
type fakeWriter struct {
	closeErrs []error // answers to successive Close calls; nil after the end
	closes    int
	writes    int
}

func (w *fakeWriter) Write(p []byte) (int, error) { w.writes++; return len(p), nil }
func (w *fakeWriter) Flush() error                { return nil }
func (w *fakeWriter) Close() error {
	w.closes++
	if w.closes <= len(w.closeErrs) {
		return w.closeErrs[w.closes-1]
	}
	return nil
}

// testBackoff records its waits instead of sleeping.
func testBackoff(tries int, waits *[]time.Duration, retries *atomic.Int64) closeRetry {
	return closeRetry{
		tries: tries, first: 10 * time.Millisecond, max: 40 * time.Millisecond,
		sleep:   func(d time.Duration) { *waits = append(*waits, d) },
		retries: retries,
	}
}

func TestCloseRetriesReplicating(t *testing.T) {
	var waits []time.Duration
	var retries atomic.Int64
	fw := &fakeWriter{closeErrs: []error{replicating(), replicating(), replicating(), replicating()}}
	w := &writer{fw: fw, path: "/r/f", retry: testBackoff(10, &waits, &retries)}
	if err := w.Close(); err != nil {
		t.Fatalf("close: %v", err)
	}
	if fw.closes != 5 {
		t.Errorf("Close called %d times, want 5", fw.closes)
	}
	want := []time.Duration{10 * time.Millisecond, 20 * time.Millisecond, 40 * time.Millisecond, 40 * time.Millisecond}
	if len(waits) != len(want) {
		t.Fatalf("waits = %v, want %v", waits, want)
	}
	for i := range want {
		if waits[i] != want[i] {
			t.Fatalf("waits = %v, want %v", waits, want)
		}
	}
	if retries.Load() != 4 {
		t.Errorf("retries counted %d, want 4", retries.Load())
	}
}

func TestCloseGivesUpReplicating(t *testing.T) {
	var waits []time.Duration
	fw := &fakeWriter{}
	for range 20 {
		fw.closeErrs = append(fw.closeErrs, replicating())
	}
	w := &writer{fw: fw, path: "/r/f", retry: testBackoff(10, &waits, nil)}
	err := w.Close()
	if !errors.Is(err, hdfs.ErrReplicating) {
		t.Fatalf("close = %v, want it to wrap ErrReplicating", err)
	}
	if fw.closes != 10 || len(waits) != 9 {
		t.Errorf("Close called %d times with %d waits, want 10 and 9", fw.closes, len(waits))
	}
	if got := err.Error(); got != "close /r/f: still replicating after 10 tries: replication in progress" {
		t.Errorf("error reads %q", got)
	}
}

func TestCloseDoesNotRetryOtherErrors(t *testing.T) {
	var waits []time.Duration
	boom := errors.New("ack error from datanode")
	fw := &fakeWriter{closeErrs: []error{boom}}
	w := &writer{fw: fw, path: "/r/f", retry: testBackoff(10, &waits, nil)}
	if err := w.Close(); !errors.Is(err, boom) {
		t.Fatalf("close = %v, want %v", err, boom)
	}
	if fw.closes != 1 || len(waits) != 0 {
		t.Errorf("Close called %d times with %d waits, want 1 and 0", fw.closes, len(waits))
	}
}

func TestWriterAfterClose(t *testing.T) {
	var waits []time.Duration
	fw := &fakeWriter{}
	w := &writer{fw: fw, path: "/r/f", retry: testBackoff(3, &waits, nil)}
	if n, err := w.Write(nil); n != 0 || err != nil || fw.writes != 0 {
		t.Errorf("empty write = %d, %v and reached the client %d times", n, err, fw.writes)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	// A second complete() on the NameNode would fail with a lease error;
	// refuse it here like os.File does.
	if err := w.Close(); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("second close = %v, want fs.ErrClosed", err)
	}
	if _, err := w.Write([]byte("x")); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("write after close = %v, want fs.ErrClosed", err)
	}
	if err := w.Sync(); !errors.Is(err, fs.ErrClosed) {
		t.Errorf("sync after close = %v, want fs.ErrClosed", err)
	}
	if fw.closes != 1 {
		t.Errorf("client Close called %d times, want 1", fw.closes)
	}
}

func TestPathErrorNamesTheFile(t *testing.T) {
	err := pathError("open", "/root/a", &os.PathError{Op: "open", Path: "/root/a", Err: os.ErrNotExist})
	if !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%v does not wrap fs.ErrNotExist", err)
	}
	if got := err.Error(); got != "open /root/a: file does not exist" || strings.Count(got, "/root/a") != 1 {
		t.Errorf("error reads %q", got)
	}
}

// namenodeError is a NameNode's exception as colinmarc/hdfs returns it
// (hdfs.Error).
type namenodeError struct{ method, exception string }

var _ hdfs.Error = namenodeError{}

func (e namenodeError) Method() string    { return e.method }
func (e namenodeError) Desc() string      { return "ERROR_APPLICATION" }
func (e namenodeError) Exception() string { return e.exception }
func (e namenodeError) Message() string   { return e.exception + ": ..." }
func (e namenodeError) Error() string {
	return e.method + " call failed with ERROR_APPLICATION (" + e.exception + ")"
}

// TestCreateDuringLeaseRecoveryWrapsErrExist: a create over a crashed
// writer's file past the lease soft limit is refused with
// RecoveryInProgressException (TestCreateOverCrashedFileAfterSoftLimit
// shows it on the engine): the name exists, as it does before and after
// the recovery, and the error says so. Other exceptions are left alone.
func TestCreateDuringLeaseRecoveryWrapsErrExist(t *testing.T) {
	recovering := namenodeError{"create", "org.apache.hadoop.hdfs.protocol.RecoveryInProgressException"}
	for _, err := range []error{recovering, &os.PathError{Op: "create", Path: "/root/a", Err: recovering}} {
		got := pathError("create", "/root/a", err)
		if !errors.Is(got, fs.ErrExist) {
			t.Errorf("%v does not wrap fs.ErrExist", got)
		}
		if !strings.HasPrefix(got.Error(), "create /root/a: ") || !strings.Contains(got.Error(), "RecoveryInProgressException") {
			t.Errorf("error reads %q", got)
		}
	}
	other := namenodeError{"create", "org.apache.hadoop.ipc.StandbyException"}
	if got := pathError("create", "/root/a", other); errors.Is(got, fs.ErrExist) {
		t.Errorf("%v wraps fs.ErrExist", got)
	}
}

// TestChecksumErrorWrapsErrChecksum: colinmarc/hdfs's checksum error
// (its unexported errInvalidChecksum, returned bare by FileReader.Read
// once every replica failed it, or in a PathError) wraps dfs.ErrChecksum
// once it is a reader's error, and still names the file; other read
// errors do not.
func TestChecksumErrorWrapsErrChecksum(t *testing.T) {
	bare := errors.New("invalid checksum") // as colinmarc/hdfs makes it
	for _, err := range []error{bare, &os.PathError{Op: "read", Path: "/root/a", Err: bare}, fmt.Errorf("block 3: %w", bare)} {
		got := pathError("read", "/root/a", readError(err))
		if !errors.Is(got, dfs.ErrChecksum) || !errors.Is(got, bare) {
			t.Errorf("%v: %v does not wrap dfs.ErrChecksum and the client's error", err, got)
		}
		if !strings.HasPrefix(got.Error(), "read /root/a: ") || !strings.Contains(got.Error(), "invalid checksum") {
			t.Errorf("error reads %q", got)
		}
	}
	for _, err := range []error{io.ErrUnexpectedEOF, errors.New("dial tcp 127.0.0.1:9866: connect: connection refused"), errors.New("invalid checksum type")} {
		if got := pathError("read", "/root/a", readError(err)); errors.Is(got, dfs.ErrChecksum) {
			t.Errorf("%v wraps dfs.ErrChecksum", got)
		}
	}
}
