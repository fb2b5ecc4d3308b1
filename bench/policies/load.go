package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/ai-lb/ai-lb/simnode"
)

// arrivals are the send times, from the start of the load, of a Poisson
// process of the given rate over d: the same for every policy of a seed.
func arrivals(rate float64, d time.Duration, seed int64) []time.Duration {
	rng := rand.New(rand.NewPCG(uint64(seed), 0xa11))
	var at []time.Duration
	for t := 0.0; ; {
		t += rng.ExpFloat64() / rate
		if t >= d.Seconds() {
			return at
		}
		at = append(at, time.Duration(t*float64(time.Second)))
	}
}

// outcome is what the client saw of one request.
type outcome struct {
	Seq     int
	ID      string        // X-Request-Id sent
	Planned time.Duration // scheduled send time, since the load began
	Sent    time.Duration // actual send time, since the load began
	TTFT    time.Duration // to the first data: line with content
	Total   time.Duration // to the end of the stream
	Status  int
	Node    string // X-Sim-Node of the answer
	Err     string // non-200, transport error or incomplete stream
}

// openLoop sends one streamed chat completion at each arrival time,
// whatever the answers to earlier ones (open loop), and returns the
// outcomes in send order once every request has ended; request i goes to
// urls[i % len(urls)] (one URL per ai-lb replica). start, if set, is
// called with the load's start time before the first request, and event, if set,
// runs once at eventAt (from the start) while the load goes on.
func openLoop(ctx context.Context, urls []string, idPrefix string, times []time.Duration, tokens int, timeout time.Duration,
	start func(t0 time.Time), eventAt time.Duration, event func()) []outcome {
	tr := &http.Transport{MaxIdleConnsPerHost: 1024, IdleConnTimeout: time.Minute, DisableCompression: true}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr, Timeout: timeout}
	body := requestBody(tokens)
	out := make([]outcome, len(times))
	var wg sync.WaitGroup
	t0 := time.Now()
	if start != nil {
		start(t0)
	}
	if event != nil {
		wg.Go(func() {
			select {
			case <-time.After(time.Until(t0.Add(eventAt))):
				event()
			case <-ctx.Done():
			}
		})
	}
	timer := time.NewTimer(0)
	defer timer.Stop()
	n := 0
	for i, at := range times {
		timer.Reset(time.Until(t0.Add(at)))
		select {
		case <-ctx.Done():
		case <-timer.C:
		}
		if ctx.Err() != nil {
			break
		}
		o := &out[i]
		o.Seq, o.ID, o.Planned = i, fmt.Sprintf("%s-%05d", idPrefix, i), at
		n = i + 1
		url := urls[i%len(urls)]
		wg.Go(func() { stream(ctx, client, url, body, tokens, t0, o) })
	}
	wg.Wait()
	return out[:n]
}

func requestBody(tokens int) []byte {
	b, err := json.Marshal(map[string]any{
		"model": model, "stream": true, "max_tokens": tokens,
		"messages": []map[string]string{{"role": "user", "content": "Tell me about load balancing."}},
	})
	if err != nil {
		panic(err)
	}
	return b
}

// sseChunk is what the client reads of a streamed chunk.
type sseChunk struct {
	Choices []struct {
		Delta struct {
			Content string `json:"content"`
		} `json:"delta"`
	} `json:"choices"`
}

// stream sends one request and reads its SSE answer to the end, checking
// that it is one whole answer of the node that sent it.
func stream(ctx context.Context, client *http.Client, url string, body []byte, tokens int, t0 time.Time, o *outcome) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url+"/v1/chat/completions", bytes.NewReader(body))
	if err != nil {
		o.Err = err.Error()
		return
	}
	req.Header = http.Header{"Content-Type": {"application/json"}, "X-Request-Id": {o.ID}}
	sent := time.Now()
	o.Sent = sent.Sub(t0)
	defer func() { o.Total = time.Since(sent) }()
	resp, err := client.Do(req)
	if err != nil {
		o.Err = err.Error()
		return
	}
	defer resp.Body.Close()
	o.Status, o.Node = resp.StatusCode, resp.Header.Get("X-Sim-Node")
	if resp.StatusCode != http.StatusOK {
		snippet, _ := io.ReadAll(io.LimitReader(resp.Body, 300))
		o.Err = fmt.Sprintf("status %d: %s", resp.StatusCode, strings.TrimSpace(string(snippet)))
		return
	}
	var text strings.Builder
	done := false
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		payload, ok := strings.CutPrefix(sc.Text(), "data:")
		if !ok {
			continue
		}
		payload = strings.TrimSpace(payload)
		if payload == "[DONE]" {
			done = true
			continue
		}
		var c sseChunk
		if err := json.Unmarshal([]byte(payload), &c); err != nil {
			o.Err = "malformed chunk: " + err.Error()
			return
		}
		for _, ch := range c.Choices {
			if ch.Delta.Content != "" && text.Len() == 0 {
				o.TTFT = time.Since(sent)
			}
			text.WriteString(ch.Delta.Content)
		}
	}
	switch {
	case sc.Err() != nil:
		o.Err = "stream broken: " + sc.Err().Error()
	case !done:
		o.Err = "stream ended without [DONE]"
	case text.String() != simnode.Text(o.Node, tokens):
		o.Err = fmt.Sprintf("not one whole answer of %q: %.60q", o.Node, text.String())
	}
}
