package main

import (
	"os/exec"
	"path/filepath"
	"testing"
)

// TestRestartSharesNothingWithTheExitedProcess: a process started again
// as soon as the previous one is seen to exit (the bench's recovery
// run) shares no state with the previous one's wait goroutine, which
// may still be returning. Run with -race: the harness once reset a
// sync.Once that goroutine was still inside ("sync: unlock of unlocked
// mutex").
func TestRestartSharesNothingWithTheExitedProcess(t *testing.T) {
	bin, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true(1)")
	}
	fw := &fwProc{logPath: filepath.Join(t.TempDir(), "log")}
	for i := range 200 {
		if err := fw.start(bin, nil); err != nil {
			t.Fatal(err)
		}
		<-fw.exited
		if fw.exitErr != nil {
			t.Fatalf("start %d: true(1) exited with %v", i, fw.exitErr)
		}
	}
}
