//go:build !unix

package connlimit

// temporaryErrnos: elsewhere only timeouts are known to pass.
var temporaryErrnos []error
