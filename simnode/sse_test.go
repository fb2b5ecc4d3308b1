package simnode

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

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
