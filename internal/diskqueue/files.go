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
)

// ackFile persists the acknowledged position in two alternating slots.
type ackFile struct {
	f   *os.File
	gen uint64
}

const ackSlot = 32

func openAckFile(path string) (*ackFile, uint64, bool, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, 0, false, fmt.Errorf("open %s: %w", path, err)
	}
	var buf [2 * ackSlot]byte
	n, err := f.ReadAt(buf[:], 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, 0, false, fmt.Errorf("read %s: %w", path, err)
	}
	a := &ackFile{f: f}
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

// store writes seq into the slot the last write did not use and fsyncs.
func (a *ackFile) store(seq uint64) error {
	a.gen++
	var s [ackSlot]byte
	binary.LittleEndian.PutUint64(s[:], a.gen)
	binary.LittleEndian.PutUint64(s[8:], seq)
	binary.LittleEndian.PutUint32(s[16:], crc32.Checksum(s[:16], crcTable))
	if _, err := a.f.WriteAt(s[:], int64(a.gen%2)*ackSlot); err != nil {
		return fmt.Errorf("write ack position: %w", err)
	}
	if err := a.f.Sync(); err != nil {
		return fmt.Errorf("sync ack position: %w", err)
	}
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
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("create %s: %w", tmp, err)
	}
	_, err = f.Write(data)
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return syncDir(filepath.Dir(path))
}

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("open directory %s: %w", dir, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("sync directory %s: %w", dir, err)
	}
	return nil
}
