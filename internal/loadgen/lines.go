package loadgen

import (
	"bufio"
	"fmt"
	"io"
	"strconv"
	"time"
)

// Formats of lines.
const (
	// JSON lines: {"ts":<unix ms>,"key":"k0001234","value":<0-999>,...}.
	JSON = "json"
	// Regex lines: an Apache access-log line whose path is the key and
	// whose byte count is the value (RegexPattern parses it).
	Regex = "regex"
)

// RegexPattern parses Regex lines: key, value and ts (TimeLayout) are
// the fields an app needs.
const RegexPattern = `^(?P<ip>\S+) \S+ \S+ \[(?P<ts>[^\]]+)\] "(?P<method>\S+) /(?P<key>\S+)[^"]*" (?P<status>\d{3}) (?P<value>\d+)`

// TimeLayout is the time layout of Regex lines.
const TimeLayout = "02/Jan/2006:15:04:05 -0700"

// MaxValue bounds the values of lines: they are 0 to MaxValue.
const MaxValue = 999

// Lines says which lines to make. Line i is the same bytes for the same
// Lines (but for Live event times).
type Lines struct {
	// Format: JSON or Regex.
	Format string
	// Size is the length of every line in bytes, padded with a filler
	// field; 0 makes the shortest lines of the format (for JSON only ts,
	// key and value). Must be 0 or at least MinSize(Format, Keys).
	Size int
	// Keys is the number of distinct keys (k0000000 ...).
	Keys int
	// Sequential takes key i%Keys for line i (every key once in Keys
	// lines) rather than one drawn from the seed.
	Sequential bool
	// Seed picks the keys, values and filler.
	Seed uint64
	// Start is the event time of line 0; zero: every line carries the
	// time it is made (live).
	Start time.Time
	// Step is the event time between consecutive lines (with Start).
	Step time.Duration
}

// Record is what a line says, as its consumers read it.
type Record struct {
	Key   int   // key index: the line's key is KeyName(Key)
	Value int64 // 0 to MaxValue
	TsMs  int64 // event time as written in the line, in Unix milliseconds
}

// Validate checks the spec.
func (l Lines) Validate() error {
	switch l.Format {
	case JSON, Regex:
	default:
		return fmt.Errorf("unknown line format %q (want json or regex)", l.Format)
	}
	if l.Keys < 1 {
		return fmt.Errorf("keys must be at least 1, not %d", l.Keys)
	}
	if l.Size != 0 {
		if min := MinSize(l.Format, l.Keys); l.Size < min {
			return fmt.Errorf("line size %d is too small for %s lines over %d keys (at least %d, or 0 for the shortest lines)", l.Size, l.Format, l.Keys, min)
		}
		if l.Size > 1<<20 {
			return fmt.Errorf("line size %d is over 1MiB", l.Size)
		}
	}
	if l.Step < 0 {
		return fmt.Errorf("step must not be negative, not %v", l.Step)
	}
	return nil
}

// Live reports whether lines carry the time they are made.
func (l Lines) Live() bool { return l.Start.IsZero() }

// MinSize is the smallest Size (other than 0) for the format and keys.
func MinSize(format string, keys int) int {
	l := Lines{Format: format, Keys: keys, Size: 1 << 20}
	// The longest line without filler: the widest value and fields.
	r := Record{Key: keys - 1, Value: MaxValue, TsMs: 9999999999999}
	return len(l.appendLine(nil, r, 0, false, true)) + 1
}

// keyWidth is the digits of key names: at least 7, so that key names
// have one length up to 10 M keys.
func keyWidth(keys int) int {
	n := 1
	for v := keys - 1; v >= 10; v /= 10 {
		n++
	}
	return max(7, n)
}

// KeyName is the name of key k in lines over keys keys.
func KeyName(k, keys int) string {
	return string(appendKey(nil, k, keys))
}

func appendKey(dst []byte, k, keys int) []byte {
	return appendPadded(append(dst, 'k'), k, keyWidth(keys))
}

