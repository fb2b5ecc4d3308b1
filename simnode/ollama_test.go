package simnode

import (
	"bufio"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

// ollamaRecord is what the tests read of an Ollama answer record.
type ollamaRecord struct {
	Model   string `json:"model"`
	Message *struct {
		Role      string `json:"role"`
		Content   string `json:"content"`
		Thinking  string `json:"thinking"`
		ToolCalls []struct {
			ID       string `json:"id"`
			Function struct {
				Name      string         `json:"name"`
				Arguments map[string]any `json:"arguments"`
			} `json:"function"`
		} `json:"tool_calls"`
	} `json:"message"`
	Response        *string `json:"response"`
	Done            bool    `json:"done"`
	DoneReason      string  `json:"done_reason"`
	PromptEvalCount int     `json:"prompt_eval_count"`
	EvalCount       int     `json:"eval_count"`
	TotalDuration   int64   `json:"total_duration"`
	Error           string  `json:"error"`
}

// readRecords reads an NDJSON answer.
func readRecords(t *testing.T, resp *http.Response) []ollamaRecord {
	t.Helper()
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/x-ndjson", resp.Header.Get("Content-Type"))
	var out []ollamaRecord
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		var rec ollamaRecord
		require.NoError(t, json.Unmarshal(sc.Bytes(), &rec), sc.Text())
		out = append(out, rec)
	}
	require.NoError(t, sc.Err())
	return out
}

// decodeAnswer checks an answer's status and decodes its JSON body.
func decodeAnswer(t *testing.T, resp *http.Response, status int, v any) {
	t.Helper()
	defer resp.Body.Close()
	require.Equal(t, status, resp.StatusCode)
	require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
}

// ollamaError checks an Ollama error answer and returns its message.
func ollamaError(t *testing.T, resp *http.Response, status int) string {
	t.Helper()
	var e map[string]string
	decodeAnswer(t, resp, status, &e)
	require.Len(t, e, 1)
	return e["error"]
}

func getAnswer(t *testing.T, url string, v any) {
	t.Helper()
	resp, err := http.Get(url)
	require.NoError(t, err)
	decodeAnswer(t, resp, http.StatusOK, v)
}

func ollamaConfig() Config {
	c := fast("o1")
	c.Models = []string{"llama3.2:latest", "qwen3", "nomic-embed-text:latest"}
	return c
}

func TestOllamaChatStream(t *testing.T) {
	n, srv := startNode(t, ollamaConfig())
	// No "stream": Ollama streams by default. No tag: ":latest".
	resp := post(t, t.Context(), srv.URL+"/api/chat", `{"model":"llama3.2","messages":[{"role":"user","content":"hi there"}]}`)
	require.Equal(t, "o1", resp.Header.Get("X-Sim-Node"))
	recs := readRecords(t, resp)
	require.Len(t, recs, 5, "four tokens and the final record")
	var text strings.Builder
	for i, r := range recs[:4] {
		require.Equal(t, "llama3.2", r.Model, "the model as requested")
		require.False(t, r.Done)
		require.Equal(t, "assistant", r.Message.Role)
		require.Equal(t, TokenText("o1", i), r.Message.Content)
		text.WriteString(r.Message.Content)
	}
	require.Equal(t, Text("o1", 4), text.String())
	last := recs[4]
	require.True(t, last.Done)
	require.Equal(t, "stop", last.DoneReason)
	require.Empty(t, last.Message.Content)
	require.Equal(t, 4, last.EvalCount)
	require.Equal(t, 2, last.PromptEvalCount)
	require.Positive(t, last.TotalDuration)

	s := n.Stats()
	require.EqualValues(t, 1, s.Received)
	require.EqualValues(t, 1, s.Completed)
	r := n.Requests()[0]
	require.Equal(t, "/api/chat", r.Path)
	require.Equal(t, "llama3.2:latest", r.Model)
	require.True(t, r.Stream)
}

func TestOllamaChatToolsThinkAndLimits(t *testing.T) {
	_, srv := startNode(t, ollamaConfig())
	// OpenClaw's body: tools, options, think, keep_alive, truncate, shift.
	body := `{"model":"qwen3:latest","messages":[{"role":"system","content":"be brief"},{"role":"user","content":"list files"}],
		"stream":true,"tools":[{"type":"function","function":{"name":"list_dir","description":"d","parameters":{"type":"object"}}}],
		"options":{"temperature":0.7,"num_ctx":32768,"num_predict":512},"truncate":false,"shift":false,"keep_alive":"15m","think":"medium"}`
	recs := readRecords(t, post(t, t.Context(), srv.URL+"/api/chat", body))
	require.Len(t, recs, 3, "thinking, the tool call, the final record")
	require.Equal(t, ThinkingText("o1"), recs[0].Message.Thinking)
	require.Len(t, recs[1].Message.ToolCalls, 1)
	call := recs[1].Message.ToolCalls[0]
	require.Equal(t, "list_dir", call.Function.Name)
	require.Equal(t, map[string]any{"sim": true}, call.Function.Arguments, "arguments are an object in Ollama's API")
	require.Equal(t, "call_o1_1", call.ID)
	require.True(t, recs[2].Done)

	// A tool result turn answers with text; num_predict caps it.
	body = `{"model":"qwen3","messages":[{"role":"user","content":"x"},{"role":"tool","content":"{}","tool_name":"list_dir"}],
		"tools":[{"type":"function","function":{"name":"list_dir"}}],"options":{"num_predict":2},"think":false}`
	recs = readRecords(t, post(t, t.Context(), srv.URL+"/api/chat", body))
	require.Len(t, recs, 3)
	require.Equal(t, TokenText("o1", 0), recs[0].Message.Content)
	require.Equal(t, "length", recs[2].DoneReason)
	require.Equal(t, 2, recs[2].EvalCount)
}

