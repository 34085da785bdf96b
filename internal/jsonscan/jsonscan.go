package jsonscan

import (
	"bytes"
	"encoding/binary"
	"math/bits"
	"strconv"
	"strings"
)

// Kind is what a line holds at a field's path.
type Kind uint8

// The kinds of a field's value.
const (
	Absent Kind = iota // no such field
	Null               // null
	String             // a string without escapes: its body is the value
	Number             // a number in fastjson's grammar: its text
	True               // true
	False              // false
)

// Field is the value at one path of a scanned line: its kind, and where
// it lies in the line, line[Start:End] (a string's body without its
// quotes, a number's text, the literal true, false or null).
type Field struct {
	Kind       Kind
	Start, End int
}

// Result is what a scan concluded.
type Result uint8

const (
	// OK: the fields are read, exactly as the full parse reads them.
	OK Result = iota
	// Invalid: the full parse refuses the line (not an object, not JSON
	// in its grammar). Its error, not the scan's, says why.
	Invalid
	// Full: the full parse must read the line.
	Full
	// found: every path has its value (ScanPrefix stops there); never
	// returned.
	found
)

// MaxDepth is fastjson's nesting limit.
const MaxDepth = 300

// MaxFields is how many paths a scanner reads; more are left to the full
// parse.
const MaxFields = 64

// Scanner reads the values at a set of paths. The grammar is fastjson's,
// not RFC 8259's, as the full parse is what its users are defined by:
//
//   - numbers are any run of digits, signs, dots and exponents (and inf,
//     nan in any case), strings take any byte and any escape, nesting
//     stops at MaxDepth levels, and the line must be one object with
//     nothing but white space around it;
//   - a path is dotted; a step into an array is a decimal index
//     (strconv.Atoi); the first of duplicate names counts.
//
// What it leaves to the full parse (Full; rare in logs, and intricate in
// fastjson): an escape in a name of an object a path passes through or
// in a string value read, an object or array as a value read, and paths
// with a backslash or more than MaxFields of them.
//
// Not safe for concurrent use; it allocates nothing per line.
type Scanner struct {
	paths [][]string
	index [][]int // paths[f][level] as an array index, -1 if it is none
	last  []int   // len(paths[f]) - 1
	all   uint64  // a bit per path
	// lens[level]: a bit per length of the paths' names at level (63:
	// 63 bytes or more), so that a name no path can have is passed by
	// its length alone.
	lens []uint64
	// names[level]: the distinct names of the paths at level, each with
	// the paths that have it there (a name is compared once, whatever
	// the number of paths through it); lastAt[level]: the paths whose
	// last step is level.
	names  [][]levelName
	lastAt []uint64
	// always: the scan can never answer alone (see above).
	always bool
	fields []Field
	// prefix: this scan stops once every path has its value (ScanPrefix);
	// seen: the paths that have one so far.
	prefix bool
	seen   uint64
}

// New returns a scanner of paths (dotted field names).
func New(paths []string) *Scanner {
	s := &Scanner{paths: make([][]string, len(paths)), index: make([][]int, len(paths)),
		last: make([]int, len(paths)), fields: make([]Field, len(paths))}
	s.always = len(paths) > MaxFields || len(paths) == 0
	if !s.always {
		s.all = uint64(1)<<len(paths) - 1
		if len(paths) == MaxFields {
			s.all = ^uint64(0)
		}
	}
	for f, name := range paths {
		if strings.IndexByte(name, '\\') >= 0 {
			s.always = true
		}
		s.paths[f] = strings.Split(name, ".")
		s.last[f] = len(s.paths[f]) - 1
		s.index[f] = make([]int, len(s.paths[f]))
		for l, step := range s.paths[f] {
			if l == len(s.lens) {
				s.lens = append(s.lens, 0)
			}
			s.lens[l] |= 1 << min(len(step), 63)
			s.addName(l, step, f)
			n, err := strconv.Atoi(step)
			if err != nil || n < 0 {
				n = -1
			}
			s.index[f][l] = n
		}
	}
	return s
}

// levelName is a name some paths have at one level, and those paths.
type levelName struct {
	name string
	// word is the name's bytes in a little-endian word, zero above them,
	// for a name of at most eight bytes (nameWord).
	word  uint64
	paths uint64
}

