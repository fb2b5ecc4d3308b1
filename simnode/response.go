package simnode

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// Response shapes for non-streamed answers.
type (
	usageOut struct {
		PromptTokens     int `json:"prompt_tokens"`
		CompletionTokens int `json:"completion_tokens,omitempty"`
		TotalTokens      int `json:"total_tokens"`
	}
	chatCompletionOut struct {
		ID      string          `json:"id"`
		Object  string          `json:"object"`
		Created int64           `json:"created"`
		Model   string          `json:"model"`
		Choices []chatChoiceOut `json:"choices"`
		Usage   usageOut        `json:"usage"`
	}
	chatChoiceOut struct {
		Index        int            `json:"index"`
		Message      chatMessageOut `json:"message"`
		Logprobs     *struct{}      `json:"logprobs"`
		FinishReason string         `json:"finish_reason"`
	}
	chatMessageOut struct {
		Role      string        `json:"role"`
		Content   *string       `json:"content"`
		ToolCalls []toolCallOut `json:"tool_calls,omitempty"`
	}
	toolCallOut struct {
		ID       string `json:"id"`
		Type     string `json:"type"`
		Function struct {
			Name      string `json:"name"`
			Arguments string `json:"arguments"`
		} `json:"function"`
	}
	textCompletionOut struct {
		ID      string          `json:"id"`
		Object  string          `json:"object"`
		Created int64           `json:"created"`
		Model   string          `json:"model"`
		Choices []textChoiceOut `json:"choices"`
		Usage   usageOut        `json:"usage"`
	}
	textChoiceOut struct {
		Index        int       `json:"index"`
		Text         string    `json:"text"`
		Logprobs     *struct{} `json:"logprobs"`
		FinishReason string    `json:"finish_reason"`
	}
)

// writeFull answers a non-streamed completion after the decode time of the
// whole answer has passed.
func (n *Node) writeFull(w http.ResponseWriter, rec *Record, snap *snapshot, p *plan, sl *sleeper) {
	cfg := &snap.cfg
	pieces, completionTokens, finish := p.answerShape(cfg)
	if !sl.sleep(time.Duration(pieces) * max(n.cfg.Load().cfg.InterTokenLatency, 0)) {
		n.abort(rec, 499)
		return
	}
	seq := strconv.FormatInt(rec.Seq, 10)
	usage := usageOut{PromptTokens: p.promptTokens, CompletionTokens: completionTokens, TotalTokens: p.promptTokens + completionTokens}
	var out any
	if p.kind == kindChat {
		msg := chatMessageOut{Role: "assistant"}
		if p.toolName != "" {
			tc := toolCallOut{ID: "call_" + cfg.ID + "_" + seq, Type: "function"}
			tc.Function.Name = p.toolName
			tc.Function.Arguments = toolArgs
			msg.ToolCalls = []toolCallOut{tc}
		} else {
			text := Text(cfg.ID, completionTokens)
			msg.Content = &text
		}
		out = chatCompletionOut{
			ID: "chatcmpl-" + cfg.ID + "-" + seq, Object: "chat.completion", Created: time.Now().Unix(), Model: p.model,
			Choices: []chatChoiceOut{{Message: msg, FinishReason: finish}},
			Usage:   usage,
		}
	} else {
		out = textCompletionOut{
			ID: "cmpl-" + cfg.ID + "-" + seq, Object: "text_completion", Created: time.Now().Unix(), Model: p.model,
			Choices: []textChoiceOut{{Text: Text(cfg.ID, completionTokens), FinishReason: finish}},
			Usage:   usage,
		}
	}
	writeJSON(w, http.StatusOK, out)
	n.completed.Add(1)
	n.endRecord(rec, http.StatusOK, false)
}

// writeJSON writes v with a Content-Length, so that clients and proxies see
// a complete, non-chunked response.
func writeJSON(w http.ResponseWriter, status int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	b = append(b, '\n')
	h := w.Header()
	h["Content-Type"] = hdrJSON
	h.Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
