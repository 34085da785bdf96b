package calligraphus

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"strconv"
	"strings"
)

// jsonKey reads the shard key of a JSON line in one pass over its bytes,
// building nothing, where the apps' full parse (fastjson, through
// Route.NewKeyFunc) builds the whole object to read two or three fields.
// It gives exactly the key the full parse gives, or says the line is not
// one the full parse takes, or leaves the line to the full parse:
//
//   - the grammar is fastjson's, not RFC 8259's, as the full parse is
//     what Puma applies: numbers are any run of digits, signs, dots and
//     exponents (and inf, nan in any case), strings take any byte and any
//     escape, nesting stops at 300 levels, and the line must be one
//     object with nothing but white space around it;
//   - a field is a dotted path; a step into an array is a decimal index
//     (strconv.Atoi); the first of duplicate names counts; a null or
//     missing field reads as "";
//   - a string value is its bytes, a number its text, true and false
//     their names; values joined with NUL, a NUL inside a value becoming
//     U+FFFD (apps.EncodeKey).
//
// What it leaves to the full parse (rare in logs, and intricate in
// fastjson): an escape in a name of an object the fields pass through
// or in a key's string value, an object or array as a key's value, and
// fields named with a backslash or more than 64 of them.
type jsonKey struct {
	paths [][]string
	index [][]int // paths[f][level] as an array index, -1 if it is none
	last  []int   // len(paths[f]) - 1
	// always: the scan can never answer alone (see above).
	always bool
	// per field, what the line holds: a span of it, or a literal.
	vals []keyVal
}

type keyVal struct {
	start, end int    // the value's bytes in the line, when lit is ""
	lit        string // true, false
	set        bool
}

// scanResult is what a scan concluded.
type scanResult int

const (
	scanKey     scanResult = iota // the key is read
	scanInvalid                   // the full parse refuses the line
	scanFull                      // the full parse must read it
)

// jsonMaxDepth is fastjson's nesting limit.
const jsonMaxDepth = 300

func newJSONKey(fields []string) *jsonKey {
	k := &jsonKey{paths: make([][]string, len(fields)), index: make([][]int, len(fields)),
		last: make([]int, len(fields)), vals: make([]keyVal, len(fields))}
	k.always = len(fields) > 64 || len(fields) == 0
	for f, name := range fields {
		if strings.IndexByte(name, '\\') >= 0 {
			k.always = true
		}
		k.paths[f] = strings.Split(name, ".")
		k.last[f] = len(k.paths[f]) - 1
		k.index[f] = make([]int, len(k.paths[f]))
		for l, step := range k.paths[f] {
			n, err := strconv.Atoi(step)
			if err != nil || n < 0 {
				n = -1
			}
			k.index[f][l] = n
		}
	}
	return k
}

