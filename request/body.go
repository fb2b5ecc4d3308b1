package request

import (
	"bytes"
	"encoding/json"
	"errors"
	"unicode/utf8"
)

// BodyFields are the request-body fields routing needs.
type BodyFields struct {
	// Model is the top-level "model" string ("" when absent).
	Model string
	// HasModel reports whether "model" was present.
	HasModel bool
	// Stream is the top-level "stream" flag.
	Stream bool
	// HasStream reports whether "stream" was present as a boolean, so that
	// an API that streams by default (Ollama's) can tell an absent flag
	// from "stream":false.
	HasStream bool
}

// Errors of ParseBody, phrased for clients.
var (
	ErrMalformedJSON = errors.New("the request body is not valid JSON")
	ErrNotObject     = errors.New("the request body must be a JSON object")
	ErrModelNotText  = errors.New("'model' must be a string")
)

// maxDepth is encoding/json's maximum nesting depth: a document with
// maxDepth nested arrays and objects is valid, one more is not.
const maxDepth = 10000

// ParseBody validates a JSON request body and reads its top-level "model"
// and "stream" without decoding the rest of the document.
//
// It is a single pass that accepts exactly what encoding/json.Valid accepts
// (invalid UTF-8 inside strings included, as encoding/json does) while it
// picks the two fields out of the top-level object. Validation always runs
// to the end, so a malformed document is ErrMalformedJSON whatever else is
// wrong with it.
func ParseBody(body []byte) (BodyFields, error) {
	var f BodyFields
	var objects bitStack // on the stack: scanValue does not keep it
	i := skipSpace(body, 0)
	if i >= len(body) {
		return f, ErrMalformedJSON
	}
	if body[i] != '{' {
		end, ok := scanValue(body, i, 0, &objects)
		if !ok || skipSpace(body, end) != len(body) {
			return f, ErrMalformedJSON
		}
		return f, ErrNotObject
	}

	var modelErr error // the first non-string "model", reported once the document is known valid
	var modelVal []byte
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		i++
	} else {
		for {
			// key
			if i >= len(body) || body[i] != '"' {
				return BodyFields{}, ErrMalformedJSON
			}
			keyEnd, escaped, ok := scanString(body, i)
			if !ok {
				return BodyFields{}, ErrMalformedJSON
			}
			key := body[i:keyEnd]
			i = skipSpace(body, keyEnd)
			if i >= len(body) || body[i] != ':' {
				return BodyFields{}, ErrMalformedJSON
			}
			i = skipSpace(body, i+1)
			valEnd, ok := scanValue(body, i, 1, &objects)
			if !ok {
				return BodyFields{}, ErrMalformedJSON
			}
			if modelErr == nil {
				val := body[i:valEnd]
				switch {
				case keyIs(key, escaped, "model"):
					if val[0] != '"' {
						modelErr = ErrModelNotText
					} else {
						modelVal = val
					}
				case keyIs(key, escaped, "stream"):
					f.Stream = string(val) == "true"
					f.HasStream = f.Stream || string(val) == "false"
				}
			}
			i = skipSpace(body, valEnd)
			if i >= len(body) {
				return BodyFields{}, ErrMalformedJSON
			}
			if body[i] == '}' {
				i++
				break
			}
			if body[i] != ',' {
				return BodyFields{}, ErrMalformedJSON
			}
			i = skipSpace(body, i+1)
		}
	}
	if skipSpace(body, i) != len(body) {
		return BodyFields{}, ErrMalformedJSON
	}
	if modelErr != nil {
		return BodyFields{}, modelErr
	}
	if modelVal != nil {
		f.Model, f.HasModel = unquote(modelVal), true
	}
	return f, nil
}

// keyIs compares a raw JSON string token with name; escaped reports whether
// the token holds a backslash.
func keyIs(raw []byte, escaped bool, name string) bool {
	if !escaped {
		return len(raw) == len(name)+2 && string(raw[1:len(raw)-1]) == name
	}
	return unquote(raw) == name
}

// unquote decodes a valid JSON string token. Invalid UTF-8 becomes U+FFFD,
// as encoding/json decodes it, escapes or not.
func unquote(raw []byte) string {
	if bytes.IndexByte(raw, '\\') < 0 && utf8.Valid(raw) {
		return string(raw[1 : len(raw)-1])
	}
	var s string
	_ = json.Unmarshal(raw, &s) // valid JSON: cannot fail
	return s
}

// Byte classes.
const (
	clsPlain = 1 << iota // a string byte that needs no attention: not '"', '\\' or < 0x20
	clsSpace             // JSON whitespace
	clsHex               // a hexadecimal digit
)

var class = func() (t [256]uint8) {
	for c := 0x20; c < 256; c++ {
		if c != '"' && c != '\\' {
			t[c] |= clsPlain
		}
	}
	for _, c := range []byte{' ', '\t', '\n', '\r'} {
		t[c] |= clsSpace
	}
	for _, c := range []byte("0123456789abcdefABCDEF") {
		t[c] |= clsHex
	}
	return t
}()

