package request

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestParseBody(t *testing.T) {
	tests := []struct {
		name    string
		body    string
		want    BodyFields
		wantErr error
	}{
		{"model and stream", `{"model":"llama-3","stream":true}`, BodyFields{Model: "llama-3", HasModel: true, Stream: true, HasStream: true}, nil},
		{"stream false", `{"model":"m","stream":false}`, BodyFields{Model: "m", HasModel: true, HasStream: true}, nil},
		{"stream not a bool", `{"model":"m","stream":"true"}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"stream number", `{"model":"m","stream":1}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"stream null", `{"stream":null}`, BodyFields{}, nil},
		{"stream object", `{"stream":{"x":true}}`, BodyFields{}, nil},
		{"stream first", `{"stream":true,"messages":[],"model":"m"}`, BodyFields{Model: "m", HasModel: true, Stream: true, HasStream: true}, nil},
		{"whitespace", " \t\r\n{ \n\"model\" \t:\r\n \"m\" ,\n \"stream\" : true \n}\n ", BodyFields{Model: "m", HasModel: true, Stream: true, HasStream: true}, nil},
		{"stream then brace", `{"stream":true}`, BodyFields{Stream: true, HasStream: true}, nil},
		{"empty model", `{"model":""}`, BodyFields{HasModel: true}, nil},
		{"escaped key", `{"mo\u0064el":"m","str\u0065am":true}`, BodyFields{Model: "m", HasModel: true, Stream: true, HasStream: true}, nil},
		{"escaped value", `{"model":"a\"b\\c\u00e9\n"}`, BodyFields{Model: "a\"b\\c\u00e9\n", HasModel: true}, nil},
		{"unicode value", `{"model":"模型-7b"}`, BodyFields{Model: "模型-7b", HasModel: true}, nil},
		{"invalid utf-8", "{\"model\":\"caf\xe9\"}", BodyFields{Model: "caf\ufffd", HasModel: true}, nil},
		{"invalid utf-8 escaped", "{\"model\":\"\\u0063af\xe9\"}", BodyFields{Model: "caf\ufffd", HasModel: true}, nil},
		{"key case matters", `{"Model":"m","STREAM":true}`, BodyFields{}, nil},
		{"key with escaped quote", `{"mod\"el":"x","model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"last duplicate wins", `{"model":"a","model":"b","stream":true,"stream":false}`, BodyFields{Model: "b", HasModel: true, HasStream: true}, nil},
		{"last duplicate wins, not a bool", `{"stream":true,"stream":null}`, BodyFields{}, nil},
		{"absent", `{"messages":[{"role":"user","content":"hi"}]}`, BodyFields{}, nil},
		{"empty object", `{}`, BodyFields{}, nil},
		{"nested model ignored", `{"messages":[{"model":"inner","stream":true}],"metadata":{"model":"meta"}}`, BodyFields{}, nil},
		{"nested then top", `{"a":{"model":"inner","b":[{"model":"x"}]},"model":"top"}`, BodyFields{Model: "top", HasModel: true}, nil},
		{"brackets in strings", `{"a":"}]{[\"","model":"m","b":["]}"]}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"model-like value", `{"prompt":"\"model\":\"fake\"","model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"numbers and literals", `{"n":-1.5e+3,"t":true,"f":false,"z":null,"model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},

		{"model number", `{"model":7}`, BodyFields{}, ErrModelNotText},
		{"model null", `{"model":null}`, BodyFields{}, ErrModelNotText},
		{"model array", `{"model":["m"]}`, BodyFields{}, ErrModelNotText},
		{"model object", `{"model":{"id":"m"}}`, BodyFields{}, ErrModelNotText},
		{"model bool", `{"model":true}`, BodyFields{}, ErrModelNotText},

		{"array", `[{"model":"m"}]`, BodyFields{}, ErrNotObject},
		{"string", `"model"`, BodyFields{}, ErrNotObject},
		{"number", ` 42 `, BodyFields{}, ErrNotObject},
		{"null", `null`, BodyFields{}, ErrNotObject},

		{"empty", ``, BodyFields{}, ErrMalformedJSON},
		{"blank", " \n", BodyFields{}, ErrMalformedJSON},
		{"truncated", `{"model":"m"`, BodyFields{}, ErrMalformedJSON},
		{"trailing comma", `{"model":"m",}`, BodyFields{}, ErrMalformedJSON},
		{"trailing garbage", `{"model":"m"} x`, BodyFields{}, ErrMalformedJSON},
		{"two objects", `{}{}`, BodyFields{}, ErrMalformedJSON},
		{"single quotes", `{'model':'m'}`, BodyFields{}, ErrMalformedJSON},
		{"unquoted key", `{model:"m"}`, BodyFields{}, ErrMalformedJSON},
		{"bad escape", `{"model":"\x"}`, BodyFields{}, ErrMalformedJSON},
		{"control char", "{\"model\":\"a\x01\"}", BodyFields{}, ErrMalformedJSON},
		{"bom", "\xef\xbb\xbf{}", BodyFields{}, ErrMalformedJSON},

		// Numbers.
		{"number leading zero", `{"n":01}`, BodyFields{}, ErrMalformedJSON},
		{"number trailing dot", `{"n":1.}`, BodyFields{}, ErrMalformedJSON},
		{"number lone minus", `{"n":-}`, BodyFields{}, ErrMalformedJSON},
		{"number minus then dot", `{"n":-.5}`, BodyFields{}, ErrMalformedJSON},
		{"number empty exponent", `{"n":1e}`, BodyFields{}, ErrMalformedJSON},
		{"number signed empty exponent", `{"n":1e+}`, BodyFields{}, ErrMalformedJSON},
		{"number leading dot", `{"n":.5}`, BodyFields{}, ErrMalformedJSON},
		{"number plus", `{"n":+1}`, BodyFields{}, ErrMalformedJSON},
		{"number hex", `{"n":0x1}`, BodyFields{}, ErrMalformedJSON},
		{"number at end", `1.`, BodyFields{}, ErrMalformedJSON},
		{"number minus at end", `-`, BodyFields{}, ErrMalformedJSON},
		{"numbers valid", `{"a":0,"b":-0,"c":10.25,"d":1E5,"e":-1e-07,"f":0.0e+0,"model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"top-level number", `-0.5e3`, BodyFields{}, ErrNotObject},
		{"huge numbers", `{"a":1e400,"stream":-1e999,"b":` + strings.Repeat("5", 400) + `,"model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"huge top-level number", strings.Repeat("5", 400), BodyFields{}, ErrNotObject},
		// Literals.
		{"literal truncated", `{"stream":tru}`, BodyFields{}, ErrMalformedJSON},
		{"literal trailing", `{"stream":truex}`, BodyFields{}, ErrMalformedJSON},
		{"literal case", `{"stream":True}`, BodyFields{}, ErrMalformedJSON},
		{"literal nul", `[nul]`, BodyFields{}, ErrMalformedJSON},
		{"literal at end", `fals`, BodyFields{}, ErrMalformedJSON},
		// Strings.
		{"escape x", `{"a":"\x41"}`, BodyFields{}, ErrMalformedJSON},
		{"escape short u", `{"a":"\u12"}`, BodyFields{}, ErrMalformedJSON},
		{"escape bad hex", `{"a":"\u12g4"}`, BodyFields{}, ErrMalformedJSON},
		{"escape at end", `{"a":"\`, BodyFields{}, ErrMalformedJSON},
		{"escape u at end", `{"a":"\u00`, BodyFields{}, ErrMalformedJSON},
		{"escape in key", `{"\q":1}`, BodyFields{}, ErrMalformedJSON},
		{"escapes valid", `{"a":"\"\\\/\b\f\n\r\t\u00aF","model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},
		{"raw newline", "{\"a\":\"x\ny\"}", BodyFields{}, ErrMalformedJSON},
		{"raw tab", "{\"a\":\"x\ty\"}", BodyFields{}, ErrMalformedJSON},
		{"raw nul", "{\"a\":\"\x00\"}", BodyFields{}, ErrMalformedJSON},
		{"raw 0x1f in key", "{\"\x1f\":1}", BodyFields{}, ErrMalformedJSON},
		{"raw del", "{\"model\":\"\x7f\"}", BodyFields{Model: "\x7f", HasModel: true}, nil},
		{"unterminated string", `{"model":"m`, BodyFields{}, ErrMalformedJSON},
		{"lone high surrogate", `{"model":"\ud800"}`, BodyFields{Model: "\ufffd", HasModel: true}, nil},
		{"lone low surrogate", `{"model":"\udc00x"}`, BodyFields{Model: "\ufffdx", HasModel: true}, nil},
		{"surrogate pair", `{"model":"\ud83d\ude00"}`, BodyFields{Model: "\U0001F600", HasModel: true}, nil},
		{"invalid utf-8 elsewhere", "{\"a\":\"\xff\xfe\",\"\xc0\":1,\"model\":\"m\"}", BodyFields{Model: "m", HasModel: true}, nil},
		// Structure.
		{"trailing garbage after array", `[1] 2`, BodyFields{}, ErrMalformedJSON},
		{"trailing garbage after string", `"a"b`, BodyFields{}, ErrMalformedJSON},
		{"trailing nul", "{}\x00", BodyFields{}, ErrMalformedJSON},
		{"trailing space", "{} \t\r\n", BodyFields{}, nil},
		{"non-json space", "{\f}", BodyFields{}, ErrMalformedJSON},
		{"non-json space before", "\v{}", BodyFields{}, ErrMalformedJSON},
		{"missing colon", `{"model" "m"}`, BodyFields{}, ErrMalformedJSON},
		{"missing value", `{"model":}`, BodyFields{}, ErrMalformedJSON},
		{"missing comma", `{"a":1 "model":"m"}`, BodyFields{}, ErrMalformedJSON},
		{"leading comma", `{,"model":"m"}`, BodyFields{}, ErrMalformedJSON},
		{"array trailing comma", `{"a":[1,]}`, BodyFields{}, ErrMalformedJSON},
		{"array leading comma", `{"a":[,1]}`, BodyFields{}, ErrMalformedJSON},
		{"mismatched close", `{"a":[1}}`, BodyFields{}, ErrMalformedJSON},
		{"mismatched close object", `{"a":{"b":1]}`, BodyFields{}, ErrMalformedJSON},
		{"nested key not string", `{"a":{1:2}}`, BodyFields{}, ErrMalformedJSON},
		{"unclosed nested", `{"a":[{"b":1}`, BodyFields{}, ErrMalformedJSON},
		{"lone open", `{`, BodyFields{}, ErrMalformedJSON},
		{"lone close", `}`, BodyFields{}, ErrMalformedJSON},
		{"unclosed top-level array", `[1,2`, BodyFields{}, ErrMalformedJSON},
		{"invalid after bad model", `{"model":1,"a":}`, BodyFields{}, ErrMalformedJSON},
		{"bad model then good", `{"model":1,"model":"m"}`, BodyFields{}, ErrModelNotText},
		{"good model then bad", `{"model":"m","model":false}`, BodyFields{}, ErrModelNotText},
		{"empty containers", `{"a":{},"b":[],"c":[{}, [ ] ,{ }],"model":"m"}`, BodyFields{Model: "m", HasModel: true}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseBody([]byte(tt.body))
			if tt.wantErr != nil {
				require.ErrorIs(t, err, tt.wantErr)
				return
			}
			require.NoError(t, err)
			require.Equal(t, tt.want, got)
		})
	}
}

func TestParseBodyDepth(t *testing.T) {
	nest := func(depth int, open, close, inner string) []byte {
		return []byte(strings.Repeat(open, depth-1) + inner + strings.Repeat(close, depth-1))
	}
	for _, tt := range []struct {
		name    string
		body    []byte
		wantErr error
	}{
		// The top-level object counts as one level, as in encoding/json.
		{"objects 10000", nest(maxDepth, `{"a":`, `}`, `{}`), nil},
		{"objects 10001", nest(maxDepth+1, `{"a":`, `}`, `{}`), ErrMalformedJSON},
		{"arrays 10000", []byte(`{"a":` + string(nest(maxDepth-1, `[`, `]`, `[]`)) + `,"model":"m"}`), nil},
		{"arrays 10001", []byte(`{"a":` + string(nest(maxDepth, `[`, `]`, `[]`)) + `,"model":"m"}`), ErrMalformedJSON},
		{"top-level arrays 10000", nest(maxDepth, `[`, `]`, `[]`), ErrNotObject},
		{"top-level arrays 10001", nest(maxDepth+1, `[`, `]`, `[]`), ErrMalformedJSON},
	} {
		t.Run(tt.name, func(t *testing.T) {
			require.Equal(t, tt.wantErr == nil || tt.wantErr == ErrNotObject, json.Valid(tt.body), "encoding/json disagrees with the test")
			_, err := ParseBody(tt.body)
			require.ErrorIs(t, err, tt.wantErr)
			if tt.wantErr == nil {
				require.NoError(t, err)
			}
		})
	}
	// Alternating arrays and objects around both sides of the limit.
	for _, depth := range []int{maxDepth - 1, maxDepth, maxDepth + 1, maxDepth + 2} {
		var b strings.Builder
		b.WriteString(`{"k":`)
		for d := 2; d <= depth; d++ {
			if d%2 == 0 {
				b.WriteString(`[1,`)
			} else {
				b.WriteString(`{"x":`)
			}
		}
		b.WriteString(`0`)
		for d := depth; d >= 2; d-- {
			if d%2 == 0 {
				b.WriteString(`]`)
			} else {
				b.WriteString(`}`)
			}
		}
		b.WriteString(`,"model":"m"}`)
		body := []byte(b.String())
		got, err := ParseBody(body)
		want, wantErr := oracle(body)
		require.Equal(t, wantErr, err, "depth %d", depth)
		require.Equal(t, want, got, "depth %d", depth)
		require.Equal(t, depth <= maxDepth, err == nil, "depth %d", depth)
	}
}

// TestParseBodyGrammar checks validity against encoding/json.Valid for
// every short value built from a set of fragments, inside a member value and
// at the top level.
func TestParseBodyGrammar(t *testing.T) {
	frags := []string{"", "0", "1", "9", "-", "+", ".", "e", "E", "x", "0.", "1.5", "01", "-0", "1e5", "1e+", "1E-2",
		"t", "true", "false", "null", "nul", "\"", "\"\"", "\"a\"", "\\", "\\u", "\\u00e9", "\\uD800", "\\/", "\\x",
		"\x01", "\x1f", "\x7f", "\xff", " ", "\t", "\n", "\r", "\f", "\v", ",", ":", "[", "]", "{", "}", "[]", "{}", "\"k\":"}
	check := func(body []byte) {
		t.Helper()
		_, err := ParseBody(body)
		if json.Valid(body) == (err == ErrMalformedJSON) {
			t.Fatalf("ParseBody(%q) = %v; json.Valid = %v", body, err, json.Valid(body))
		}
	}
	for _, a := range frags {
		for _, b := range frags {
			for _, c := range frags {
				v := a + b + c
				check([]byte(v))
				check([]byte(`{"a":` + v + `}`))
				check([]byte(`{"a":[` + v + `]}`))
				check([]byte(`{"a":"` + v + `"}`))
				check([]byte(`{"a":{` + v + `}}`))
			}
		}
	}
}

// TestParseBodyMutations compares ParseBody with the oracle on random
// single-byte edits of a realistic body.
func TestParseBodyMutations(t *testing.T) {
	base := []byte(chatBody(0))
	alphabet := []byte("{}[]\",:\\/0123456789.-+eEtfnulrsabu \t\n\r\x00\x1f\x7f\xff")
	rng := rand.New(rand.NewPCG(1, 2))
	body := make([]byte, len(base))
	for range 1000 {
		copy(body, base)
		for range 1 + rng.IntN(3) {
			body[rng.IntN(len(body))] = alphabet[rng.IntN(len(alphabet))]
		}
		got, err := ParseBody(body)
		want, wantErr := oracle(body)
		if err != wantErr || got != want {
			t.Fatalf("ParseBody(%q) = %#v, %v; want %#v, %v", body, got, err, want, wantErr)
		}
	}
}

// oracle parses body with encoding/json's tokenizer: the top-level keys are
// matched exactly (as the inference servers behind ai-lb do), the last
// duplicate wins, model must be a string, and stream is true only when its
// value is the literal true.
func oracle(body []byte) (BodyFields, error) {
	var f BodyFields
	if !json.Valid(body) {
		return f, ErrMalformedJSON
	}
	dec := json.NewDecoder(bytes.NewReader(body))
	dec.UseNumber() // numbers beyond float64 are valid JSON
	tok, err := dec.Token()
	if err != nil {
		panic(err) // valid JSON
	}
	if tok != json.Delim('{') {
		return f, ErrNotObject
	}
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			panic(err)
		}
		key := tok.(string)
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			panic(err)
		}
		switch key {
		case "model":
			var s string
			if raw[0] != '"' {
				return BodyFields{}, ErrModelNotText
			}
			if err := json.Unmarshal(raw, &s); err != nil {
				panic(err)
			}
			f.Model, f.HasModel = s, true
		case "stream":
			var v any
			if err := decodeNumbers(raw, &v); err != nil {
				panic(err)
			}
			f.Stream = v == true
			_, f.HasStream = v.(bool)
		}
	}
	return f, nil
}

// decodeNumbers is json.Unmarshal keeping numbers as json.Number, so that
// valid numbers beyond float64 (1e400) do not fail.
func decodeNumbers(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	return dec.Decode(v)
}

// FuzzParseBody checks ParseBody against encoding/json.
func FuzzParseBody(f *testing.F) {
	for _, seed := range []string{
		`{"model":"m","stream":true}`,
		`{"mo\u0064el":"m"}`,
		`{"messages":[{"model":"x"}],"model":"y","stream":false}`,
		`{"model":1}`,
		`{"model":null}`,
		`[]`,
		`"x"`,
		` {"a" : [1, {"b":"}"}] , "model" : "\"q\"" } `,
		`{"model":"a","model":"b"}`,
		`{"Model":"m"}`,
		`{"stream":true,"stream":1}`,
		`{"model":"café-7b"}`,
		`{`,
		``,
		chatBody(2),
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := ParseBody(body)
		want, wantErr := oracle(body)
		if wantErr != nil {
			if err != wantErr {
				t.Fatalf("ParseBody(%q) = %#v, %v; want error %v", body, got, err, wantErr)
			}
			return
		}
		if err != nil {
			t.Fatalf("ParseBody(%q) failed: %v; want %#v", body, err, want)
		}
		if got != want {
			t.Fatalf("ParseBody(%q) = %#v; want %#v", body, got, want)
		}

		// The same through a struct decode, where its case-insensitive
		// field matching cannot differ from an exact match.
		var s struct {
			Model  *string `json:"model"`
			Stream any     `json:"stream"`
		}
		if !foldsToField(body) {
			if err := decodeNumbers(body, &s); err != nil {
				t.Fatalf("ParseBody(%q) succeeded but encoding/json failed: %v", body, err)
			}
			if (s.Model != nil) != got.HasModel || (s.Model != nil && *s.Model != got.Model) || (s.Stream == true) != got.Stream {
				t.Fatalf("ParseBody(%q) = %#v; encoding/json decodes model %v, stream %v", body, got, s.Model, s.Stream)
			}
		}
	})
}

// foldsToField reports whether a top-level key of a valid JSON object
// matches "model" or "stream" case-insensitively but not exactly.
func foldsToField(body []byte) bool {
	var m map[string]json.RawMessage
	if json.Unmarshal(body, &m) != nil {
		return true
	}
	for k := range m {
		for _, name := range []string{"model", "stream"} {
			if k != name && strings.EqualFold(k, name) {
				return true
			}
		}
	}
	return false
}

// chatBody is a realistic chat completions request: a long system prompt,
// a dozen tools and a conversation, with model and stream at the end.
func chatBody(turns int) string {
	type fn struct {
		Name        string         `json:"name"`
		Description string         `json:"description"`
		Parameters  map[string]any `json:"parameters"`
	}
	type tool struct {
		Type     string `json:"type"`
		Function fn     `json:"function"`
	}
	var tools []tool
	for i := range 12 {
		tools = append(tools, tool{Type: "function", Function: fn{
			Name:        fmt.Sprintf("tool_%d", i),
			Description: strings.Repeat("Looks something up in an internal system and returns it as JSON. ", 8),
			Parameters: map[string]any{
				"type": "object",
				"properties": map[string]any{
					"query": map[string]any{"type": "string", "description": "what to look for"},
					"limit": map[string]any{"type": "integer", "minimum": 1, "maximum": 100},
					"model": map[string]any{"type": "string", "enum": []string{"fast", "slow"}},
				},
				"required": []string{"query"},
			},
		}})
	}
	messages := []map[string]any{{
		"role":    "system",
		"content": strings.Repeat("You are a careful assistant. Answer with \"quotes\", {braces} and [brackets] escaped. ", 200),
	}}
	for i := range turns {
		messages = append(messages,
			map[string]any{"role": "user", "content": fmt.Sprintf("Question %d: what is the status of ticket #%d? ", i, 1000+i) + strings.Repeat("Context line. ", 40)},
			map[string]any{"role": "assistant", "content": nil, "tool_calls": []map[string]any{{
				"id": fmt.Sprintf("call_%d", i), "type": "function",
				"function": map[string]any{"name": "tool_1", "arguments": `{"query":"ticket","model":"fast"}`},
			}}},
			map[string]any{"role": "tool", "tool_call_id": fmt.Sprintf("call_%d", i), "content": strings.Repeat(`{"status":"open"} `, 20)},
		)
	}
	body, err := json.Marshal(map[string]any{
		"messages":    messages,
		"tools":       tools,
		"temperature": 0.2,
		"z_model":     "llama-3.1-70b-instruct", // sorts after messages and tools
		"z_stream":    true,
	})
	if err != nil {
		panic(err)
	}
	// encoding/json sorts map keys; rename the last two to the real ones so
	// that ParseBody has to skip everything before them.
	body = bytes.Replace(body, []byte(`"z_model"`), []byte(`"model"`), 1)
	body = bytes.Replace(body, []byte(`"z_stream"`), []byte(`"stream"`), 1)
	return string(body)
}

func TestChatBody(t *testing.T) {
	body := []byte(chatBody(8))
	require.InDelta(t, 40<<10, len(body), 8<<10, "the benchmark body is about 40 KB")
	got, err := ParseBody(body)
	require.NoError(t, err)
	require.Equal(t, BodyFields{Model: "llama-3.1-70b-instruct", HasModel: true, Stream: true, HasStream: true}, got)
}

func BenchmarkParseBody(b *testing.B) {
	body := []byte(chatBody(8))
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		f, err := ParseBody(body)
		if err != nil || !f.Stream {
			b.Fatal(f, err)
		}
	}
}
