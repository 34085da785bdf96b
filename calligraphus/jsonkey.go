package calligraphus

import (
	"bytes"

	"github.com/freeway-dev/freeway/internal/jsonscan"
)

// jsonKey reads the shard key of a JSON line in one pass over its bytes,
// building nothing (jsonscan), where the apps' full parse (fastjson,
// through Route.NewKeyFunc) builds the whole object to read two or three
// fields. It reads the line only as far as the last of the key's fields
// (jsonscan.ScanPrefix): the writer takes every line, valid or not, and
// the key only places it, so the rest of the line is Puma's to read and
// refuse. It gives exactly the key the full parse gives for every line
// the full parse takes; for a line the full parse refuses, the key read
// from the prefix (its bucket is still a function of the line's bytes
// alone), or says the line is not one the full parse takes, where the
// prefix shows it; or it leaves the line to the full parse
// (jsonscan.Scanner says which lines). A string value is its bytes, a
// number its text, true and false their names, null or a missing field
// ""; values joined with NUL, a NUL inside a value becoming U+FFFD
// (apps.EncodeKey).
type jsonKey struct {
	scan *jsonscan.Scanner
}

// scanResult is what a scan concluded.
type scanResult = jsonscan.Result

const (
	scanKey     = jsonscan.OK      // the key is read (see jsonKey)
	scanInvalid = jsonscan.Invalid // the full parse refuses the line
	scanFull    = jsonscan.Full    // the full parse must read it
)

func newJSONKey(fields []string) *jsonKey {
	return &jsonKey{scan: jsonscan.New(fields)}
}

// appendKey appends the encoded shard key of line to dst.
func (k *jsonKey) appendKey(dst, line []byte) ([]byte, scanResult) {
	if r := k.scan.ScanPrefix(line); r != jsonscan.OK {
		return dst, r
	}
	for f, v := range k.scan.Fields() {
		if f > 0 {
			dst = append(dst, 0)
		}
		if v.Kind != jsonscan.Absent && v.Kind != jsonscan.Null {
			dst = appendKeyValue(dst, line[v.Start:v.End])
		}
	}
	return dst, scanKey
}

// appendKeyValue appends v with every NUL as U+FFFD, as apps.EncodeKey.
func appendKeyValue(dst, v []byte) []byte {
	for {
		n := bytes.IndexByte(v, 0)
		if n < 0 {
			return append(dst, v...)
		}
		dst = append(dst, v[:n]...)
		dst = append(dst, "\uFFFD"...)
		v = v[n+1:]
	}
}