// addName records that path f has name at level.
func (s *Scanner) addName(level int, name string, f int) {
	for len(s.names) <= level {
		s.names, s.lastAt = append(s.names, nil), append(s.lastAt, 0)
	}
	if level == s.last[f] {
		s.lastAt[level] |= 1 << f
	}
	for k := range s.names[level] {
		if s.names[level][k].name == name {
			s.names[level][k].paths |= 1 << f
			return
		}
	}
	var word uint64
	for k := min(len(name), 8) - 1; k >= 0; k-- {
		word = word<<8 | uint64(name[k])
	}
	s.names[level] = append(s.names[level], levelName{name: name, word: word, paths: 1 << f})
}

// match returns the paths whose name at level is b[start:end], the
// name of a key: by the name's word when it is short (one comparison
// of integers, no call), else by its bytes.
func (s *Scanner) match(b []byte, start, end, level int) uint64 {
	names := s.names[level]
	if n := end - start; n <= 8 && start+8 <= len(b) {
		word := binary.LittleEndian.Uint64(b[start:]) & (^uint64(0) >> (64 - 8*n)) // n = 0: a shift by 64 is 0
		for k := range names {
			if names[k].word == word && len(names[k].name) == n {
				return names[k].paths
			}
		}
		return 0
	}
	for k := range names {
		if names[k].name == string(b[start:end]) {
			return names[k].paths
		}
	}
	return 0
}

// Scan reads line. After OK, Fields holds the value of each path, in
// the order of New's paths.
func (s *Scanner) Scan(line []byte) Result {
	return s.scan(line, false)
}

// ScanPrefix is Scan, reading line only as far as the value of the last
// of its paths to appear (the first of duplicate names counts): what
// follows is not read, so that a line the full parse refuses for what
// follows may be read OK. After OK, Fields holds what the full parse
// reads, if it accepts the line at all; Invalid and Full are Scan's
// answers, for what the scan read. For a reader that needs the fields
// alone and takes the line whether or not it is valid (the writer's
// shard key); not for one that must refuse the lines the full parse
// refuses.
func (s *Scanner) ScanPrefix(line []byte) Result {
	return s.scan(line, true)
}

func (s *Scanner) scan(line []byte, prefix bool) Result {
	if s.always {
		return Full
	}
	clear(s.fields)
	s.prefix, s.seen = prefix, 0
	i := skipWS(line, 0)
	if i == len(line) || line[i] != '{' {
		return Invalid // empty, not JSON, or not an object
	}
	i, r := s.value(line, i, 0, s.all, 0, 0)
	if r == found {
		return OK
	}
	if r != OK {
		return r
	}
	if skipWS(line, i) != len(line) {
		return Invalid
	}
	return OK
}

// done reports whether a prefix scan has read every path's value, once
// a value was read for paths ends.
func (s *Scanner) done(ends uint64) bool {
	return ends != 0 && s.prefix && s.seen == s.all
}

// Fields are the values of the last line scanned OK, by path; valid
// until the next Scan.
func (s *Scanner) Fields() []Field { return s.fields }

// value scans the value at b[i], at nesting depth (of its container).
// Paths in active pass through it at path step level; paths in ends have
// it as their value.
func (s *Scanner) value(b []byte, i, depth int, active, ends uint64, level int) (int, Result) {
	if i >= len(b) {
		return i, Invalid
	}
	depth++
	if depth > MaxDepth {
		return i, Invalid
	}
	switch c := b[i]; c {
	case '{':
		if ends != 0 {
			return i, Full
		}
		return s.object(b, i+1, depth, active, level)
	case '[':
		if ends != 0 {
			return i, Full
		}
		return s.array(b, i+1, depth, active, level)
	case '"':
		end, escaped := stringEnd(b, i+1)
		if end < 0 {
			return i, Invalid
		}
		if ends != 0 {
			if escaped {
				return i, Full
			}
			s.set(ends, Field{String, i + 1, end})
		}
		return end + 1, OK
	case 't', 'f', 'n':
		lit, kind := "true", True
		switch c {
		case 'f':
			lit, kind = "false", False
		case 'n':
			lit, kind = "null", Null
		}
		if bytes.HasPrefix(b[i:], []byte(lit)) {
			s.set(ends, Field{kind, i, i + len(lit)})
			return i + len(lit), OK
		}
		if c == 'n' && len(b)-i >= 3 && bytes.EqualFold(b[i:i+3], []byte("nan")) {
			s.set(ends, Field{Number, i, i + 3})
			return i + 3, OK
		}
		return i, Invalid
	}
	end := numberEnd(b, i)
	if end < 0 {
		return i, Invalid
	}
	s.set(ends, Field{Number, i, end})
	return end, OK
}

