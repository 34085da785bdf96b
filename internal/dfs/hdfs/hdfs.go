package hdfs

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/user"
	"path"
	"sort"
	"sync"
	"sync/atomic"

	"github.com/colinmarc/hdfs/v2"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// FS is a dfs.FS rooted at a directory of an HDFS cluster, safe for
// concurrent use. colinmarc/hdfs serialises the NameNode calls of a
// client on its one connection (a call waits for the previous one's
// answer), so FS holds several clients (namenode_connections) and takes
// them in turn: the bucket writers' creates, completes, renames and fence
// listings and the readers' listings no longer wait for each other. A
// file being written stays with the client that created it (its lease
// is that client's). The NameNode orders the calls of all connections
// alike: a call made after another returned sees its effect.
type FS struct {
	clients     []*hdfs.Client
	next        atomic.Uint32
	cfg         config
	replication int
	blockSize   int64

	// replicatingRetries counts Close calls repeated because the NameNode
	// answered ErrReplicating.
	replicatingRetries atomic.Int64

	closeOnce sync.Once
	closeErr  error
}

var (
	_ dfs.FS     = (*FS)(nil)
	_ dfs.Rooted = (*FS)(nil)
)

// Open connects to the cluster named by an hdfs:// URL,
//
//	hdfs://host:port[,host:port]/root[?user=NAME]
//
// and creates root if it is missing. Several addresses name the NameNodes
// of an HA pair; a standby is skipped. The port defaults to 8020. The user
// defaults to $HADOOP_USER_NAME, then the OS user. Further parameters:
// dial_timeout and io_timeout (Go durations, default 10s and 60s) bound
// connecting and each network read or write, so an unreachable or hung
// NameNode or DataNode gives an error instead of a hang; block_size
// (bytes) overrides the NameNode's default; datanode_hostname=true reaches
// DataNodes by host name rather than IP (inside a container network);
// namenode_connections (1 to 64, default 4) is how many NameNode
// connections the FS holds, taken in turn (see FS). Kerberos is not
// supported.
func Open(rawURL string) (*FS, error) {
	return open(rawURL, nil)
}

// open is Open; wrapDataNode, if not nil, wraps the DataNode dialer
// (tests cut DataNode connections with it).
func open(rawURL string, wrapDataNode func(dialFunc) dialFunc) (*FS, error) {
	cfg, err := parseURL(rawURL)
	if err != nil {
		return nil, fmt.Errorf("open hdfs: %w", err)
	}
	name, err := resolveUser(cfg.user, os.Getenv, user.Current)
	if err != nil {
		return nil, fmt.Errorf("open hdfs: %w", err)
	}
	cfg.user = name

	dial := newDialer(cfg.dialTimeout, cfg.ioTimeout)
	dataNodeDial := dial
	if wrapDataNode != nil {
		dataNodeDial = wrapDataNode(dial)
	}
	f := &FS{cfg: cfg}
	var defaults hdfs.ServerDefaults
	for range cfg.connections {
		client, err := hdfs.NewClient(hdfs.ClientOptions{
			Addresses:           cfg.addrs,
			User:                cfg.user,
			UseDatanodeHostname: cfg.datanodeHostname,
			NamenodeDialFunc:    dial,
			DatanodeDialFunc:    dataNodeDial,
		})
		if err != nil {
			_ = f.Close() // the connect error is the one to report
			return nil, fmt.Errorf("open hdfs: connect to %s: %w", cfg, err)
		}
		f.clients = append(f.clients, client)
		// NewClient only wrote a handshake; this is the first call the
		// NameNode has to answer. It also fills the client's cache of
		// server defaults now, because colinmarc/hdfs fills it lazily
		// without a lock and concurrent first writers would race on it.
		if defaults, err = client.ServerDefaults(); err != nil {
			_ = f.Close() // the NameNode's error is the one to report
			return nil, fmt.Errorf("open hdfs: ask %s for server defaults: %w", cfg, err)
		}
	}
	// MkdirAll fails with fs.ErrExist if the root is a file.
	if err := f.client().MkdirAll(cfg.root, 0o755); err != nil {
		_ = f.Close() // the NameNode's error is the one to report
		return nil, fmt.Errorf("open hdfs: create root %s: %w", cfg, err)
	}
	f.replication = defaults.Replication
	f.blockSize = defaults.BlockSize
	if cfg.blockSize > 0 {
		f.blockSize = cfg.blockSize
	}
	return f, nil
}