// appendKey appends the encoded shard key of line to dst.
func (k *jsonKey) appendKey(dst, line []byte) ([]byte, scanResult) {
	if k.always {
		return dst, scanFull
	}
	clear(k.vals)
	i := skipWS(line, 0)
	if i == len(line) || line[i] != '{' {
		return dst, scanInvalid // empty, not JSON, or not an object
	}
	all := uint64(1)<<len(k.paths) - 1
	if len(k.paths) == 64 {
		all = ^uint64(0)
	}
	i, r := k.value(line, i, 0, all, 0, 0)
	if r != scanKey {
		return dst, r
	}
	if skipWS(line, i) != len(line) {
		return dst, scanInvalid
	}
	for f, v := range k.vals {
		if f > 0 {
			dst = append(dst, 0)
		}
		switch {
		case !v.set:
		case v.lit != "":
			dst = append(dst, v.lit...)
		default:
			dst = appendKeyValue(dst, line[v.start:v.end])
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

// value scans the value at s[i], at nesting depth (of its container).
// Fields in active pass through it at path step level; fields in ends
// have it as their value.
func (k *jsonKey) value(s []byte, i, depth int, active, ends uint64, level int) (int, scanResult) {
	if i >= len(s) {
		return i, scanInvalid
	}
	depth++
	if depth > jsonMaxDepth {
		return i, scanInvalid
	}
	switch c := s[i]; c {
	case '{':
		if ends != 0 {
			return i, scanFull
		}
		return k.object(s, i+1, depth, active, level)
	case '[':
		if ends != 0 {
			return i, scanFull
		}
		return k.array(s, i+1, depth, active, level)
	case '"':
		end, escaped := stringEnd(s, i+1)
		if end < 0 {
			return i, scanInvalid
		}
		if ends != 0 {
			if escaped {
				return i, scanFull
			}
			k.set(ends, keyVal{start: i + 1, end: end, set: true})
		}
		return end + 1, scanKey
	case 't', 'f', 'n':
		lit := "true"
		switch c {
		case 'f':
			lit = "false"
		case 'n':
			lit = "null"
		}
		if bytes.HasPrefix(s[i:], []byte(lit)) {
			switch {
			case ends == 0:
			case c == 'n':
				k.set(ends, keyVal{}) // null reads as missing
			default:
				k.set(ends, keyVal{lit: lit, set: true})
			}
			return i + len(lit), scanKey
		}
		if c == 'n' && len(s)-i >= 3 && bytes.EqualFold(s[i:i+3], []byte("nan")) {
			k.set(ends, keyVal{start: i, end: i + 3, set: true})
			return i + 3, scanKey
		}
		return i, scanInvalid
	}
	end := numberEnd(s, i)
	if end < 0 {
		return i, scanInvalid
	}
	k.set(ends, keyVal{start: i, end: end, set: true})
	return end, scanKey
}

func (k *jsonKey) set(fields uint64, v keyVal) {
	for f := range k.vals {
		if fields&(1<<f) != 0 {
			k.vals[f] = v
		}
	}
}

func (k *jsonKey) object(s []byte, i, depth int, active uint64, level int) (int, scanResult) {
	i = skipWS(s, i)
	if i >= len(s) {
		return i, scanInvalid
	}
	if s[i] == '}' {
		return i + 1, scanKey
	}
	var taken uint64 // fields whose name at this level an earlier key had
	for {
		i = skipWS(s, i)
		if i >= len(s) || s[i] != '"' {
			return i, scanInvalid
		}
		end, escaped := stringEnd(s, i+1)
		if end < 0 {
			return i, scanInvalid
		}
		if escaped && active != 0 {
			return i, scanFull
		}
		name := s[i+1 : end]
		i = skipWS(s, end+1)
		if i >= len(s) || s[i] != ':' {
			return i, scanInvalid
		}
		i = skipWS(s, i+1)
		var next, ends uint64
		for m := active &^ taken; m != 0; m &= m - 1 {
			f := bits.TrailingZeros64(m)
			if k.paths[f][level] == string(name) {
				taken |= 1 << f
				if level == k.last[f] {
					ends |= 1 << f
				} else {
					next |= 1 << f
				}
			}
		}
		var r scanResult
		if i, r = k.value(s, i, depth, next, ends, level+1); r != scanKey {
			return i, r
		}
		i = skipWS(s, i)
		if i >= len(s) {
			return i, scanInvalid
		}
		switch s[i] {
		case ',':
			i++
		case '}':
			return i + 1, scanKey
		default:
			return i, scanInvalid
		}
	}
}

func (k *jsonKey) array(s []byte, i, depth int, active uint64, level int) (int, scanResult) {
	i = skipWS(s, i)
	if i >= len(s) {
		return i, scanInvalid
	}
	if s[i] == ']' {
		return i + 1, scanKey
	}
	for n := 0; ; n++ {
		i = skipWS(s, i)
		var next, ends uint64
		for m := active; m != 0; m &= m - 1 {
			f := bits.TrailingZeros64(m)
			if k.index[f][level] == n {
				if level == k.last[f] {
					ends |= 1 << f
				} else {
					next |= 1 << f
				}
			}
		}
		var r scanResult
		if i, r = k.value(s, i, depth, next, ends, level+1); r != scanKey {
			return i, r
		}
		i = skipWS(s, i)
		if i >= len(s) {
			return i, scanInvalid
		}
		switch s[i] {
		case ',':
			i++
		case ']':
			return i + 1, scanKey
		default:
			return i, scanInvalid
		}
	}
}

// skipWS skips JSON white space (space, tab, CR, LF) from s[i].
func skipWS(s []byte, i int) int {
	if i < len(s) && s[i] > ' ' {
		return i // the usual case: no white space
	}
	for i < len(s) && (s[i] == ' ' || s[i] == '\n' || s[i] == '\t' || s[i] == '\r') {
		i++
	}
	return i
}

// stringEnd finds the quote closing a string whose body starts at s[i]
// (the first one not escaped by a backslash, as fastjson reads it: after
// an even run of backslashes); -1 if there is none. It reports whether
// the body holds a backslash. It looks at eight bytes at a time for a
// quote or a backslash.
func stringEnd(s []byte, i int) (int, bool) {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for ; i+8 <= len(s); i += 8 {
		v := binary.LittleEndian.Uint64(s[i:])
		q, b := v^('"'*ones), v^('\\'*ones)
		// A byte of q or b is zero where v has a quote or a backslash;
		// the lowest flagged byte is exact (a false flag can only sit
		// above a true one).
		if m := ((q-ones)&^q | (b-ones)&^b) & highs; m != 0 {
			i += bits.TrailingZeros64(m) / 8
			if s[i] == '"' {
				return i, false
			}
			return escapedStringEnd(s, i)
		}
	}
	for ; i < len(s); i++ {
		switch s[i] {
		case '"':
			return i, false
		case '\\':
			return escapedStringEnd(s, i)
		}
	}
	return -1, false
}

// escapedStringEnd is stringEnd from the first backslash of a body, s[i].
func escapedStringEnd(s []byte, i int) (int, bool) {
	for ; i < len(s); i++ {
		switch s[i] {
		case '"':
			return i, true
		case '\\':
			i++ // the escaped byte, whatever it is
		}
	}
	return -1, true
}

// numberEnd ends a fastjson number starting at s[i], or returns -1.
func numberEnd(s []byte, i int) int {
	j := i
	for j < len(s) {
		c := s[j]
		if c >= '0' && c <= '9' || c == '.' || c == '-' || c == 'e' || c == 'E' || c == '+' {
			j++
			continue
		}
		if j == i || j == i+1 && (s[i] == '-' || s[i] == '+') {
			if len(s)-j >= 3 && (bytes.EqualFold(s[j:j+3], []byte("inf")) || bytes.EqualFold(s[j:j+3], []byte("nan"))) {
				return j + 3
			}
			return -1
		}
		return j
	}
	return j
}