func (s *Scanner) set(paths uint64, v Field) {
	s.seen |= paths
	for m := paths; m != 0; m &= m - 1 {
		s.fields[bits.TrailingZeros64(m)] = v
	}
}

func (s *Scanner) object(b []byte, i, depth int, active uint64, level int) (int, Result) {
	i = skipWS(b, i)
	if i >= len(b) {
		return i, Invalid
	}
	if b[i] == '}' {
		return i + 1, OK
	}
	var taken uint64 // paths whose name at this level an earlier key had
	// The usual line has no white space: each step looks at the byte it
	// expects first, and skips white space only where it is not there.
	for {
		if i >= len(b) || b[i] != '"' {
			if i = skipWS(b, i); i >= len(b) || b[i] != '"' {
				return i, Invalid
			}
		}
		start := i + 1
		end := shortStringEnd(b, start)
		if end < 0 {
			var escaped bool
			if end, escaped = stringEnd(b, start); end < 0 {
				return i, Invalid
			}
			if escaped && active != 0 {
				return i, Full
			}
		}
		if i = end + 1; i >= len(b) || b[i] != ':' {
			if i = skipWS(b, i); i >= len(b) || b[i] != ':' {
				return i, Invalid
			}
		}
		i = skipWS(b, i+1)
		var next, ends uint64
		// A path still looking for its name here (active: never beyond
		// its last step, so level < len(s.lens)), and one of its length.
		if m := active &^ taken; m != 0 && s.lens[level]>>min(end-start, 63)&1 != 0 {
			if hit := s.match(b, start, end, level) & m; hit != 0 {
				taken |= hit
				ends = hit & s.lastAt[level]
				next = hit &^ ends
			}
		}
		// The value: most are a string or a number that no path reads or
		// passes through, stepped over where it lies (within MaxDepth:
		// the value's level is depth+1).
		switch {
		case next|ends != 0 || depth >= MaxDepth || i >= len(b):
			var r Result
			if i, r = s.value(b, i, depth, next, ends, level+1); r != OK {
				return i, r
			}
			if s.done(ends) {
				return i, found
			}
		case b[i] == '"':
			if end := shortStringEnd(b, i+1); end >= 0 {
				i = end + 1
			} else if i, _ = stringEnd(b, i+1); i < 0 {
				return i, Invalid
			} else {
				i++
			}
		case b[i]-'0' <= 9:
			if end := shortNumberEnd(b, i); end >= 0 {
				i = end
			} else {
				i = numberEnd(b, i) // a digit first: never -1
			}
		default:
			var r Result
			if i, r = s.value(b, i, depth, 0, 0, level+1); r != OK {
				return i, r
			}
		}
		if i < len(b) && b[i] == ',' {
			i++
			continue
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return i, Invalid
		}
		switch b[i] {
		case ',':
			i++
		case '}':
			return i + 1, OK
		default:
			return i, Invalid
		}
	}
}

func (s *Scanner) array(b []byte, i, depth int, active uint64, level int) (int, Result) {
	i = skipWS(b, i)
	if i >= len(b) {
		return i, Invalid
	}
	if b[i] == ']' {
		return i + 1, OK
	}
	for n := 0; ; n++ {
		i = skipWS(b, i)
		var next, ends uint64
		for m := active; m != 0; m &= m - 1 {
			f := bits.TrailingZeros64(m)
			if s.index[f][level] == n {
				if level == s.last[f] {
					ends |= 1 << f
				} else {
					next |= 1 << f
				}
			}
		}
		var r Result
		if i, r = s.value(b, i, depth, next, ends, level+1); r != OK {
			return i, r
		}
		if s.done(ends) {
			return i, found
		}
		i = skipWS(b, i)
		if i >= len(b) {
			return i, Invalid
		}
		switch b[i] {
		case ',':
			i++
		case ']':
			return i + 1, OK
		default:
			return i, Invalid
		}
	}
}

// skipWS skips JSON white space (space, tab, CR, LF) from b[i].
func skipWS(b []byte, i int) int {
	if i < len(b) && b[i] > ' ' {
		return i // the usual case: no white space
	}
	for i < len(b) && (b[i] == ' ' || b[i] == '\n' || b[i] == '\t' || b[i] == '\r') {
		i++
	}
	return i
}