// mix is splitmix64's finaliser: a good hash of one word.
func mix(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

// Record returns what line i says; nowMs is the event time of a live line.
func (l *Lines) Record(i int64, nowMs int64) Record {
	h := mix(l.Seed ^ mix(uint64(i)))
	r := Record{Value: int64(h>>40) % (MaxValue + 1)}
	if l.Sequential {
		r.Key = int(i % int64(l.Keys))
	} else {
		r.Key = int((h & 0xffffffffff) % uint64(l.Keys))
	}
	if l.Live() {
		r.TsMs = nowMs
	} else {
		r.TsMs = l.Start.UnixMilli() + (i*int64(l.Step))/int64(time.Millisecond)
	}
	if l.Format == Regex {
		r.TsMs -= ((r.TsMs % 1000) + 1000) % 1000 // written to the second
	}
	return r
}

// Append appends line i (without a newline) to dst and returns it with
// the line's record.
func (l *Lines) Append(dst []byte, i int64, nowMs int64) ([]byte, Record) {
	r := l.Record(i, nowMs)
	return l.appendLine(dst, r, mix(l.Seed+uint64(i)), l.Size > 0, false), r
}

var methods = [...]string{"GET", "GET", "GET", "POST", "PUT", "HEAD"}
var statuses = [...]int{200, 200, 200, 200, 301, 304, 404, 500}

const filler = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"

// appendLine appends the line of r, its other fields drawn from h;
// widest makes the longest line of r's width, for MinSize.
func (l *Lines) appendLine(dst []byte, r Record, h uint64, pad, widest bool) []byte {
	start := len(dst)
	extra := l.Size > 0
	method := methods[(h>>8)%uint64(len(methods))]
	octet := func(shift uint) uint64 { return (h >> shift) % 256 }
	if widest {
		method = "POST"
		octet = func(uint) uint64 { return 255 }
	}
	switch l.Format {
	case JSON:
		dst = append(dst, `{"ts":`...)
		dst = strconv.AppendInt(dst, r.TsMs, 10)
		dst = append(dst, `,"key":"`...)
		dst = appendKey(dst, r.Key, l.Keys)
		dst = append(dst, `","value":`...)
		dst = strconv.AppendInt(dst, r.Value, 10)
		if extra {
			dst = append(dst, `,"host":"web-`...)
			dst = appendPadded(dst, int(h%100), 2)
			dst = append(dst, `","method":"`...)
			dst = append(dst, method...)
			dst = append(dst, `","path":"/api/v1/items/`...)
			dst = appendPadded(dst, int((h>>16)%100000), 5)
			dst = append(dst, `","status":`...)
			dst = strconv.AppendInt(dst, int64(statuses[(h>>40)%uint64(len(statuses))]), 10)
			dst = append(dst, `,"pad":"`...)
			if pad {
				dst = appendFiller(dst, l.Size-(len(dst)-start)-2, h)
			}
			dst = append(dst, `"`...)
		}
		dst = append(dst, '}')
	case Regex:
		dst = append(dst, "10."...)
		dst = strconv.AppendUint(dst, octet(0), 10)
		dst = append(dst, '.')
		dst = strconv.AppendUint(dst, octet(8), 10)
		dst = append(dst, '.')
		dst = strconv.AppendUint(dst, octet(16), 10)
		dst = append(dst, " - - ["...)
		dst = time.UnixMilli(r.TsMs).UTC().AppendFormat(dst, TimeLayout)
		dst = append(dst, `] "`...)
		dst = append(dst, method...)
		dst = append(dst, " /"...)
		dst = appendKey(dst, r.Key, l.Keys)
		dst = append(dst, ` HTTP/1.1" `...)
		dst = strconv.AppendInt(dst, int64(statuses[(h>>40)%uint64(len(statuses))]), 10)
		dst = append(dst, ' ')
		dst = strconv.AppendInt(dst, r.Value, 10)
		if extra {
			dst = append(dst, ` "-" "freeway-load/1 `...)
			if pad {
				dst = appendFiller(dst, l.Size-(len(dst)-start)-1, h)
			}
			dst = append(dst, '"')
		}
	}
	return dst
}

// appendPadded appends v (not negative) in decimal, zero-padded to
// width, without the string strconv.Itoa would allocate per line.
func appendPadded(dst []byte, v, width int) []byte {
	var digits [20]byte
	i := len(digits)
	for u := uint64(v); ; u /= 10 {
		i--
		digits[i] = byte('0' + u%10)
		if u < 10 {
			break
		}
	}
	for n := len(digits) - i; n < width; n++ {
		dst = append(dst, '0')
	}
	return append(dst, digits[i:]...)
}

func appendFiller(dst []byte, n int, h uint64) []byte {
	off := int(h % uint64(len(filler)))
	for n > 0 {
		k := min(n, len(filler)-off)
		dst = append(dst, filler[off:off+k]...)
		n -= k
		off = 0
	}
	return dst
}

// Write writes lines first to first+count-1, one a line, to w (for a
// live spec, with nowMs as their event time), and adds them to truth
// when it is not nil.
func (l *Lines) Write(w io.Writer, first, count int64, nowMs int64, truth *Truth) error {
	if err := l.Validate(); err != nil {
		return err
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	var buf []byte
	for i := first; i < first+count; i++ {
		var r Record
		buf, r = l.Append(buf[:0], i, nowMs)
		buf = append(buf, '\n')
		if _, err := bw.Write(buf); err != nil {
			return fmt.Errorf("write lines: %w", err)
		}
		if truth != nil {
			truth.Add(r)
		}
	}
	if err := bw.Flush(); err != nil {
		return fmt.Errorf("write lines: %w", err)
	}
	return nil
}
