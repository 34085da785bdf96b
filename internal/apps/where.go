package apps

import (
	"fmt"
	"math"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"
)

// A where filter is a small boolean language over a record's fields:
//
//	status >= 500 and (method == "GET" or method == 'HEAD') and not bot
//
// Comparisons are ==, != (or =, <>), <, <=, >, >= between a field and a
// literal (a number or a quoted string) or another field. Two numbers
// compare as numbers, anything else (NaN too) as strings. A comparison
// with a missing field is false. A field alone is true when present and
// not "", "0" or "false". Keywords: and, or, not, case-insensitive.

type expr interface {
	eval(r *Record) bool
	fields(acc []string) []string
	// bind returns the expression reading its fields from records laid
	// out as r is (by index in the record), not by name: an extractor
	// binds its app's filter once per record it reads, not per line.
	bind(r *Record) expr
}

type (
	andExpr struct{ l, r expr }
	orExpr  struct{ l, r expr }
	notExpr struct{ e expr }
	cmpExpr struct {
		op   string
		l, r operand
	}
	truthExpr struct{ f operand }
)

// operand is a field or a literal.
type operand struct {
	field string // "" for a literal
	lit   Value
	// bound: the field is at index at of the records (bind); else it is
	// found by name.
	bound bool
	at    int
}

// WhereForm is the app's where filter as parsed ("" without one): the
// same for every way of writing the same filter (white space, quotes,
// = or ==, <> or !=, the case of keywords, parentheses), so that a
// filter written otherwise is not taken for another one.
func (a *App) WhereForm() string { return a.whereForm }

// whereForm prints e fully parenthesized.
func whereForm(e expr) string {
	switch e := e.(type) {
	case andExpr:
		return "(" + whereForm(e.l) + " and " + whereForm(e.r) + ")"
	case orExpr:
		return "(" + whereForm(e.l) + " or " + whereForm(e.r) + ")"
	case notExpr:
		return "(not " + whereForm(e.e) + ")"
	case cmpExpr:
		return "(" + e.l.form() + " " + e.op + " " + e.r.form() + ")"
	case truthExpr:
		return e.f.form()
	}
	panic(fmt.Sprintf("where: no form for %T", e))
}

// form is a field's name, a number's text or a string quoted.
func (o operand) form() string {
	switch {
	case o.field != "":
		return o.field
	case o.lit.IsNum:
		return o.lit.Str
	}
	return strconv.Quote(o.lit.Str)
}

func (e andExpr) eval(r *Record) bool { return e.l.eval(r) && e.r.eval(r) }
func (e orExpr) eval(r *Record) bool  { return e.l.eval(r) || e.r.eval(r) }
func (e notExpr) eval(r *Record) bool { return !e.e.eval(r) }

func (e truthExpr) eval(r *Record) bool {
	v, ok := e.f.value(r)
	if !ok {
		return false
	}
	if v.IsNum {
		return v.Num != 0
	}
	return v.Str != "" && v.Str != "0" && !strings.EqualFold(v.Str, "false")
}

func (o operand) value(r *Record) (Value, bool) {
	switch {
	case o.field == "":
		return o.lit, true
	case o.bound:
		return r.at(o.at)
	}
	return r.Get(o.field)
}

func (o operand) bind(r *Record) operand {
	if o.field != "" {
		o.bound, o.at = true, r.index(o.field)
	}
	return o
}

func (e andExpr) bind(r *Record) expr   { return andExpr{e.l.bind(r), e.r.bind(r)} }
func (e orExpr) bind(r *Record) expr    { return orExpr{e.l.bind(r), e.r.bind(r)} }
func (e notExpr) bind(r *Record) expr   { return notExpr{e.e.bind(r)} }
func (e truthExpr) bind(r *Record) expr { return truthExpr{e.f.bind(r)} }
func (e cmpExpr) bind(r *Record) expr   { return cmpExpr{op: e.op, l: e.l.bind(r), r: e.r.bind(r)} }