// client is the next client in turn.
func (f *FS) client() *hdfs.Client {
	return f.clients[int(f.next.Add(1)%uint32(len(f.clients)))]
}

// path maps a dfs name to an absolute HDFS path under the root.
func (f *FS) path(op, name string) (string, error) {
	if name == "" {
		name = "."
	}
	if !fs.ValidPath(name) {
		return "", &fs.PathError{Op: op, Path: name, Err: fs.ErrInvalid}
	}
	return path.Join(f.cfg.root, name), nil
}

// recoveryInProgress is the NameNode's answer to a create over a file
// whose writer died more than the lease soft limit (60 s) ago: the create
// starts the recovery of the dead writer's lease and is refused until the
// recovery has closed the file (seconds), then with
// FileAlreadyExistsException. Before the soft limit it is
// AlreadyBeingCreatedException. colinmarc/hdfs maps those two to
// fs.ErrExist, not this one; it means the same: the name is taken.
const recoveryInProgress = "org.apache.hadoop.hdfs.protocol.RecoveryInProgressException"

// pathError names the HDFS path in an error from colinmarc/hdfs, which
// already returns *fs.PathError for most calls (wrapping fs.ErrNotExist,
// fs.ErrExist, fs.ErrPermission where the NameNode's Java exception maps
// to one) but not for all. A RecoveryInProgressException wraps
// fs.ErrExist too.
func pathError(op, p string, err error) error {
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		err = pe.Err
	}
	if he := hdfs.Error(nil); errors.As(err, &he) && he.Exception() == recoveryInProgress {
		err = fmt.Errorf("%w: %w", fs.ErrExist, err)
	}
	return &fs.PathError{Op: op, Path: p, Err: err}
}

// Create creates name, and its parent directories if the NameNode says
// they are missing. HDFS refuses to create over an existing file or
// directory, including one still held open by a writer that crashed
// (whose lease it may be recovering: see recoveryInProgress), so the
// error wraps fs.ErrExist in all those cases.
func (f *FS) Create(name string) (dfs.File, error) {
	p, err := f.path("create", name)
	if err != nil {
		return nil, err
	}
	fw, err := f.client().CreateFile(p, f.replication, f.blockSize, 0o644)
	if errors.Is(err, fs.ErrNotExist) {
		// The NameNode can create parents itself, but colinmarc/hdfs never
		// asks it to; trying first saves a call in the common case.
		if err := f.client().MkdirAll(path.Dir(p), 0o755); err != nil {
			return nil, pathError("create", p, err)
		}
		fw, err = f.client().CreateFile(p, f.replication, f.blockSize, 0o644)
	}
	if err != nil {
		return nil, pathError("create", p, err)
	}
	return &writer{fw: fw, path: p, retry: defaultCloseRetry(&f.replicatingRetries)}, nil
}

// Open opens name for reading. The reader sees the file's length as the
// NameNode reported it at Open: for a file still being written, its
// completed blocks and nothing of the block under construction, which for
// a short segment is nothing at all.
func (f *FS) Open(name string) (dfs.Reader, error) {
	p, err := f.path("open", name)
	if err != nil {
		return nil, err
	}
	fr, err := f.client().Open(p)
	if err != nil {
		return nil, pathError("open", p, err)
	}
	if fr.Stat().IsDir() {
		_ = fr.Close() // opened for reading
		return nil, &fs.PathError{Op: "open", Path: p, Err: errors.New("is a directory")}
	}
	return &reader{fr: fr, path: p}, nil
}

