package hdfs

import (
	"errors"
	"io/fs"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/freeway-dev/freeway/internal/dfs"
)

// TestCreateOverCrashedFileAfterSoftLimit: once a dead writer's lease is
// past the NameNode's soft limit (60 s), a create over its file starts
// the lease's recovery and is refused with RecoveryInProgressException
// until the recovery has closed the file, then again with
// FileAlreadyExistsException. Every answer wraps fs.ErrExist, so that a
// copier restarted after a kill replaces its temporary file at once (it
// removes it and creates it again), as it does before the soft limit.
func TestCreateOverCrashedFileAfterSoftLimit(t *testing.T) {
	if testing.Short() {
		t.Skip("waits past the NameNode's lease soft limit (60 s)")
	}
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

	// Create over it until the NameNode has recovered the lease (60 s of
	// AlreadyBeingCreatedException, a few of RecoveryInProgressException),
	// or for 80 s: every answer must wrap fs.ErrExist. A recovery over
	// between two polls is not seen (the mapping's unit test,
	// TestCreateDuringLeaseRecoveryWrapsErrExist, holds it then).
	recovering, recovered := false, false
	for end := time.Now().Add(80 * time.Second); !recovered && time.Now().Before(end); {
		f, err := fsys.Create(crashed)
		if err == nil {
			f.Close()
			t.Fatal("create over the crashed file succeeded")
		}
		if !errors.Is(err, fs.ErrExist) {
			t.Fatalf("create over the crashed file: %v, want fs.ErrExist", err)
		}
		if strings.Contains(err.Error(), "RecoveryInProgressException") {
			if !recovering {
				t.Logf("create over the crashed file: %v", err)
			}
			recovering = true
		} else if recovering {
			recovered = true // the file is closed
		}
		time.Sleep(200 * time.Millisecond) // a create a poll is plenty
	}
	if !recovered {
		t.Logf("the lease's recovery was not seen in progress (recovering %v)", recovering)
	}

	// What the copier does with a temporary file it finds there.
	if err := fsys.Remove(crashed); err != nil {
		t.Fatalf("remove the crashed file: %v", err)
	}
	f, err := fsys.Create(crashed)
	if err != nil {
		t.Fatalf("create after removing the crashed file: %v", err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
}
