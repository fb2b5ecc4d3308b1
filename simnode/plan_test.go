package simnode

import (
	"encoding/json"
	"io"
	"net/http"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

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