// stringEnd finds the quote closing a string whose body starts at b[i]
// (the first one not escaped by a backslash, as fastjson reads it: after
// an even run of backslashes); -1 if there is none. It reports whether
// the body holds a backslash. It looks at the first sixteen bytes eight
// at a time for a quote or a backslash (most names and values end
// there); past them, it finds the next quote by bytes.IndexByte (vector
// instructions: a long string's cost) and then looks for a backslash
// before it the same way.
func stringEnd(b []byte, i int) (int, bool) {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	for n := 0; n < 2 && i+8 <= len(b); n++ {
		v := binary.LittleEndian.Uint64(b[i:])
		q, e := v^('"'*ones), v^('\\'*ones)
		// A byte of q or e is zero where v has a quote or a backslash;
		// the lowest flagged byte is exact (a false flag can only sit
		// above a true one).
		if m := ((q-ones)&^q | (e-ones)&^e) & highs; m != 0 {
			i += bits.TrailingZeros64(m) / 8
			if b[i] == '"' {
				return i, false
			}
			return escapedStringEnd(b, i)
		}
		i += 8
	}
	q := bytes.IndexByte(b[i:], '"')
	if q < 0 {
		return -1, false
	}
	if e := bytes.IndexByte(b[i:i+q], '\\'); e >= 0 {
		return escapedStringEnd(b, i+e)
	}
	return i + q, false
}

// shortStringEnd is stringEnd for a body that ends in its first eight
// bytes without a backslash (most names, many values), small enough to be
// inlined (a call spills every live register); -1 for any other.
func shortStringEnd(b []byte, i int) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	if i+8 <= len(b) {
		v := binary.LittleEndian.Uint64(b[i:])
		q, e := v^('"'*ones), v^('\\'*ones)
		if m := ((q-ones)&^q | (e-ones)&^e) & highs; m != 0 {
			if j := i + bits.TrailingZeros64(m)/8; b[j] == '"' {
				return j
			}
		}
	}
	return -1
}

// escapedStringEnd is stringEnd from the first backslash of a body, b[i].
func escapedStringEnd(b []byte, i int) (int, bool) {
	for ; i < len(b); i++ {
		switch b[i] {
		case '"':
			return i, true
		case '\\':
			i++ // the escaped byte, whatever it is
		}
	}
	return -1, true
}

// shortNumberEnd is numberEnd for a run of fewer than eight digits, from
// b[i], ended by a comma or a closing brace (most numbers of a line),
// small enough to be inlined; -1 for any other.
func shortNumberEnd(b []byte, i int) int {
	if i+8 <= len(b) {
		v := binary.LittleEndian.Uint64(b[i:])
		// As in numberEnd.
		if m := (v&0xF0F0F0F0F0F0F0F0 ^ 0x3030303030303030) | ((v+0x0606060606060606)&0xF0F0F0F0F0F0F0F0 ^ 0x3030303030303030); m != 0 {
			if j := i + bits.TrailingZeros64(m)/8; j > i && (b[j] == ',' || b[j] == '}') {
				return j
			}
		}
	}
	return -1
}

// numberEnd ends a fastjson number starting at b[i], or returns -1. It
// steps over a run of digits, the usual number, eight bytes at a time.
func numberEnd(b []byte, i int) int {
	const (
		highNibbles = 0xF0F0F0F0F0F0F0F0
		threes      = 0x3030303030303030
		sixes       = 0x0606060606060606
	)
	j := i
	for ; j+8 <= len(b); j += 8 {
		v := binary.LittleEndian.Uint64(b[j:])
		// A byte of m is not zero where v's is no digit (0x30-0x39: high
		// nibble 3, and still 3 after adding 6). A byte of 0xFA or more
		// carries into the one above, but is flagged itself: the lowest
		// flagged byte is exact.
		if m := (v&highNibbles ^ threes) | ((v+sixes)&highNibbles ^ threes); m != 0 {
			j += bits.TrailingZeros64(m) / 8
			break
		}
	}
	// Digits, signs, dots and exponents: bits of a mask for the bytes
	// below 64, e and E apart.
	const numeric = 1<<'+' | 1<<'-' | 1<<'.' | 1<<'0' | 1<<'1' | 1<<'2' | 1<<'3' | 1<<'4' | 1<<'5' | 1<<'6' | 1<<'7' | 1<<'8' | 1<<'9'
	for j < len(b) {
		c := b[j]
		if c < 64 && numeric>>c&1 != 0 || c == 'e' || c == 'E' {
			j++
			continue
		}
		if j == i || j == i+1 && (b[i] == '-' || b[i] == '+') {
			if len(b)-j >= 3 && (bytes.EqualFold(b[j:j+3], []byte("inf")) || bytes.EqualFold(b[j:j+3], []byte("nan"))) {
				return j + 3
			}
			return -1
		}
		return j
	}
	return j
}