func (e cmpExpr) eval(r *Record) bool {
	a, ok1 := e.l.value(r)
	b, ok2 := e.r.value(r)
	if !ok1 || !ok2 {
		return false
	}
	var c int
	an, aok := a.Number()
	bn, bok := b.Number()
	// NaN is no number to order by: compared as one, it would equal every
	// number ("NaN" >= 500 and "NaN" < 500 both true).
	if aok && bok && !math.IsNaN(an) && !math.IsNaN(bn) {
		switch {
		case an < bn:
			c = -1
		case an > bn:
			c = 1
		}
	} else {
		c = strings.Compare(a.String(), b.String())
	}
	switch e.op {
	case "==":
		return c == 0
	case "!=":
		return c != 0
	case "<":
		return c < 0
	case "<=":
		return c <= 0
	case ">":
		return c > 0
	default: // ">="
		return c >= 0
	}
}

func (e andExpr) fields(acc []string) []string   { return e.r.fields(e.l.fields(acc)) }
func (e orExpr) fields(acc []string) []string    { return e.r.fields(e.l.fields(acc)) }
func (e notExpr) fields(acc []string) []string   { return e.e.fields(acc) }
func (e truthExpr) fields(acc []string) []string { return append(acc, e.f.field) }
func (e cmpExpr) fields(acc []string) []string {
	for _, o := range []operand{e.l, e.r} {
		if o.field != "" {
			acc = append(acc, o.field)
		}
	}
	return acc
}

type token struct {
	kind string // "ident", "num", "str", "op", "(", ")", "eof"
	text string
	pos  int // 1-based column in the expression
}

// whereError is an error at a column of a where expression, which a
// configuration file's error places on the file's line (config.FieldError).
type whereError struct {
	col int // 1-based byte column in the expression
	msg string
}

func (e *whereError) Error() string { return fmt.Sprintf("column %d: %s", e.col, e.msg) }

func whereErrorf(col int, format string, args ...any) error {
	return &whereError{col: col, msg: fmt.Sprintf(format, args...)}
}

// lex reads s by runes (a byte of a multi-byte character is not a
// letter or a space of its own).
func lex(s string) ([]token, error) {
	var toks []token
	i := 0
	for i < len(s) {
		c, size := utf8.DecodeRuneInString(s[i:])
		start := i
		switch {
		case c == utf8.RuneError && size == 1:
			return nil, whereErrorf(start+1, "invalid UTF-8")
		case unicode.IsSpace(c):
			i += size
			continue
		case c == '(' || c == ')':
			toks = append(toks, token{string(c), string(c), start + 1})
			i++
		case c == '"' || c == '\'':
			j := i + 1
			var b strings.Builder
			for j < len(s) && rune(s[j]) != c {
				if s[j] == '\\' && j+1 < len(s) {
					j++
				}
				b.WriteByte(s[j])
				j++
			}
			if j >= len(s) {
				return nil, whereErrorf(start+1, "unterminated string")
			}
			toks = append(toks, token{"str", b.String(), start + 1})
			i = j + 1
		case strings.ContainsRune("=!<>", c):
			op := string(c)
			if i+1 < len(s) && strings.ContainsRune("=>", rune(s[i+1])) {
				op += string(s[i+1])
			}
			switch op {
			case "=", "==":
				op = "=="
			case "!=", "<>":
				op = "!="
			case "<", "<=", ">", ">=":
			default:
				return nil, whereErrorf(start+1, "unknown operator %q", op)
			}
			i += len(opText(s[i:]))
			toks = append(toks, token{"op", op, start + 1})
		case c == '-' || c == '.' || isDigit(s[i]):
			j := i + 1
			for j < len(s) && (isDigit(s[j]) || strings.ContainsRune(".eE+-", rune(s[j]))) {
				if (s[j] == '+' || s[j] == '-') && s[j-1] != 'e' && s[j-1] != 'E' {
					break
				}
				j++
			}
			if _, err := strconv.ParseFloat(s[i:j], 64); err != nil {
				return nil, whereErrorf(start+1, "bad number %q", s[i:j])
			}
			toks = append(toks, token{"num", s[i:j], start + 1})
			i = j
		case c == '_' || unicode.IsLetter(c):
			j := i + size
			for j < len(s) {
				r, n := utf8.DecodeRuneInString(s[j:])
				if r != '_' && r != '.' && r != '-' && !unicode.IsLetter(r) && !unicode.IsDigit(r) {
					break
				}
				j += n
			}
			toks = append(toks, token{"ident", s[i:j], start + 1})
			i = j
		default:
			return nil, whereErrorf(start+1, "unexpected %q", c)
		}
	}
	return append(toks, token{"eof", "", len(s) + 1}), nil
}

