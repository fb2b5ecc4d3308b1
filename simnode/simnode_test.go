package simnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/openai/openai-go/v3/shared"
	"github.com/spf13/pflag"
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

func TestStreamChat(t *testing.T) {
	n, srv := startNode(t, fast("n1"))
	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello there"}]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "text/event-stream", resp.Header.Get("Content-Type"))
	require.Equal(t, "n1", resp.Header.Get("X-Sim-Node"))

	events := readEvents(t, resp.Body)
	for _, ev := range events[:len(events)-1] {
		require.Contains(t, ev, `"usage":`, "with include_usage every chunk has the usage key")
	}
	chunks := parseChunks(t, events)
	require.Len(t, chunks, 1+4+1+1) // role, 4 tokens, finish, usage

	id := chunks[0].ID
	for _, c := range chunks {
		require.Equal(t, id, c.ID)
		require.Equal(t, "chat.completion.chunk", c.Object)
		require.Equal(t, "sim-model", c.Model)
		require.NotZero(t, c.Created)
	}
	require.Equal(t, "assistant", chunks[0].Choices[0].Delta.Role)
	require.Nil(t, chunks[0].Choices[0].FinishReason)

	var text strings.Builder
	for i, c := range chunks[1:5] {
		require.Len(t, c.Choices, 1)
		require.Nil(t, c.Usage)
		require.Empty(t, c.Choices[0].Delta.Role)
		require.NotNil(t, c.Choices[0].Delta.Content)
		require.Equal(t, TokenText("n1", i), *c.Choices[0].Delta.Content)
		require.Nil(t, c.Choices[0].FinishReason)
		text.WriteString(*c.Choices[0].Delta.Content)
	}
	require.Equal(t, Text("n1", 4), text.String())

	fin := chunks[5]
	require.Len(t, fin.Choices, 1)
	require.Nil(t, fin.Choices[0].Delta.Content)
	require.NotNil(t, fin.Choices[0].FinishReason)
	require.Equal(t, "stop", *fin.Choices[0].FinishReason)
	require.Contains(t, events[5], `"delta":{}`)

	last := chunks[6]
	require.NotNil(t, last.Choices)
	require.Empty(t, last.Choices)
	require.NotNil(t, last.Usage)
	require.Equal(t, 4, last.Usage.CompletionTokens)
	require.Positive(t, last.Usage.PromptTokens)
	require.Equal(t, last.Usage.PromptTokens+4, last.Usage.TotalTokens)

	recs := n.Requests()
	require.Len(t, recs, 1)
	r := recs[0]
	require.Equal(t, "/v1/chat/completions", r.Path)
	require.Equal(t, "sim-model", r.Model)
	require.Equal(t, "req-1", r.RequestID)
	require.True(t, r.Stream)
	require.False(t, r.Aborted)
	require.Equal(t, http.StatusOK, r.Status)
	require.False(t, r.FirstToken.Before(r.Start))
	require.False(t, r.End.Before(r.FirstToken))
	require.Equal(t, Stats{Received: 1, Completed: 1}, n.Stats())
}

