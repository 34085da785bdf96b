//go:build unix

package connlimit

import "syscall"

// temporaryErrnos are accept errors that pass: the process or the system
// is out of descriptors or buffers for a moment, or the peer gave up
// before the connection was taken.
var temporaryErrnos = []error{
	syscall.EMFILE, syscall.ENFILE, syscall.ECONNABORTED, syscall.ENOBUFS,
	syscall.ENOMEM, syscall.ECONNRESET, syscall.EPROTO, syscall.EINTR, syscall.EAGAIN,
}
