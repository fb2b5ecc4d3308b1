package simnode

import (
	"encoding/json"
	"errors"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"
)

// writeStream sends the answer as server-sent events, the way OpenAI does:
// for chat a first chunk with the assistant role, one chunk per token (or,
// for a tool call, one with the call's id and name and then argument
// fragments), a chunk with an empty delta and the finish reason, the usage
// chunk if requested, and [DONE]. Headers are only written together with the first token (the
// caller has waited out the TTFT), because a hedging proxy measures time to
// first token by the first body byte. Every write is flushed immediately.
func (n *Node) writeStream(w http.ResponseWriter, rec *Record, snap *snapshot, p *plan, sl *sleeper) {
	pieces, completionTokens, finish := p.answerShape(&snap.cfg)
	chat := p.kind == kindChat
	rc := http.NewResponseController(w)

	bp := getBuf()
	defer putBuf(bp)
	buf := (*bp)[:0]

	// The common event prefix, built once: every event is
	// head + body + tail, and only the body changes per token.
	buf = append(buf, `data: {"id":"`...)
	if chat {
		buf = append(buf, "chatcmpl-"...)
	} else {
		buf = append(buf, "cmpl-"...)
	}
	buf = append(buf, snap.idJSON...)
	buf = append(buf, '-')
	buf = strconv.AppendInt(buf, rec.Seq, 10)
	if chat {
		buf = append(buf, `","object":"chat.completion.chunk","created":`...)
	} else {
		buf = append(buf, `","object":"text_completion","created":`...)
	}
	buf = strconv.AppendInt(buf, time.Now().Unix(), 10)
	buf = append(buf, `,"model":`...)
	buf = appendJSONString(buf, p.model)
	buf = append(buf, `,"choices":[`...)
	headNoChoice := len(buf)
	buf = append(buf, `{"index":0,`...)
	head := len(buf)

	for i := range pieces {
		if i > 0 && !sl.sleep(n.cfg.Load().cfg.InterTokenLatency) {
			n.abort(rec, http.StatusOK)
			return
		}
		b := buf[:head]
		last := i == pieces-1
		if i == 0 && chat && p.toolName == "" {
			b = append(b, b[:head]...)
			b = append(b, `"delta":{"role":"assistant","content":""}`...)
			b = appendTail(b, "", p.includeUsage)
		}
		b = append(b, b[:head]...)
		switch {
		case p.toolName != "" && i == 0:
			b = append(b, `"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_`...)
			b = append(b, snap.idJSON...)
			b = append(b, '_')
			b = strconv.AppendInt(b, rec.Seq, 10)
			b = append(b, `","type":"function","function":{"name":`...)
			b = appendJSONString(b, p.toolName)
			b = append(b, `,"arguments":""}}]}`...)
		case p.toolName != "":
			b = append(b, `"delta":{"tool_calls":[{"index":0,"function":{"arguments":"`...)
			b = append(b, toolArgFragments[i-1]...)
			b = append(b, `"}}]}`...)
		case chat:
			b = append(b, `"delta":{"content":"`...)
			b = appendToken(b, snap.idJSON, i)
			b = append(b, `"}`...)
		default:
			b = append(b, `"text":"`...)
			b = appendToken(b, snap.idJSON, i)
			b = append(b, '"')
		}
		b = appendTail(b, "", p.includeUsage)
		if last {
			// As OpenAI does, the finish reason comes in a chunk of its own
			// with an empty delta; the SDKs' stream accumulators rely on
			// that state change to report a finished message or tool call.
			// It, the usage chunk and [DONE] go out with the last token: a
			// real server emits them back to back, and one write is cheaper.
			b = append(b, b[:head]...)
			if chat {
				b = append(b, `"delta":{}`...)
			} else {
				b = append(b, `"text":""`...)
			}
			b = appendTail(b, finish, p.includeUsage)
			if p.includeUsage {
				b = append(b, b[:headNoChoice]...)
				b = append(b, `],"usage":`...)
				b = appendUsage(b, p.promptTokens, completionTokens)
				b = append(b, "}\n\n"...)
			}
			b = append(b, "data: [DONE]\n\n"...)
		}
		if i == 0 {
			h := w.Header()
			h["Content-Type"] = hdrEventStream
			h["Cache-Control"] = hdrNoCache
			w.WriteHeader(http.StatusOK)
		}
		_, err := w.Write(b[head:])
		if err == nil {
			err = rc.Flush()
			if errors.Is(err, http.ErrNotSupported) {
				err = nil // e.g. a plain test recorder; the data is written anyway
			}
		}
		buf = b[:head] // keep any growth for the next event
		if err != nil {
			n.abort(rec, http.StatusOK)
			return
		}
	}
	*bp = buf
	n.completed.Add(1)
	n.endRecord(rec, http.StatusOK, false)
}

// appendTail closes a streamed choice and event. OpenAI sends "usage":null
// on every chunk when usage was requested, so clients expect the key.
func appendTail(b []byte, finish string, usageNull bool) []byte {
	b = append(b, `,"logprobs":null,"finish_reason":`...)
	if finish == "" {
		b = append(b, "null"...)
	} else {
		b = append(b, '"')
		b = append(b, finish...)
		b = append(b, '"')
	}
	b = append(b, "}]"...)
	if usageNull {
		b = append(b, `,"usage":null`...)
	}
	return append(b, "}\n\n"...)
}

// appendToken appends TokenText(id, i) with id already JSON-escaped.
func appendToken(b []byte, idJSON string, i int) []byte {
	b = append(b, idJSON...)
	b = append(b, "-tok"...)
	b = strconv.AppendInt(b, int64(i), 10)
	return append(b, ' ')
}

func appendUsage(b []byte, prompt, completion int) []byte {
	b = append(b, `{"prompt_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt), 10)
	b = append(b, `,"completion_tokens":`...)
	b = strconv.AppendInt(b, int64(completion), 10)
	b = append(b, `,"total_tokens":`...)
	b = strconv.AppendInt(b, int64(prompt+completion), 10)
	return append(b, '}')
}

// appendJSONString appends s as a JSON string literal. Model and tool names
// are almost always plain ASCII, so the common case avoids encoding/json.
func appendJSONString(b []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == '"' || c == '\\' || c >= utf8.RuneSelf {
			m, _ := json.Marshal(s)
			return append(b, m...)
		}
	}
	b = append(b, '"')
	b = append(b, s...)
	return append(b, '"')
}