func TestStreamCompletionsMaxTokens(t *testing.T) {
	_, srv := startNode(t, fast("n2"))
	resp := post(t, t.Context(), srv.URL+"/v1/completions",
		`{"model":"sim-model","stream":true,"max_tokens":2,"prompt":"once upon a time"}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	events := readEvents(t, resp.Body)
	for _, ev := range events {
		require.NotContains(t, ev, `"usage"`, "no usage without include_usage")
	}
	chunks := parseChunks(t, events)
	require.Len(t, chunks, 3) // 2 tokens, finish
	type textChoice struct {
		Text         string  `json:"text"`
		FinishReason *string `json:"finish_reason"`
	}
	for i, ev := range events[:3] {
		var c struct {
			Object  string       `json:"object"`
			Choices []textChoice `json:"choices"`
		}
		require.NoError(t, json.Unmarshal([]byte(ev), &c))
		require.Equal(t, "text_completion", c.Object)
		require.Len(t, c.Choices, 1)
		if i < 2 {
			require.Equal(t, TokenText("n2", i), c.Choices[0].Text)
			require.Nil(t, c.Choices[0].FinishReason)
		} else {
			require.Empty(t, c.Choices[0].Text)
			require.Equal(t, "length", *c.Choices[0].FinishReason)
		}
	}
}

func TestNonStream(t *testing.T) {
	n, srv := startNode(t, fast("n3"))

	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","max_completion_tokens":3,"messages":[{"role":"system","content":"be brief"},{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, "application/json", resp.Header.Get("Content-Type"))
	require.Equal(t, "n3", resp.Header.Get("X-Sim-Node"))
	var cc struct {
		ID      string `json:"id"`
		Object  string `json:"object"`
		Model   string `json:"model"`
		Choices []struct {
			Message struct {
				Role    string `json:"role"`
				Content string `json:"content"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
		Usage struct {
			PromptTokens     int `json:"prompt_tokens"`
			CompletionTokens int `json:"completion_tokens"`
			TotalTokens      int `json:"total_tokens"`
		} `json:"usage"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&cc))
	require.NotEmpty(t, cc.ID)
	require.Equal(t, "chat.completion", cc.Object)
	require.Equal(t, "sim-model", cc.Model)
	require.Len(t, cc.Choices, 1)
	require.Equal(t, "assistant", cc.Choices[0].Message.Role)
	require.Equal(t, Text("n3", 3), cc.Choices[0].Message.Content)
	require.Equal(t, "length", cc.Choices[0].FinishReason)
	require.Equal(t, 3, cc.Usage.CompletionTokens)
	require.Equal(t, cc.Usage.PromptTokens+3, cc.Usage.TotalTokens)

	resp2 := post(t, t.Context(), srv.URL+"/v1/completions", `{"model":"sim-model","prompt":["a","b"]}`)
	defer resp2.Body.Close()
	require.Equal(t, http.StatusOK, resp2.StatusCode)
	var tc struct {
		Object  string `json:"object"`
		Choices []struct {
			Text         string `json:"text"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	require.NoError(t, json.NewDecoder(resp2.Body).Decode(&tc))
	require.Equal(t, "text_completion", tc.Object)
	require.Equal(t, Text("n3", 4), tc.Choices[0].Text)
	require.Equal(t, "stop", tc.Choices[0].FinishReason)

	recs := n.Requests()
	require.Len(t, recs, 2)
	require.Less(t, recs[0].Seq, recs[1].Seq)
	require.False(t, recs[0].Stream)
	require.Equal(t, int64(2), n.Stats().Completed)
}

const toolsJSON = `"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object"}}},{"type":"function","function":{"name":"other"}}]`

func TestToolCall(t *testing.T) {
	_, srv := startNode(t, fast("n4"))

	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","stream":true,`+toolsJSON+`,"messages":[{"role":"user","content":"weather?"}]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	chunks := parseChunks(t, readEvents(t, resp.Body))
	require.GreaterOrEqual(t, len(chunks), 2)

	first := chunks[0].Choices[0].Delta
	require.Equal(t, "assistant", first.Role)
	require.Nil(t, first.Content)
	require.Len(t, first.ToolCalls, 1)
	require.Equal(t, 0, first.ToolCalls[0].Index)
	require.NotEmpty(t, first.ToolCalls[0].ID)
	require.Equal(t, "function", first.ToolCalls[0].Type)
	require.Equal(t, "get_weather", first.ToolCalls[0].Function.Name)

	var args strings.Builder
	for _, c := range chunks[1 : len(chunks)-1] {
		d := c.Choices[0].Delta
		require.Len(t, d.ToolCalls, 1)
		require.Equal(t, 0, d.ToolCalls[0].Index)
		require.Empty(t, d.ToolCalls[0].ID, "only the first tool-call delta carries the id")
		require.Empty(t, d.ToolCalls[0].Function.Name)
		require.Nil(t, c.Choices[0].FinishReason)
		args.WriteString(d.ToolCalls[0].Function.Arguments)
	}
	require.Equal(t, `{"sim":true}`, args.String())
	fin := chunks[len(chunks)-1].Choices[0]
	require.Empty(t, fin.Delta.ToolCalls)
	require.Equal(t, "tool_calls", *fin.FinishReason)

	// Non-streamed, with a named tool_choice.
	resp2 := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model",`+toolsJSON+`,"tool_choice":{"type":"function","function":{"name":"other"}},"messages":[{"role":"user","content":"weather?"}]}`)
	defer resp2.Body.Close()
	var cc struct {
		Choices []struct {
			Message struct {
				Content   *string `json:"content"`
				ToolCalls []struct {
					ID       string `json:"id"`
					Type     string `json:"type"`
					Function struct{ Name, Arguments string }
				} `json:"tool_calls"`
			} `json:"message"`
			FinishReason string `json:"finish_reason"`
		} `json:"choices"`
	}
	require.NoError(t, json.NewDecoder(resp2.Body).Decode(&cc))
	require.Equal(t, "tool_calls", cc.Choices[0].FinishReason)
	require.Nil(t, cc.Choices[0].Message.Content)
	require.Len(t, cc.Choices[0].Message.ToolCalls, 1)
	require.Equal(t, "other", cc.Choices[0].Message.ToolCalls[0].Function.Name)
	require.Equal(t, `{"sim":true}`, cc.Choices[0].Message.ToolCalls[0].Function.Arguments)

	// After the tool result the answer is text.
	followUp := `{"model":"sim-model","stream":true,` + toolsJSON + `,"messages":[` +
		`{"role":"user","content":"weather?"},` +
		`{"role":"assistant","content":null,"tool_calls":[{"id":"call_1","type":"function","function":{"name":"get_weather","arguments":"{}"}}]},` +
		`{"role":"tool","tool_call_id":"call_1","content":"sunny"}]}`
	resp3 := post(t, t.Context(), srv.URL+"/v1/chat/completions", followUp)
	defer resp3.Body.Close()
	require.Equal(t, http.StatusOK, resp3.StatusCode)
	chunks = parseChunks(t, readEvents(t, resp3.Body))
	var text strings.Builder
	for _, c := range chunks {
		require.Empty(t, c.Choices[0].Delta.ToolCalls)
		if c.Choices[0].Delta.Content != nil {
			text.WriteString(*c.Choices[0].Delta.Content)
		}
	}
	require.Equal(t, Text("n4", 4), text.String())
	require.Equal(t, "stop", *chunks[len(chunks)-1].Choices[0].FinishReason)

	// tool_choice "none" disables tool calls.
	resp4 := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model",`+toolsJSON+`,"tool_choice":"none","messages":[{"role":"user","content":"weather?"}]}`)
	defer resp4.Body.Close()
	b, err := io.ReadAll(resp4.Body)
	require.NoError(t, err)
	require.Contains(t, string(b), `"finish_reason":"stop"`)
}

func TestArrayOfPartsContent(t *testing.T) {
	_, srv := startNode(t, fast("n5"))
	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","messages":[{"role":"user","content":[{"type":"text","text":"describe"},{"type":"image_url","image_url":{"url":"data:,"}}]}]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	require.Contains(t, string(b), Text("n5", 4))

	resp2 := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","messages":[{"role":"user","content":42}]}`)
	require.Equal(t, http.StatusBadRequest, resp2.StatusCode)
	require.Equal(t, "invalid_request_error", decodeError(t, resp2).Error.Type)
}

func TestRequestErrors(t *testing.T) {
	n, srv := startNode(t, fast("n6"))

	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"nope","messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	require.Equal(t, "n6", resp.Header.Get("X-Sim-Node"))
	e := decodeError(t, resp)
	require.Equal(t, "invalid_request_error", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "model_not_found", *e.Error.Code)

	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", `{"model":"sim-model","messages":[`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	require.Equal(t, "invalid_request_error", decodeError(t, resp).Error.Type)

	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", `{"model":"sim-model","messages":[]}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	decodeError(t, resp)

	resp = post(t, t.Context(), srv.URL+"/v1/chat/completions", `{"messages":[{"role":"user","content":"hi"}],"max_tokens":0}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	decodeError(t, resp)

	resp, err := http.Get(srv.URL + "/v1/chat/completions")
	require.NoError(t, err)
	require.Equal(t, http.StatusMethodNotAllowed, resp.StatusCode)
	decodeError(t, resp)

	resp, err = http.Get(srv.URL + "/v2/unknown")
	require.NoError(t, err)
	require.Equal(t, http.StatusNotFound, resp.StatusCode)
	decodeError(t, resp)

	st := n.Stats()
	require.Equal(t, int64(4), st.Received)
	require.Equal(t, int64(4), st.Failed)
	recs := n.Requests()
	require.Len(t, recs, 4)
	require.Equal(t, http.StatusNotFound, recs[0].Status)
	require.Equal(t, "nope", recs[0].Model)
	require.Equal(t, "sim-model", recs[3].Model, "a missing model defaults to the first served one")
}

func TestFailRate(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n7", TTFT: 2 * time.Millisecond, FailRate: 1, FailStatus: 503})
	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	require.Equal(t, http.StatusServiceUnavailable, resp.StatusCode)
	e := decodeError(t, resp)
	require.Equal(t, "server_error", e.Error.Type)
	require.NotNil(t, e.Error.Code)
	st := n.Stats()
	require.Equal(t, int64(1), st.Failed)
	require.Zero(t, st.InFlight)
	require.True(t, n.Requests()[0].FirstToken.IsZero())
}

// waitStats polls until cond holds for the node's stats.
func waitStats(t *testing.T, n *Node, cond func(Stats) bool) {
	t.Helper()
	require.Eventually(t, func() bool { return cond(n.Stats()) }, 5*time.Second, time.Millisecond, "stats: %+v", n.Stats())
}

func TestQueueFull(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n8", TTFT: time.Minute, Slots: 1, QueueSize: 1})
	body := `{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`

	ctxA, cancelA := context.WithCancel(t.Context())
	ctxB, cancelB := context.WithCancel(t.Context())
	defer cancelA()
	defer cancelB()
	var wg sync.WaitGroup
	send := func(ctx context.Context) {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions", strings.NewReader(body))
			resp, err := http.DefaultClient.Do(req)
			if err == nil {
				resp.Body.Close()
			}
		})
	}
	send(ctxA)
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 }) // A takes the slot before B queues
	send(ctxB)
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 && s.Waiting == 1 })

	resp := post(t, t.Context(), srv.URL+"/v1/chat/completions", body)
	require.Equal(t, http.StatusTooManyRequests, resp.StatusCode)
	e := decodeError(t, resp)
	require.NotNil(t, e.Error.Code)
	require.Equal(t, "rate_limit_exceeded", *e.Error.Code)
	require.Equal(t, int64(1), n.Stats().Rejected)

	// A queued client that goes away leaves the queue.
	cancelB()
	waitStats(t, n, func(s Stats) bool { return s.Waiting == 0 && s.Aborted == 1 })
	require.Equal(t, int64(1), n.Stats().InFlight)

	cancelA()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 0 && s.Aborted == 2 })
	wg.Wait()
	for _, r := range n.Requests() {
		if r.Status != http.StatusTooManyRequests {
			require.True(t, r.Aborted)
			require.Equal(t, 499, r.Status)
			require.False(t, r.End.IsZero())
		}
	}
}

func TestSlotsFIFOAndUpdate(t *testing.T) {
	n := New(Config{ID: "n9", TTFT: NoDelay, InterTokenLatency: NoDelay, Slots: 1, QueueSize: 10})
	// Hold the only slot directly so that requests queue deterministically.
	require.Equal(t, admitted, n.acquire(t.Context(), "sim-model"))
	var (
		mu    sync.Mutex
		order []string
		wg    sync.WaitGroup
	)

	for i := range 3 {
		id := string(rune('a' + i))
		wg.Go(func() {
			req := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(`{"prompt":"x"}`))
			req.Header.Set("X-Request-Id", id)
			w := httptest.NewRecorder()
			n.ServeHTTP(w, req)
			mu.Lock()
			order = append(order, id)
			mu.Unlock()
		})
		waitStats(t, n, func(s Stats) bool { return s.Waiting == int64(i+1) })
	}
	// Raising the slot count admits all waiters without a release.
	n.Update(func(c *Config) { c.Slots = 10 })
	wg.Wait()
	require.Len(t, order, 3)
	n.release("sim-model")
	require.Equal(t, Stats{Received: 3, Completed: 3}, n.Stats())

	// With one slot again, queued requests are served in arrival order:
	// each one gets its first token only after its predecessor ended.
	n.Update(func(c *Config) { c.Slots = 1 })
	require.Equal(t, admitted, n.acquire(t.Context(), "sim-model"))
	for i := range 3 {
		wg.Go(func() {
			req := httptest.NewRequest(http.MethodPost, "/v1/completions", strings.NewReader(`{"prompt":"x"}`))
			n.ServeHTTP(httptest.NewRecorder(), req)
		})
		waitStats(t, n, func(s Stats) bool { return s.Waiting == int64(i+1) })
	}
	n.release("sim-model")
	wg.Wait()
	recs := n.Requests()[3:]
	require.Len(t, recs, 3)
	for i := 1; i < len(recs); i++ {
		require.False(t, recs[i].FirstToken.Before(recs[i-1].End), "request %d overtook its predecessor", i)
	}
}

func TestClientDisconnectMidStream(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n10", TTFT: time.Millisecond, InterTokenLatency: 20 * time.Millisecond, Tokens: 10000, Slots: 1})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	resp := post(t, ctx, srv.URL+"/v1/chat/completions",
		`{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)

	sc := bufio.NewScanner(resp.Body)
	var got []string
	for len(got) < 3 && sc.Scan() {
		if line := sc.Text(); strings.HasPrefix(line, "data: ") {
			got = append(got, line)
		}
	}
	require.Len(t, got, 3)
	cancelled := time.Now()
	cancel()

	waitStats(t, n, func(s Stats) bool { return s.Aborted == 1 && s.InFlight == 0 })
	recs := n.Requests()
	require.Len(t, recs, 1)
	r := recs[0]
	require.True(t, r.Aborted)
	require.Equal(t, http.StatusOK, r.Status, "headers had been sent")
	require.False(t, r.FirstToken.IsZero())
	require.False(t, r.End.IsZero())
	// Promptly: far sooner than the 200s the stream would have lasted.
	require.Less(t, r.End.Sub(cancelled), 2*time.Second)
	require.Zero(t, n.Stats().Completed)
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

func TestMetrics(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n12", Models: []string{"m1", "m2"}, TTFT: time.Minute, Slots: 4, QueueSize: 4})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go func() {
		req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/chat/completions",
			strings.NewReader(`{"model":"m2","messages":[{"role":"user","content":"hi"}]}`))
		if resp, err := http.DefaultClient.Do(req); err == nil {
			resp.Body.Close()
		}
	}()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 1 })

	resp, err := http.Get(srv.URL + "/metrics")
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Contains(t, resp.Header.Get("Content-Type"), "text/plain")
	b, err := io.ReadAll(resp.Body)
	require.NoError(t, err)
	m := string(b)
	for _, want := range []string{
		"# TYPE vllm:num_requests_running gauge",
		`vllm:num_requests_running{model_name="m1"} 0`,
		`vllm:num_requests_running{model_name="m2"} 1`,
		`vllm:num_requests_waiting{model_name="m1"} 0`,
		`vllm:num_requests_waiting{model_name="m2"} 0`,
		`vllm:kv_cache_usage_perc{model_name="m1"} 0.25`,
		`vllm:kv_cache_usage_perc{model_name="m2"} 0.25`,
	} {
		require.Contains(t, m, want)
	}
	cancel()
	waitStats(t, n, func(s Stats) bool { return s.InFlight == 0 })
}

