package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ai-lb/ai-lb/simnode"
)

// reqResult is what the client saw of one request.
type reqResult struct {
	Seq       int
	ID        string        // X-Request-Id sent
	Start     time.Duration // since the pass began
	TTFT      time.Duration // to the first data: line with content
	Total     time.Duration // to the end of the body
	Status    int
	Node      string        // X-Sim-Node of the answer
	Hedged    string        // X-AI-LB-Hedged
	Attempts  int           // X-AI-LB-Attempts (0: header absent)
	Err       string        // empty when the stream was complete and correct
	AfterDone time.Duration // from the [DONE] line to the end of the body
	firstTime time.Time
}

// loadSpec is one closed-loop run: concurrency clients send requests
// back to back until count have been sent or the deadline passes.
type loadSpec struct {
	url         string
	model       string
	tokens      int
	concurrency int
	count       int
	idPrefix    string
	deadline    time.Time
	timeout     time.Duration
}

func chatBody(model string, tokens int) []byte {
	b, _ := json.Marshal(map[string]any{
		"model":          model,
		"stream":         true,
		"stream_options": map[string]any{"include_usage": true},
		"max_tokens":     tokens,
		"messages": []map[string]string{
			{"role": "system", "content": "You are a terse assistant."},
			{"role": "user", "content": "Say hello in a few words."},
		},
	})
	return b
}

// runLoad runs spec and returns one result per request sent, in order.
func runLoad(ctx context.Context, spec loadSpec) ([]reqResult, time.Duration) {
	tr := &http.Transport{
		MaxIdleConns:        spec.concurrency * 2,
		MaxIdleConnsPerHost: spec.concurrency * 2,
		IdleConnTimeout:     60 * time.Second,
		DisableCompression:  true,
	}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: spec.timeout}
	body := chatBody(spec.model, spec.tokens)
	results := make([]reqResult, spec.count)
	var next atomic.Int64
	var sent atomic.Int64
	begin := time.Now()
	var wg sync.WaitGroup
	for range spec.concurrency {
		wg.Go(func() {
			for ctx.Err() == nil && time.Now().Before(spec.deadline) {
				i := int(next.Add(1) - 1)
				if i >= spec.count {
					return
				}
				sent.Add(1)
				r := &results[i]
				r.Seq = i
				r.ID = fmt.Sprintf("%s-%05d", spec.idPrefix, i)
				doRequest(ctx, client, spec, body, begin, r)
			}
		})
	}
	wg.Wait()
	wall := time.Since(begin)
	n := min(int(sent.Load()), spec.count)
	return results[:n], wall
}

// chunk is the part of a streamed chat completion chunk the client checks.
type chunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
	Usage *struct {
		CompletionTokens int `json:"completion_tokens"`
	} `json:"usage"`
}

func doRequest(ctx context.Context, client *http.Client, spec loadSpec, body []byte, begin time.Time, r *reqResult) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, spec.url+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		r.Err = err.Error()
		return
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", r.ID)
	t0 := time.Now()
	r.Start = t0.Sub(begin)
	resp, err := client.Do(req)
	if err != nil {
		r.Err = err.Error()
		r.Total = time.Since(t0)
		return
	}
	defer resp.Body.Close()
	r.Status = resp.StatusCode
	r.Node = resp.Header.Get("X-Sim-Node")
	r.Hedged = resp.Header.Get("X-AI-LB-Hedged")
	r.Attempts, _ = strconv.Atoi(resp.Header.Get("X-AI-LB-Attempts"))
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		r.Total = time.Since(t0)
		r.Err = fmt.Sprintf("status %d: %s", resp.StatusCode, bytes.TrimSpace(msg))
		return
	}
	var content bytes.Buffer
	var usage, done bool
	var doneAt time.Time
	var completion int
	br := bufio.NewReaderSize(resp.Body, 8192)
	for {
		line, err := br.ReadBytes('\n')
		if len(line) > 0 {
			data, ok := bytes.CutPrefix(bytes.TrimRight(line, "\r\n"), []byte("data:"))
			if ok {
				data = bytes.TrimSpace(data)
				if string(data) == "[DONE]" {
					done, doneAt = true, time.Now()
				} else {
					var c chunk
					if jerr := json.Unmarshal(data, &c); jerr != nil {
						r.Err = "bad chunk: " + jerr.Error()
					} else {
						for _, ch := range c.Choices {
							if ch.Delta.Content != "" && r.firstTime.IsZero() {
								r.firstTime = time.Now()
								r.TTFT = r.firstTime.Sub(t0)
							}
							content.WriteString(ch.Delta.Content)
						}
						if c.Usage != nil {
							usage, completion = true, c.Usage.CompletionTokens
						}
					}
				}
			}
		}
		if err != nil {
			if !errors.Is(err, io.EOF) {
				r.Err = "reading stream: " + err.Error()
			}
			break
		}
	}
	end := time.Now()
	r.Total = end.Sub(t0)
	if done {
		r.AfterDone = end.Sub(doneAt)
	}
	switch {
	case r.Err != "":
	case r.firstTime.IsZero():
		r.Err = "no content"
	case !done:
		r.Err = "stream ended without [DONE]"
	case !usage || completion != spec.tokens:
		r.Err = fmt.Sprintf("usage missing or wrong (%v, %d tokens)", usage, completion)
	case content.String() != simnode.Text(r.Node, spec.tokens):
		// The text names the node that generated it: a stream spliced
		// from two attempts, or from another node than X-Sim-Node, shows.
		r.Err = fmt.Sprintf("content not one whole answer of %s: %.80q", r.Node, content.String())
	}
}