func TestOllamaNotStreamed(t *testing.T) {
	_, srv := startNode(t, ollamaConfig())
	resp := post(t, t.Context(), srv.URL+"/api/chat", `{"model":"qwen3","stream":false,"think":true,"messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var out ollamaRecord
	decodeAnswer(t, resp, http.StatusOK, &out)
	require.True(t, out.Done)
	require.Equal(t, Text("o1", 4), out.Message.Content)
	require.Equal(t, ThinkingText("o1"), out.Message.Thinking)

	out = ollamaRecord{}
	decodeAnswer(t, post(t, t.Context(), srv.URL+"/api/generate", `{"model":"qwen3","stream":false,"prompt":"hi"}`), http.StatusOK, &out)
	require.Nil(t, out.Message)
	require.Equal(t, Text("o1", 4), *out.Response)
	require.Equal(t, "stop", out.DoneReason)
}

func TestOllamaGenerateStreamAndLoad(t *testing.T) {
	_, srv := startNode(t, ollamaConfig())
	recs := readRecords(t, post(t, t.Context(), srv.URL+"/api/generate", `{"model":"qwen3","prompt":"hi"}`))
	require.Len(t, recs, 5)
	require.Equal(t, TokenText("o1", 0), *recs[0].Response)
	require.True(t, recs[4].Done)
	require.Equal(t, "", *recs[4].Response)

	// No prompt: Ollama only loads the model.
	recs = readRecords(t, post(t, t.Context(), srv.URL+"/api/generate", `{"model":"qwen3"}`))
	require.Len(t, recs, 1)
	require.True(t, recs[0].Done)
	require.Equal(t, "load", recs[0].DoneReason)
}

func TestOllamaEmbed(t *testing.T) {
	_, srv := startNode(t, ollamaConfig())
	resp := post(t, t.Context(), srv.URL+"/api/embed", `{"model":"nomic-embed-text","input":["a","b"]}`)
	var out struct {
		Model           string      `json:"model"`
		Embeddings      [][]float32 `json:"embeddings"`
		PromptEvalCount int         `json:"prompt_eval_count"`
	}
	decodeAnswer(t, resp, http.StatusOK, &out)
	require.Equal(t, "nomic-embed-text", out.Model)
	require.Equal(t, [][]float32{Embed([]byte("a")), Embed([]byte("b"))}, out.Embeddings)

	var legacy struct {
		Embedding []float32 `json:"embedding"`
	}
	decodeAnswer(t, post(t, t.Context(), srv.URL+"/api/embeddings", `{"model":"nomic-embed-text:latest","prompt":"a"}`), http.StatusOK, &legacy)
	require.Equal(t, Embed([]byte("a")), legacy.Embedding)
}

func TestOllamaTagsShowPsVersion(t *testing.T) {
	n, srv := startNode(t, ollamaConfig())
	var tags struct {
		Models []struct {
			Name, Model, Digest string
			Size                int64
			Details             struct{ Format, Family string }
		}
	}
	getAnswer(t, srv.URL+"/api/tags", &tags)
	var names []string
	for _, m := range tags.Models {
		require.Equal(t, m.Name, m.Model)
		require.Len(t, m.Digest, 64)
		require.Equal(t, "gguf", m.Details.Format)
		names = append(names, m.Name)
	}
	require.Equal(t, []string{"llama3.2:latest", "qwen3:latest", "nomic-embed-text:latest"}, names)

	var version map[string]string
	getAnswer(t, srv.URL+"/api/version", &version)
	require.Equal(t, map[string]string{"version": OllamaVersion}, version)

	var show struct {
		Parameters   string         `json:"parameters"`
		ModelInfo    map[string]any `json:"model_info"`
		Capabilities []string       `json:"capabilities"`
	}
	decodeAnswer(t, post(t, t.Context(), srv.URL+"/api/show", `{"model":"qwen3"}`), http.StatusOK, &show)
	require.EqualValues(t, ollamaContextLength, show.ModelInfo["sim.context_length"])
	require.Equal(t, "sim", show.ModelInfo["general.architecture"])
	require.Contains(t, show.Parameters, "num_ctx ")
	require.Equal(t, []string{"completion", "tools", "thinking"}, show.Capabilities)
	show.Capabilities = nil
	decodeAnswer(t, post(t, t.Context(), srv.URL+"/api/show", `{"name":"nomic-embed-text"}`), http.StatusOK, &show)
	require.Equal(t, []string{"embedding"}, show.Capabilities)
	require.Zero(t, n.Stats().Received, "show is not an inference request")

	// /api/ps: the models that served a request lately.
	var ps struct {
		Models []struct {
			Name      string    `json:"name"`
			ExpiresAt time.Time `json:"expires_at"`
			SizeVRAM  int64     `json:"size_vram"`
		}
	}
	getAnswer(t, srv.URL+"/api/ps", &ps)
	require.Empty(t, ps.Models)
	readRecords(t, post(t, t.Context(), srv.URL+"/api/chat", `{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}`))
	getAnswer(t, srv.URL+"/api/ps", &ps)
	require.Len(t, ps.Models, 1)
	require.Equal(t, "qwen3:latest", ps.Models[0].Name)
	require.WithinDuration(t, time.Now().Add(OllamaKeepAlive), ps.Models[0].ExpiresAt, time.Minute)
	require.Positive(t, ps.Models[0].SizeVRAM)
}

func TestOllamaErrors(t *testing.T) {
	n, srv := startNode(t, ollamaConfig())
	ctx := t.Context()
	for _, tc := range []struct {
		path, body string
		status     int
		message    string
	}{
		{"/api/chat", `{"model":"mistral","messages":[]}`, 404, `model "mistral" not found, try pulling it first`},
		{"/api/chat", `{"model":"llama3.2:1b","messages":[]}`, 404, `model "llama3.2:1b" not found, try pulling it first`},
		{"/api/chat", `{"messages":[]}`, 400, "model is required"},
		{"/api/chat", `{"model":`, 400, "unexpected end of JSON input"},
		{"/api/chat", `{"model":"nomic-embed-text","messages":[]}`, 400, `"nomic-embed-text" does not support chat`},
		{"/api/generate", `{"model":"nomic-embed-text","prompt":"x"}`, 400, `"nomic-embed-text" does not support generate`},
		{"/api/embed", `{"model":"qwen3"}`, 400, "input is required"},
		{"/api/embeddings", `{"model":"qwen3"}`, 400, "prompt is required"},
		{"/api/show", `{"model":"mistral"}`, 404, "model 'mistral' not found"},
		{"/api/show", `{}`, 400, "model is required"},
		{"/api/pull", `{"model":"mistral"}`, 404, "404 page not found"},
	} {
		require.Equal(t, tc.message, ollamaError(t, post(t, ctx, srv.URL+tc.path, tc.body), tc.status), "%s %s", tc.path, tc.body)
	}
	resp, err := http.Get(srv.URL + "/api/chat")
	require.NoError(t, err)
	require.Equal(t, "405 method not allowed", ollamaError(t, resp, http.StatusMethodNotAllowed))
	require.Equal(t, http.MethodPost, resp.Header.Get("Allow"))
	require.EqualValues(t, 8, n.Stats().Failed, "the inference requests refused")
}

func TestOllamaFailure(t *testing.T) {
	cfg := ollamaConfig()
	cfg.FailRate, cfg.FailStatus = 1, 503
	_, srv := startNode(t, cfg)
	// Streamed: an error record before any content, in a 200 stream.
	recs := readRecords(t, post(t, t.Context(), srv.URL+"/api/chat", `{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}`))
	require.Len(t, recs, 1)
	require.Equal(t, "Simulated failure on node o1.", recs[0].Error)
	// Not streamed: the status.
	resp := post(t, t.Context(), srv.URL+"/api/chat", `{"model":"qwen3","stream":false,"messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, "Simulated failure on node o1.", ollamaError(t, resp, 503))
}

func TestOllamaBusy(t *testing.T) {
	cfg := ollamaConfig()
	cfg.TTFT, cfg.Slots = time.Minute, 1
	n, srv := startNode(t, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/api/chat", strings.NewReader(`{"model":"qwen3","messages":[]}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 })
	resp := post(t, t.Context(), srv.URL+"/api/chat", `{"model":"qwen3","messages":[]}`)
	require.Contains(t, ollamaError(t, resp, http.StatusTooManyRequests), "is at capacity")
	require.Equal(t, "1", resp.Header.Get("Retry-After"))
}

// TestOllamaClientDisconnectMidStream: a client that goes away stops the
// stream, and the request counts as aborted.
func TestOllamaClientDisconnectMidStream(t *testing.T) {
	cfg := ollamaConfig()
	cfg.InterTokenLatency, cfg.Tokens = 50*time.Millisecond, 100
	n, srv := startNode(t, cfg)
	ctx, cancel := context.WithCancel(t.Context())
	resp := post(t, ctx, srv.URL+"/api/chat", `{"model":"qwen3","messages":[{"role":"user","content":"hi"}]}`)
	line, err := bufio.NewReader(resp.Body).ReadString('\n')
	require.NoError(t, err)
	require.Contains(t, line, TokenText("o1", 0))
	cancel()
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	waitStats(t, n, func(s Stats) bool { return s.Aborted == 1 && s.InFlight == 0 })
	require.Zero(t, n.Stats().Completed)
	require.True(t, n.Requests()[0].Aborted)
}