func (f *FS) Stat(name string) (fs.FileInfo, error) {
	p, err := f.path("stat", name)
	if err != nil {
		return nil, err
	}
	fi, err := f.client().Stat(p)
	if err != nil {
		return nil, pathError("stat", p, err)
	}
	return fi, nil
}

// ReadDir lists name. The NameNode already lists in byte order, but the
// contract is ours to keep, so it is sorted here too.
func (f *FS) ReadDir(name string) ([]fs.FileInfo, error) {
	p, err := f.path("readdir", name)
	if err != nil {
		return nil, err
	}
	infos, err := f.client().ReadDir(p)
	if err != nil {
		return nil, pathError("readdir", p, err)
	}
	sort.Slice(infos, func(i, j int) bool { return infos[i].Name() < infos[j].Name() })
	return infos, nil
}

func (f *FS) MkdirAll(name string) error {
	p, err := f.path("mkdir", name)
	if err != nil {
		return err
	}
	if err := f.client().MkdirAll(p, 0o755); err != nil {
		return pathError("mkdir", p, err)
	}
	return nil
}

// Rename is one rename2 call with OVERWRITE on the NameNode, atomic like
// POSIX rename: readers see the old destination or the new one. The
// NameNode refuses a file over a directory with a bare IOException, so
// that case is told apart afterwards and reported as fs.ErrExist, like
// localfs does.
func (f *FS) Rename(oldname, newname string) error {
	op, err := f.path("rename", oldname)
	if err != nil {
		return err
	}
	np, err := f.path("rename", newname)
	if err != nil {
		return err
	}
	err = f.client().Rename(op, np)
	if err == nil {
		return nil
	}
	if pe := (*fs.PathError)(nil); errors.As(err, &pe) {
		err = pe.Err
	}
	if !errors.Is(err, fs.ErrNotExist) {
		if st, serr := f.client().Stat(np); serr == nil && st.IsDir() {
			err = fs.ErrExist
		}
	}
	return &os.LinkError{Op: "rename", Old: op, New: np, Err: err}
}

// Remove deletes a file or an empty directory. It works on a file another
// client still holds open, which is how a crashed writer's last file is
// cleaned up: deleting needs no lease.
func (f *FS) Remove(name string) error {
	p, err := f.path("remove", name)
	if err != nil {
		return err
	}
	if err := f.client().Remove(p); err != nil {
		return pathError("remove", p, err)
	}
	return nil
}

// RemoveAll deletes name and everything under it; a name that does not
// exist is no error, and "" is the root itself. It is not part of dfs.FS
// (Freeway deletes segments one by one, as retention allows): tools and
// tests use it to remove the trees they made (bench/run its runs' roots).
func (f *FS) RemoveAll(name string) error {
	p, err := f.path("remove all", name)
	if err != nil {
		return err
	}
	if err := f.client().RemoveAll(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return pathError("remove all", p, err)
	}
	return nil
}

// RootPath is the root directory in the cluster (dfs.Rooted), as the URL
// named it: HDFS resolves no links in it.
func (f *FS) RootPath() (string, error) { return f.cfg.root, nil }

// SyncDurable is false: colinmarc/hdfs has no hflush or hsync, so a file
// is durable, and visible, only once Close returns.
func (f *FS) SyncDurable() bool { return false }

// String is the URL without its parameters.
func (f *FS) String() string { return f.cfg.String() }

// Close closes the NameNode connections. Files still open lose their lease
// renewal: finish them first.
func (f *FS) Close() error {
	f.closeOnce.Do(func() {
		// colinmarc/hdfs panics on a second Close.
		var errs []error
		for _, c := range f.clients {
			errs = append(errs, c.Close())
		}
		if err := errors.Join(errs...); err != nil {
			f.closeErr = fmt.Errorf("close hdfs %s: %w", f.cfg, err)
		}
	})
	return f.closeErr
}
