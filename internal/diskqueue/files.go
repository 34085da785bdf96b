package diskqueue

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/freeway-dev/freeway/internal/durable"
)

// FileOp names a change the queue makes to its files, for
// Options.FileHook (and WriteFileAtomicHook: the temporary file's create,
// write and sync, its rename and the directory's sync).
type FileOp string

// The operations Options.FileHook sees.
const (
	OpCreate   FileOp = "create"   // create a file (a segment, before its header is written)
	OpWrite    FileOp = "write"    // write to a segment or the ack file
	OpSync     FileOp = "sync"     // fsync a segment or the ack file
	OpTruncate FileOp = "truncate" // truncate a segment (rollback, torn tail)
	OpRemove   FileOp = "remove"   // remove a segment
	OpRename   FileOp = "rename"   // rename a new segment to its name
	OpSyncDir  FileOp = "syncdir"  // fsync the queue directory
)

// fileOps makes the queue's changes to its files, through the hook.
type fileOps struct {
	hook func(op FileOp, path string) error
}

func (o fileOps) check(op FileOp, path string) error {
	if o.hook == nil {
		return nil
	}
	if err := o.hook(op, path); err != nil {
		return &fs.PathError{Op: string(op), Path: path, Err: err}
	}
	return nil
}

func (o fileOps) create(path string) (*os.File, error) {
	if err := o.check(OpCreate, path); err != nil {
		return nil, err
	}
	return os.OpenFile(path, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
}

// writeAt writes all of p at off. An injected failure writes half of p
// first, as a disk that fills up in the middle of a write does.
func (o fileOps) writeAt(f *os.File, p []byte, off int64) error {
	if err := o.check(OpWrite, f.Name()); err != nil {
		_, _ = f.WriteAt(p[:len(p)/2], off) // the torn write is the point; the injected error is reported
		return err
	}
	_, err := f.WriteAt(p, off)
	return err
}

func (o fileOps) sync(f *os.File) error {
	if err := o.check(OpSync, f.Name()); err != nil {
		return err
	}
	return durable.SyncData(f)
}

func (o fileOps) truncate(f *os.File, size int64) error {
	if err := o.check(OpTruncate, f.Name()); err != nil {
		return err
	}
	return f.Truncate(size)
}

func (o fileOps) remove(path string) error {
	if err := o.check(OpRemove, path); err != nil {
		return err
	}
	return os.Remove(path)
}

func (o fileOps) rename(from, to string) error {
	if err := o.check(OpRename, to); err != nil {
		return err
	}
	return os.Rename(from, to)
}

func (o fileOps) syncDir(dir string) error {
	if err := o.check(OpSyncDir, dir); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return syncDir(dir)
}

// mkdirAll makes dir and its missing parents, each with a durable name
// (segments fsynced in dir are answered for: their directory must not be
// lost in a machine crash): durable.MkdirAll, through the hook.
func (o fileOps) mkdirAll(dir string) error {
	return durable.MkdirAll("", dir, o.syncDir)
}

// ackFile persists the acknowledged position in two alternating slots.
type ackFile struct {
	f   *os.File
	ops fileOps
	gen uint64 // generation of the last slot written successfully
	buf [ackSlot]byte
}

const ackSlot = 32

func openAckFile(path string, ops fileOps) (*ackFile, uint64, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, 0, false, fmt.Errorf("open %s: %w", path, err)
	}
	var buf [2 * ackSlot]byte
	n, err := f.ReadAt(buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		_ = f.Close()
		return nil, 0, false, fmt.Errorf("read %s: %w", path, err)
	}
	if n < len(buf) {
		// Give both slots their disk space now, so that acknowledging
		// (which frees space) never needs more on a full disk.
		if _, err := f.WriteAt(make([]byte, len(buf)-n), int64(n)); err != nil {
			_ = f.Close()
			return nil, 0, false, fmt.Errorf("extend %s: %w", path, err)
		}
		if err := f.Sync(); err != nil {
			_ = f.Close()
			return nil, 0, false, fmt.Errorf("sync %s: %w", path, err)
		}
	}
	a := &ackFile{f: f, ops: ops}
	var seq uint64
	found := false
	for i := 0; i+ackSlot <= n; i += ackSlot {
		s := buf[i : i+ackSlot]
		if crc32.Checksum(s[:16], crcTable) != binary.LittleEndian.Uint32(s[16:]) {
			continue
		}
		if g := binary.LittleEndian.Uint64(s); !found || g > a.gen {
			a.gen, seq, found = g, binary.LittleEndian.Uint64(s[8:]), true
		}
	}
	return a, seq, found, nil
}

// store writes seq into the slot the last successful write did not use
// and fsyncs. A failed store may be retried: it writes the same slot
// again, so the other one, holding the last durable position, is never
// touched before a store succeeds.
func (a *ackFile) store(seq uint64) error {
	gen := a.gen + 1
	s := &a.buf
	*s = [ackSlot]byte{}
	binary.LittleEndian.PutUint64(s[:], gen)
	binary.LittleEndian.PutUint64(s[8:], seq)
	binary.LittleEndian.PutUint32(s[16:], crc32.Checksum(s[:16], crcTable))
	if err := a.ops.writeAt(a.f, s[:], int64(gen%2)*ackSlot); err != nil {
		return fmt.Errorf("write ack position: %w", err)
	}
	if err := a.ops.sync(a.f); err != nil {
		return fmt.Errorf("sync ack position: %w", err)
	}
	a.gen = gen
	return nil
}

func (a *ackFile) close() error { return a.f.Close() }

// loadOrCreateID returns the identity stored in path, creating it once.
func loadOrCreateID(dir string) (string, error) {
	path := filepath.Join(dir, "id")
	b, err := os.ReadFile(path)
	if err == nil {
		id := strings.TrimSpace(string(b))
		if len(id) != 32 {
			return "", fmt.Errorf("read queue id %s: malformed %q", path, id)
		}
		return id, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return "", fmt.Errorf("read queue id: %w", err)
	}
	var raw [16]byte
	if _, err := rand.Read(raw[:]); err != nil {
		return "", fmt.Errorf("generate queue id: %w", err)
	}
	id := hex.EncodeToString(raw[:])
	if err := WriteFileAtomic(path, []byte(id+"\n")); err != nil {
		return "", err
	}
	return id, nil
}

// WriteFileAtomic replaces path with data durably: temporary file, fsync,
// rename, fsync of the directory. The agent's tailers keep their positions
// with it too.
func WriteFileAtomic(path string, data []byte) error {
	return fileOps{}.writeFileAtomic(path, data)
}

// WriteFileAtomicHook is WriteFileAtomic calling hook, as
// Options.FileHook, before each of its changes: OpCreate, OpWrite and
// OpSync of the temporary file, OpRename to path, OpSyncDir of path's
// directory. For crash tests of its callers.
func WriteFileAtomicHook(path string, data []byte, hook func(op FileOp, path string) error) error {
	return fileOps{hook: hook}.writeFileAtomic(path, data)
}

func (o fileOps) writeFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	f, err := o.create(tmp)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	err = o.writeAt(f, data, 0)
	if err == nil {
		err = o.sync(f)
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(tmp) // the write error is the one to report
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := o.rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return o.syncDir(filepath.Dir(path))
}

func syncDir(dir string) error { return durable.SyncDir(dir) }
