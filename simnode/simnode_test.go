package simnode

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/stretchr/testify/require"
)

// fast is a config with ms-scale latencies so tests stay quick.
func fast(id string) Config {
	return Config{ID: id, TTFT: time.Millisecond, InterTokenLatency: time.Millisecond, Tokens: 4, Seed: 1}
}

func startNode(t *testing.T, cfg Config) (*Node, *httptest.Server) {
	t.Helper()
	n := New(cfg)
	srv := httptest.NewServer(n)
	t.Cleanup(srv.Close)
	return n, srv
}

func post(t *testing.T, ctx context.Context, url, body string) *http.Response {
	t.Helper()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	require.NoError(t, err)
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", "req-1")
	resp, err := http.DefaultClient.Do(req)
	require.NoError(t, err)
	return resp
}

// readEvents returns the data payloads of an SSE body and checks framing.
func readEvents(t *testing.T, r io.Reader) []string {
	t.Helper()
	b, err := io.ReadAll(r)
	require.NoError(t, err)
	raw := string(b)
	require.True(t, strings.HasSuffix(raw, "\n\n"), "events end with a blank line")
	var out []string
	for ev := range strings.SplitSeq(strings.TrimSuffix(raw, "\n\n"), "\n\n") {
		require.True(t, strings.HasPrefix(ev, "data: "), "event %q", ev)
		require.NotContains(t, ev, "\n")
		out = append(out, strings.TrimPrefix(ev, "data: "))
	}
	return out
}

type chunk struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	Model   string `json:"model"`
	Choices []struct {
		Index int `json:"index"`
		Text  *string
		Delta struct {
			Role      string  `json:"role"`
			Content   *string `json:"content"`
			ToolCalls []struct {
				Index    int    `json:"index"`
				ID       string `json:"id"`
				Type     string `json:"type"`
				Function struct {
					Name      string `json:"name"`
					Arguments string `json:"arguments"`
				} `json:"function"`
			} `json:"tool_calls"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
	Usage *struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens"`
		TotalTokens      int `json:"total_tokens"`
	} `json:"usage"`
}

func parseChunks(t *testing.T, events []string) []chunk {
	t.Helper()
	require.NotEmpty(t, events)
	require.Equal(t, "[DONE]", events[len(events)-1])
	out := make([]chunk, len(events)-1)
	for i, ev := range events[:len(events)-1] {
		require.NoError(t, json.Unmarshal([]byte(ev), &out[i]), ev)
	}
	return out
}

type errorBody struct {
	Error struct {
		Message string  `json:"message"`
		Type    string  `json:"type"`
		Code    *string `json:"code"`
	} `json:"error"`
}

func decodeError(t *testing.T, resp *http.Response) errorBody {
	t.Helper()
	defer resp.Body.Close()
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	var e errorBody
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&e))
	require.NotEmpty(t, e.Error.Message)
	return e
}

// waitStats polls until cond holds for the node's stats.
func waitStats(t *testing.T, n *Node, cond func(Stats) bool) {
	t.Helper()
	require.Eventually(t, func() bool { return cond(n.Stats()) }, 5*time.Second, time.Millisecond, "stats: %+v", n.Stats())
}

func TestUpdateTTFT(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n11", TTFT: NoDelay, InterTokenLatency: NoDelay, Tokens: 1})
	body := `{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`
	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions", body)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()

	n.Update(func(c *Config) { c.TTFT = 150 * time.Millisecond })
	require.Equal(t, 150*time.Millisecond, n.Config().TTFT)
	start := time.Now()
	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", body)
	firstByte := time.Since(start)
	_, _ = io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	require.GreaterOrEqual(t, firstByte, 150*time.Millisecond, "headers wait for the first token")

	recs := n.Requests()
	require.Len(t, recs, 2)
	require.GreaterOrEqual(t, recs[1].FirstToken.Sub(recs[1].Start), 150*time.Millisecond)

	// In Update a zero duration means no delay, not the default.
	n.Update(func(c *Config) { c.TTFT = 0 })
	require.Less(t, n.Config().TTFT, time.Duration(0))
	n.Update(func(c *Config) { c.Models = nil; c.Tokens = 0 })
	require.Equal(t, []string{DefaultModel}, n.Config().Models)
	require.Equal(t, DefaultTokens, n.Config().Tokens)
}

