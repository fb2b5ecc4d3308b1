package simnode

import (
	"encoding/json"
	"net/http"
	"testing"

	"github.com/stretchr/testify/require"
)

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