func skipSpace(b []byte, i int) int {
	for i < len(b) && class[b[i]]&clsSpace != 0 {
		i++
	}
	return i
}

// scanString validates the string token starting with the quote at b[i].
// It returns the index after the closing quote and whether the token holds
// an escape.
func scanString(b []byte, i int) (end int, escaped, ok bool) {
	i++
	for {
		// Skip ordinary bytes, four at a time while there is room.
		for i+4 <= len(b) {
			if class[b[i]]&class[b[i+1]]&class[b[i+2]]&class[b[i+3]]&clsPlain == 0 {
				break
			}
			i += 4
		}
		for i < len(b) && class[b[i]]&clsPlain != 0 {
			i++
		}
		if i >= len(b) {
			return i, escaped, false
		}
		switch b[i] {
		case '"':
			return i + 1, escaped, true
		case '\\':
			escaped = true
			i++
			if i >= len(b) {
				return i, escaped, false
			}
			switch b[i] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i++
			case 'u':
				if i+5 > len(b) ||
					class[b[i+1]]&class[b[i+2]]&class[b[i+3]]&class[b[i+4]]&clsHex == 0 {
					return i, escaped, false
				}
				i += 5
			default:
				return i, escaped, false
			}
		default: // a control character
			return i, escaped, false
		}
	}
}

// scanNumber validates the number starting at b[i] (a '-' or a digit) and
// returns the index after it. What follows is checked by the caller.
func scanNumber(b []byte, i int) (int, bool) {
	if b[i] == '-' {
		i++
		if i >= len(b) {
			return i, false
		}
	}
	switch {
	case b[i] == '0':
		i++
	case '1' <= b[i] && b[i] <= '9':
		i++
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	default:
		return i, false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return i, false
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return i, false
		}
		for i < len(b) && '0' <= b[i] && b[i] <= '9' {
			i++
		}
	}
	return i, true
}

// bitStack records, for each open container depth, whether it is an object.
type bitStack [maxDepth/64 + 1]uint64

// scanValue validates the JSON value starting at b[i] (no leading space),
// nested depth containers deep, and returns the index after it. It is
// iterative: open containers are kept in a bit stack (1 for an object).
func scanValue(b []byte, i int, depth int, objects *bitStack) (int, bool) {
	base := depth
	for {
		// A value is expected at b[i].
		if i >= len(b) {
			return i, false
		}
		var ok bool
		switch c := b[i]; c {
		case '"':
			i, _, ok = scanString(b, i)
			if !ok {
				return i, false
			}
		case '{', '[':
			depth++
			if depth > maxDepth {
				return i, false
			}
			w, bit := uint(depth)/64, uint64(1)<<(uint(depth)%64)
			i = skipSpace(b, i+1)
			if i >= len(b) {
				return i, false
			}
			if c == '[' {
				objects[w] &^= bit
				if b[i] == ']' {
					i++
					depth--
					break
				}
				continue // the first element
			}
			objects[w] |= bit
			if b[i] == '}' {
				i++
				depth--
				break
			}
			if i, ok = scanKey(b, i); !ok {
				return i, false
			}
			continue // the first member's value
		case '-', '0', '1', '2', '3', '4', '5', '6', '7', '8', '9':
			if i, ok = scanNumber(b, i); !ok {
				return i, false
			}
		case 't':
			if len(b)-i < 4 || string(b[i:i+4]) != "true" {
				return i, false
			}
			i += 4
		case 'f':
			if len(b)-i < 5 || string(b[i:i+5]) != "false" {
				return i, false
			}
			i += 5
		case 'n':
			if len(b)-i < 4 || string(b[i:i+4]) != "null" {
				return i, false
			}
			i += 4
		default:
			return i, false
		}

		// A value ended at b[i]: close containers until one continues.
		for {
			if depth == base {
				return i, true
			}
			i = skipSpace(b, i)
			if i >= len(b) {
				return i, false
			}
			inObject := objects[uint(depth)/64]&(uint64(1)<<(uint(depth)%64)) != 0
			c := b[i]
			if c == ',' {
				i = skipSpace(b, i+1)
				if inObject {
					if i, ok = scanKey(b, i); !ok {
						return i, false
					}
				}
				break
			}
			if inObject && c == '}' || !inObject && c == ']' {
				i++
				depth--
				continue
			}
			return i, false
		}
	}
}

// scanKey validates `"key" :` at b[i] and returns the index of the value
// after it, spaces skipped.
func scanKey(b []byte, i int) (int, bool) {
	if i >= len(b) || b[i] != '"' {
		return i, false
	}
	i, _, ok := scanString(b, i)
	if !ok {
		return i, false
	}
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != ':' {
		return i, false
	}
	return skipSpace(b, i+1), true
}
