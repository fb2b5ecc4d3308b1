package selection

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
}

// Errors of ParseBody, phrased for clients.
var (
	ErrMalformedJSON = errors.New("the request body is not valid JSON")
	ErrNotObject     = errors.New("the request body must be a JSON object")
	ErrModelNotText  = errors.New("'model' must be a string")
)

// ParseBody validates a JSON request body and reads its top-level "model"
// and "stream" without decoding the rest of the document.
func ParseBody(body []byte) (BodyFields, error) {
	var f BodyFields
	if !json.Valid(body) {
		return f, ErrMalformedJSON
	}
	i := skipSpace(body, 0)
	if body[i] != '{' {
		return f, ErrNotObject
	}
	i++
	for {
		i = skipSpace(body, i)
		if body[i] == '}' {
			return f, nil
		}
		if body[i] == ',' {
			i = skipSpace(body, i+1)
		}
		keyEnd := skipString(body, i)
		key := body[i:keyEnd]
		i = skipSpace(body, keyEnd)
		i = skipSpace(body, i+1) // the colon
		valEnd := skipValue(body, i)
		val := body[i:valEnd]
		switch {
		case isKey(key, "model"):
			if val[0] != '"' {
				return f, ErrModelNotText
			}
			f.Model, f.HasModel = unquote(val), true
		case isKey(key, "stream"):
			f.Stream = bytes.Equal(val, []byte("true"))
		}
		i = valEnd
	}
}

// isKey compares a raw JSON string token with name, escapes included.
func isKey(raw []byte, name string) bool {
	if len(raw) == len(name)+2 && string(raw[1:len(raw)-1]) == name {
		return true
	}
	return bytes.IndexByte(raw, '\\') >= 0 && unquote(raw) == name
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

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index after the string token starting at i.
func skipString(b []byte, i int) int {
	for i++; i < len(b); i++ {
		switch b[i] {
		case '\\':
			i++
		case '"':
			return i + 1
		}
	}
	return i
}

// skipValue returns the index after the (valid) JSON value starting at i.
func skipValue(b []byte, i int) int {
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for ; i < len(b); i++ {
			switch b[i] {
			case '"':
				i = skipString(b, i) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return i + 1
				}
			}
		}
		return i
	default: // number or literal
		for i < len(b) && b[i] != ',' && b[i] != '}' && b[i] != ']' && b[i] != ' ' &&
			b[i] != '\n' && b[i] != '\t' && b[i] != '\r' {
			i++
		}
		return i
	}
}
