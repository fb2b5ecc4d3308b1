package simnode

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
)

// maxBody bounds request bodies; large enough for long-context benchmarks.
const maxBody = 64 << 20

var errBodyTooLarge = errors.New("request body too large")

type kind uint8

const (
	kindChat kind = iota
	kindCompletion
	kindEmbedding
)

// genRequest is the union of the request fields the simulator looks at for
// chat completions, completions and embeddings. Unknown fields are ignored,
// as real servers do.
type genRequest struct {
	Model         string `json:"model"`
	Stream        bool   `json:"stream"`
	StreamOptions *struct {
		IncludeUsage bool `json:"include_usage"`
	} `json:"stream_options"`
	MaxTokens           *int            `json:"max_tokens"`
	MaxCompletionTokens *int            `json:"max_completion_tokens"`
	Messages            []messageIn     `json:"messages"`
	Prompt              json.RawMessage `json:"prompt"`
	Tools               []toolIn        `json:"tools"`
	ToolChoice          json.RawMessage `json:"tool_choice"`
	Input               json.RawMessage `json:"input"`
	EncodingFormat      string          `json:"encoding_format"`
}

type messageIn struct {
	Role string `json:"role"`
	// Content is kept raw because it may be a string, an array of content
	// parts, or null (assistant messages carrying tool calls).
	Content json.RawMessage `json:"content"`
}

type toolIn struct {
	Type     string `json:"type"`
	Function struct {
		Name string `json:"name"`
	} `json:"function"`
}

type contentPart struct {
	Type string `json:"type"`
	Text string `json:"text"`
}

func isNull(raw json.RawMessage) bool {
	raw = bytes.TrimSpace(raw)
	return len(raw) == 0 || string(raw) == "null"
}

// contentLen checks that a message content is a string, an array of content
// parts or null, and returns its text length.
func contentLen(raw json.RawMessage) (int, error) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return 0, nil
	}
	switch raw[0] {
	case 'n':
		if string(raw) == "null" {
			return 0, nil
		}
	case '"':
		// The raw length slightly overestimates escaped text; close
		// enough for a token estimate and it avoids unquoting.
		return len(raw) - 2, nil
	case '[':
		var parts []contentPart
		if err := json.Unmarshal(raw, &parts); err != nil {
			return 0, errors.New("must be a string or an array of content parts")
		}
		n := 0
		for _, pt := range parts {
			if pt.Type == "text" {
				n += len(pt.Text)
			} else {
				n += 256 // images, audio, files: a fixed token-ish cost
			}
		}
		return n, nil
	}
	return 0, errors.New("must be a string or an array of content parts")
}

// parseToolChoice interprets tool_choice: "none" disables tools, an object
// {"type":"function","function":{"name":...}} names the tool to call;
// anything else ("auto", "required", absent) lets the first tool be called.
func parseToolChoice(raw json.RawMessage) (none bool, name string) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return false, ""
	}
	switch raw[0] {
	case '"':
		var s string
		_ = json.Unmarshal(raw, &s)
		return s == "none", ""
	case '{':
		var tc struct {
			Function struct {
				Name string `json:"name"`
			} `json:"function"`
		}
		_ = json.Unmarshal(raw, &tc)
		return false, tc.Function.Name
	}
	return false, ""
}

// embeddingInputs splits an embeddings input into its items: a string, an
// array of strings, a token array (one item) or an array of token arrays.
func embeddingInputs(raw json.RawMessage) ([][]byte, error) {
	raw = bytes.TrimSpace(raw)
	if isNull(raw) {
		return nil, errors.New("is required")
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return [][]byte{[]byte(s)}, nil
	}
	var arr []json.RawMessage
	if err := json.Unmarshal(raw, &arr); err != nil {
		return nil, errors.New("must be a string or an array")
	}
	if len(arr) == 0 {
		return nil, errors.New("must not be empty")
	}
	if c := arr[0][0]; c == '-' || (c >= '0' && c <= '9') {
		return [][]byte{raw}, nil // a single token array
	}
	out := make([][]byte, len(arr))
	for i, item := range arr {
		if json.Unmarshal(item, &s) == nil {
			out[i] = []byte(s)
		} else {
			out[i] = item
		}
	}
	return out, nil
}

// readBody reads the whole body into b, reusing its capacity.
func readBody(body io.Reader, b []byte) ([]byte, error) {
	for {
		if len(b) == cap(b) {
			if len(b) >= maxBody {
				return b, errBodyTooLarge
			}
			b = append(b, 0)[:len(b)] // let append pick the growth
		}
		m, err := body.Read(b[len(b):cap(b)])
		b = b[:len(b)+m]
		if err == io.EOF {
			return b, nil
		}
		if err != nil {
			return b, err
		}
	}
}
