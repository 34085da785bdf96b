package hbasestore

import (
	"errors"
	"strings"

	"github.com/freeway-dev/freeway/thrift/gen/hbase"
)

// remoteError is an exception the gateway sent back: HBase's Java
// exception, reduced to its first line (the gateway often appends a remote
// stack trace). It unwraps to the generated *hbase.TIOError or
// *hbase.TIllegalArgument.
type remoteError struct {
	msg   string
	cause error
}

func (e *remoteError) Error() string { return e.msg }
func (e *remoteError) Unwrap() error { return e.cause }

// maxErrorText caps how much of a Java exception message goes into an error.
const maxErrorText = 400

// remote turns a declared gateway exception into a readable error and
// returns any other error unchanged.
func remote(err error) error {
	var io *hbase.TIOError
	if errors.As(err, &io) {
		return &remoteError{msg: firstLine(io.GetMessage(), "TIOError without a message"), cause: io}
	}
	var ia *hbase.TIllegalArgument
	if errors.As(err, &ia) {
		return &remoteError{msg: "illegal argument: " + firstLine(ia.GetMessage(), "no message"), cause: ia}
	}
	return err
}

func firstLine(s, empty string) string {
	if i := strings.IndexAny(s, "\r\n"); i >= 0 {
		s = s[:i]
	}
	s = strings.TrimSpace(s)
	if s == "" {
		return empty
	}
	if len(s) > maxErrorText {
		s = s[:maxErrorText] + "..."
	}
	return s
}

// messageOf is the gateway's message for err, or "" if err is not a
// gateway exception.
func messageOf(err error) string {
	var io *hbase.TIOError
	if errors.As(err, &io) {
		return io.GetMessage()
	}
	var ia *hbase.TIllegalArgument
	if errors.As(err, &ia) {
		return ia.GetMessage()
	}
	return ""
}

// masterStarting reports whether err says the master (or a region server)
// is still starting: HBase answers admin calls with PleaseHoldException
// ("Master is initializing") for a while after it is reachable.
func masterStarting(err error) bool {
	m := messageOf(err)
	for _, s := range []string{
		"PleaseHoldException",
		"Master is initializing",
		"ServerNotRunningYetException",
		"MasterNotRunningException",
		"is not running yet",
	} {
		if strings.Contains(m, s) {
			return true
		}
	}
	return false
}

// tableExistsErr reports whether err is HBase's TableExistsException: a
// racing client created the table first.
func tableExistsErr(err error) bool {
	return strings.Contains(messageOf(err), "TableExistsException")
}

// tableNotFound reports whether err is HBase's TableNotFoundException.
func tableNotFound(err error) bool {
	return strings.Contains(messageOf(err), "TableNotFoundException")
}

// scannerLost reports whether a getScannerRows error means the scanner is
// gone (expired on the gateway after hbase.client.scanner.timeout.period,
// or the gateway restarted) rather than the data being unreadable, so the
// scan can resume with a new scanner.
func scannerLost(err error) bool {
	var ia *hbase.TIllegalArgument
	if errors.As(err, &ia) {
		return true // "Invalid scanner Id"
	}
	m := messageOf(err)
	return strings.Contains(m, "UnknownScannerException") ||
		strings.Contains(m, "ScannerResetException") ||
		strings.Contains(m, "OutOfOrderScannerNextException")
}
