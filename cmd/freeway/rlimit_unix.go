//go:build unix

package main

import (
	"log/slog"
	"syscall"
)

// raiseFileLimit raises the soft limit on open files to the hard limit,
// and says what it is: every connection takes a descriptor, and running
// out makes new connections wait (the listeners retry, never fail). Go
// raises it at start as well; doing it here makes it explicit and logged.
func raiseFileLimit(log *slog.Logger) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		log.Warn("open file limit unknown", "err", err)
		return
	}
	if lim.Cur < lim.Max {
		want := lim
		want.Cur = want.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			log.Warn("open file limit not raised", "soft", lim.Cur, "hard", lim.Max, "err", err)
			return
		}
		lim = want
	}
	log.Info("open file limit", "limit", lim.Cur)
}