func TestDefaults(t *testing.T) {
	c := New(Config{}).Config()
	require.Equal(t, Config{
		ID: DefaultID, Models: []string{DefaultModel}, TTFT: 50 * time.Millisecond, SlowFactor: 10,
		InterTokenLatency: 10 * time.Millisecond, Tokens: 16, FailStatus: 500,
	}, c)
}

func TestRecordRing(t *testing.T) {
	n := New(Config{})
	for range maxRecords + 5 {
		n.addRecord(&Record{Path: "/x"})
	}
	recs := n.Requests()
	require.Len(t, recs, maxRecords)
	require.Equal(t, int64(6), recs[0].Seq)
	require.Equal(t, int64(maxRecords+5), recs[len(recs)-1].Seq)
	for i := 1; i < len(recs); i++ {
		require.Equal(t, recs[i-1].Seq+1, recs[i].Seq)
	}
	n.Reset()
	require.Empty(t, n.Requests())
	n.addRecord(&Record{})
	require.Equal(t, int64(maxRecords+6), n.Requests()[0].Seq, "Seq keeps increasing across Reset")
}

// TestOpenAISDK checks that the official Go SDK consumes the simulated
// stream, tool call and embeddings without complaint.
func TestOpenAISDK(t *testing.T) {
	_, srv := startNode(t, Config{ID: "sdk", TTFT: time.Millisecond, InterTokenLatency: time.Millisecond, Tokens: 5})
	client := openai.NewClient(
		option.WithBaseURL(srv.URL+"/v1"),
		option.WithAPIKey("test"),
		option.WithUnsafeAllowHTTP(),
		option.WithMaxRetries(0),
	)
	ctx := t.Context()

	stream := client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:         "sim-model",
		Messages:      []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
		StreamOptions: openai.ChatCompletionStreamOptionsParam{IncludeUsage: openai.Bool(true)},
	})
	acc := openai.ChatCompletionAccumulator{}
	var finished bool
	for stream.Next() {
		require.True(t, acc.AddChunk(stream.Current()))
		if _, ok := acc.JustFinishedContent(); ok {
			finished = true
		}
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	require.True(t, finished)
	require.Len(t, acc.Choices, 1)
	require.Equal(t, Text("sdk", 5), acc.Choices[0].Message.Content)
	require.Equal(t, "stop", acc.Choices[0].FinishReason)
	require.Equal(t, int64(5), acc.Usage.CompletionTokens)

	tools := []openai.ChatCompletionToolUnionParam{
		openai.ChatCompletionFunctionTool(shared.FunctionDefinitionParam{Name: "lookup"}),
	}
	stream = client.Chat.Completions.NewStreaming(ctx, openai.ChatCompletionNewParams{
		Model:    "sim-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("find it")},
		Tools:    tools,
	})
	acc = openai.ChatCompletionAccumulator{}
	var call openai.FinishedChatCompletionToolCall
	var gotCall bool
	for stream.Next() {
		require.True(t, acc.AddChunk(stream.Current()))
		if tc, ok := acc.JustFinishedToolCall(); ok {
			call, gotCall = tc, true
		}
	}
	require.NoError(t, stream.Err())
	require.NoError(t, stream.Close())
	require.True(t, gotCall)
	require.Equal(t, "lookup", call.Name)
	require.Equal(t, `{"sim":true}`, call.Arguments)
	require.Equal(t, "tool_calls", acc.Choices[0].FinishReason)

	res, err := client.Chat.Completions.New(ctx, openai.ChatCompletionNewParams{
		Model: "sim-model",
		Messages: []openai.ChatCompletionMessageParamUnion{
			openai.UserMessage("find it"),
			acc.Choices[0].Message.ToParam(),
			openai.ToolMessage("found", call.ID),
		},
		Tools: tools,
	})
	require.NoError(t, err)
	require.Equal(t, Text("sdk", 5), res.Choices[0].Message.Content)

	emb, err := client.Embeddings.New(ctx, openai.EmbeddingNewParams{
		Model: "sim-model",
		Input: openai.EmbeddingNewParamsInputUnion{OfString: openai.String("abc")},
	})
	require.NoError(t, err)
	require.Len(t, emb.Data, 1)
	want := Embed([]byte("abc"))
	require.Len(t, emb.Data[0].Embedding, EmbeddingDim)
	for i, f := range want {
		require.InDelta(t, f, emb.Data[0].Embedding[i], 1e-6)
	}
}