func TestInfoEndpoints(t *testing.T) {
	n, srv := startNode(t, Config{ID: "n13", Models: []string{"a", "b"}, TTFT: NoDelay, InterTokenLatency: NoDelay})

	getJSON := func(path string, v any) {
		t.Helper()
		resp, err := http.Get(srv.URL + path)
		require.NoError(t, err)
		defer resp.Body.Close()
		require.Equal(t, http.StatusOK, resp.StatusCode, path)
		require.Equal(t, "n13", resp.Header.Get("X-Sim-Node"))
		require.NoError(t, json.NewDecoder(resp.Body).Decode(v))
	}

	var health map[string]string
	getJSON("/health", &health)
	require.Equal(t, map[string]string{"status": "ok"}, health)

	var models struct {
		Object string `json:"object"`
		Data   []struct {
			ID, Object string
			Created    int64
			OwnedBy    string `json:"owned_by"`
		} `json:"data"`
	}
	getJSON("/v1/models", &models)
	require.Equal(t, "list", models.Object)
	require.Len(t, models.Data, 2)
	require.Equal(t, "a", models.Data[0].ID)
	require.Equal(t, "model", models.Data[0].Object)
	require.Equal(t, "simnode", models.Data[0].OwnedBy)
	require.NotZero(t, models.Data[0].Created)

	resp := post(t, t.Context(), srv.URL+"/v1/embeddings", `{"model":"b","input":["x","y"]}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	var emb struct {
		Object string `json:"object"`
		Model  string `json:"model"`
		Data   []struct {
			Object    string    `json:"object"`
			Index     int       `json:"index"`
			Embedding []float32 `json:"embedding"`
		} `json:"data"`
	}
	require.NoError(t, json.NewDecoder(resp.Body).Decode(&emb))
	require.Equal(t, "list", emb.Object)
	require.Equal(t, "b", emb.Model)
	require.Len(t, emb.Data, 2)
	require.Equal(t, 1, emb.Data[1].Index)
	require.Equal(t, Embed([]byte("x")), emb.Data[0].Embedding)
	require.Len(t, emb.Data[0].Embedding, EmbeddingDim)
	require.NotEqual(t, emb.Data[0].Embedding, emb.Data[1].Embedding)

	var st Stats
	getJSON("/sim/stats", &st)
	require.Equal(t, Stats{Received: 1, Completed: 1}, st)
	var recs []map[string]any
	getJSON("/sim/requests", &recs)
	require.Len(t, recs, 1)
	require.Equal(t, "/v1/embeddings", recs[0]["path"])

	// Partial config update with duration strings.
	resp = post(t, t.Context(), srv.URL+"/sim/config", `{"ttft":"250ms","itl":"0s","slots":3,"tokens":7}`)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	c := n.Config()
	require.Equal(t, 250*time.Millisecond, c.TTFT)
	require.LessOrEqual(t, c.InterTokenLatency, time.Duration(0))
	require.Equal(t, 3, c.Slots)
	require.Equal(t, 7, c.Tokens)
	require.Equal(t, []string{"a", "b"}, c.Models)
	var cj map[string]any
	getJSON("/sim/config", &cj)
	require.Equal(t, "250ms", cj["ttft"])
	require.Equal(t, "0s", cj["inter_token_latency"])

	resp = post(t, t.Context(), srv.URL+"/sim/config", `{"ttfft":"1s"}`)
	require.Equal(t, http.StatusBadRequest, resp.StatusCode)
	decodeError(t, resp)

	resp = post(t, t.Context(), srv.URL+"/sim/reset", ``)
	resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	require.Equal(t, Stats{}, n.Stats())
	require.Empty(t, n.Requests())
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

func TestJitterAndSlow(t *testing.T) {
	c := Config{TTFT: 100 * time.Millisecond, TTFTJitter: 0.5, SlowFraction: 0.5, SlowFactor: 10}
	require.Equal(t, 50*time.Millisecond, c.ttft(draws{jitter: 0, slow: 0.9}))
	require.Equal(t, 100*time.Millisecond, c.ttft(draws{jitter: 0.5, slow: 0.9}))
	require.Equal(t, 1000*time.Millisecond, c.ttft(draws{jitter: 0.5, slow: 0.1}))
	c.TTFT = NoDelay
	require.Zero(t, c.ttft(draws{slow: 0}))
}

func TestBindFlags(t *testing.T) {
	fs := pflag.NewFlagSet("simnode", pflag.ContinueOnError)
	cfg := BindFlags(fs)
	require.NoError(t, fs.Parse(nil))
	require.Equal(t, New(Config{}).Config(), New(*cfg).Config(), "flag defaults match Config defaults")

	fs = pflag.NewFlagSet("simnode", pflag.ContinueOnError)
	cfg = BindFlags(fs)
	require.NoError(t, fs.Parse([]string{
		"--id=b1", "--models=x,y", "--ttft=0", "--ttft-jitter=0.1", "--slow-fraction=0.2", "--slow-factor=3",
		"--itl=5ms", "--tokens=8", "--slots=2", "--queue=3", "--fail-rate=0.5", "--fail-status=502", "--seed=9",
	}))
	c := New(*cfg).Config()
	require.Equal(t, Config{
		ID: "b1", Models: []string{"x", "y"}, TTFT: NoDelay, TTFTJitter: 0.1, SlowFraction: 0.2, SlowFactor: 3,
		InterTokenLatency: 5 * time.Millisecond, Tokens: 8, Slots: 2, QueueSize: 3, FailRate: 0.5, FailStatus: 502, Seed: 9,
	}, c)
	require.Equal(t, "0s", fs.Lookup("ttft").Value.String())
	require.Equal(t, "50ms", fs.Lookup("ttft").DefValue)
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

// discardWriter is a minimal streaming ResponseWriter, so that the
// benchmark measures the node rather than a recorder.
type discardWriter struct{ h http.Header }

func (d *discardWriter) Header() http.Header         { return d.h }
func (d *discardWriter) Write(b []byte) (int, error) { return len(b), nil }
func (d *discardWriter) WriteHeader(int)             {}
func (d *discardWriter) Flush()                      {}

// benchBody is a reusable request body, so that the benchmark does not
// count allocations of its own.
type benchBody struct{ bytes.Reader }

func (*benchBody) Close() error { return nil }

func BenchmarkStream(b *testing.B) {
	n := New(Config{ID: "bench", TTFT: NoDelay, InterTokenLatency: NoDelay, Tokens: 16})
	payload := []byte(`{"model":"sim-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"user","content":"hello"}]}`)
	body := new(benchBody)
	req := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	req.Body = body
	w := &discardWriter{h: make(http.Header)}
	iterations := 0
	b.ReportAllocs()
	for b.Loop() {
		body.Reset(payload)
		clear(w.h)
		n.ServeHTTP(w, req)
		iterations++
	}
	require.Equal(b, iterations, int(n.Stats().Completed))
}