func isDigit(b byte) bool { return b >= '0' && b <= '9' }

// opText returns the operator at the start of s as written ("=", "==", "<>", ...).
func opText(s string) string {
	if len(s) >= 2 && strings.ContainsRune("=>", rune(s[1])) {
		return s[:2]
	}
	return s[:1]
}

type whereParser struct {
	toks []token
	i    int
}

func parseWhere(s string) (expr, error) {
	toks, err := lex(s)
	if err != nil {
		return nil, err
	}
	p := &whereParser{toks: toks}
	e, err := p.or()
	if err != nil {
		return nil, err
	}
	if t := p.peek(); t.kind != "eof" {
		return nil, whereErrorf(t.pos, "unexpected %q", t.text)
	}
	return e, nil
}

func (p *whereParser) peek() token { return p.toks[p.i] }
func (p *whereParser) next() token { t := p.toks[p.i]; p.i++; return t }

func (p *whereParser) keyword(k string) bool {
	t := p.peek()
	if t.kind == "ident" && strings.EqualFold(t.text, k) {
		p.i++
		return true
	}
	return false
}

func (p *whereParser) or() (expr, error) {
	l, err := p.and()
	if err != nil {
		return nil, err
	}
	for p.keyword("or") {
		r, err := p.and()
		if err != nil {
			return nil, err
		}
		l = orExpr{l, r}
	}
	return l, nil
}

func (p *whereParser) and() (expr, error) {
	l, err := p.not()
	if err != nil {
		return nil, err
	}
	for p.keyword("and") {
		r, err := p.not()
		if err != nil {
			return nil, err
		}
		l = andExpr{l, r}
	}
	return l, nil
}

func (p *whereParser) not() (expr, error) {
	if p.keyword("not") {
		e, err := p.not()
		if err != nil {
			return nil, err
		}
		return notExpr{e}, nil
	}
	return p.primary()
}

func (p *whereParser) primary() (expr, error) {
	if p.peek().kind == "(" {
		p.next()
		e, err := p.or()
		if err != nil {
			return nil, err
		}
		if t := p.next(); t.kind != ")" {
			return nil, whereErrorf(t.pos, "expected ')'")
		}
		return e, nil
	}
	l, err := p.operand()
	if err != nil {
		return nil, err
	}
	if p.peek().kind != "op" {
		if l.field == "" {
			return nil, whereErrorf(p.peek().pos, "expected a comparison after a literal")
		}
		return truthExpr{operand{field: l.field}}, nil
	}
	op := p.next().text
	r, err := p.operand()
	if err != nil {
		return nil, err
	}
	return cmpExpr{op: op, l: l, r: r}, nil
}

func (p *whereParser) operand() (operand, error) {
	t := p.next()
	switch t.kind {
	case "ident":
		for _, k := range []string{"and", "or", "not"} {
			if strings.EqualFold(t.text, k) {
				return operand{}, whereErrorf(t.pos, "expected a field or a value, found %q", t.text)
			}
		}
		return operand{field: t.text}, nil
	case "num":
		n, _ := strconv.ParseFloat(t.text, 64)
		return operand{lit: Value{Str: t.text, Num: n, IsNum: true}}, nil
	case "str":
		return operand{lit: Value{Str: t.text}}, nil
	case "eof":
		return operand{}, whereErrorf(t.pos, "expression ends too early")
	default:
		return operand{}, whereErrorf(t.pos, "expected a field or a value, found %q", t.text)
	}
}
