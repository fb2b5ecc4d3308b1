package e2e

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

// hedgedCaddyfile is a site running ai_lb → hedge → reverse_proxy, with the
// given hedge options (response_headers is always on) and extra site
// directives. The hedging tests need the slow node to keep getting first
// attempts, so p2c's time-to-first-token estimates forget at once (a 1 ms
// half-life) and it picks by load alone.
func hedgedCaddyfile(t *testing.T, port int, hedgeOpts, extra string) string {
	t.Helper()
	return testCaddyfile(t, fmt.Sprintf(`{
	ai_lb {
		redis {env.REDIS_URL}
		load {
			ttft_half_life 1ms
		}
	}
}
:8000 {
%s
	ai_lb
	hedge {
%s
		response_headers
	}
	reverse_proxy {
		dynamic ai_lb
		lb_policy p2c
	}
}
`, extra, hedgeOpts), port)
}

// startHedged loads a hedging site in front of the cluster's registered
// nodes and waits until it sees them all.
func (c *cluster) startHedged(hedgeOpts, extra string) string {
	c.t.Helper()
	port := freePort(c.t)
	startCaddy(c.t, hedgedCaddyfile(c.t, port, hedgeOpts, extra))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(c.t, base, len(c.nodes))
	return base
}

// hostport is the node's address as reverse_proxy names it (X-AI-LB-Node).
func (n *testNode) hostport() string { return strings.TrimPrefix(n.URL, "http://") }

// nodeByHostport maps X-AI-LB-Node values to node IDs.
func (c *cluster) nodeByHostport() map[string]string {
	m := make(map[string]string)
	for _, n := range c.nodes {
		m[n.hostport()] = n.ID
	}
	return m
}

func (c *cluster) received() int64 {
	var sum int64
	for _, n := range c.nodes {
		sum += n.Stats().Received
	}
	return sum
}

func (c *cluster) inFlight() int64 {
	var sum int64
	for _, n := range c.nodes {
		sum += n.Stats().InFlight
	}
	return sum
}

func (c *cluster) resetCounters() {
	for _, n := range c.nodes {
		n.Reset()
	}
}

// streamClient has room for many concurrent streams to the balancer.
var streamClient = &http.Client{Transport: &http.Transport{
	MaxIdleConns: 512, MaxIdleConnsPerHost: 512, IdleConnTimeout: 30 * time.Second,
}}

// answer is one chat completion as a client saw it.
type answer struct {
	id     string // X-Request-Id sent
	status int
	header http.Header
	body   string
	end    time.Time // when the body had been read in full
	took   time.Duration
}

func (a answer) hedged() string   { return a.header.Get("X-AI-LB-Hedged") }
func (a answer) simNode() string  { return a.header.Get("X-Sim-Node") }
func (a answer) lbNode() string   { return a.header.Get("X-AI-LB-Node") }
func (a answer) attempts() string { return a.header.Get("X-AI-LB-Attempts") }

// chatBody is a chat completion request body.
func chatBody(model string, stream bool, content string) string {
	b, _ := json.Marshal(map[string]any{
		"model": model, "stream": stream,
		"messages": []map[string]string{{"role": "user", "content": content}},
	})
	return string(b)
}

// post sends a chat completion with an X-Request-Id and reads the answer.
func post(ctx context.Context, base, id, body string) (answer, error) {
	return postTo(ctx, base+"/v1/chat/completions", id, body)
}

// postTo posts a JSON body to url with an X-Request-Id and reads the answer.
func postTo(ctx context.Context, url, id, body string) (answer, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, strings.NewReader(body))
	if err != nil {
		return answer{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("X-Request-Id", id)
	start := time.Now()
	resp, err := streamClient.Do(req)
	if err != nil {
		return answer{}, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	end := time.Now()
	return answer{id: id, status: resp.StatusCode, header: resp.Header, body: string(b), end: end, took: end.Sub(start)}, err
}

// chunk is the part of a chat.completion.chunk the tests read.
type chunk struct {
	ID      string `json:"id"`
	Choices []struct {
		Delta struct {
			Role    *string `json:"role"`
			Content *string `json:"content"`
		} `json:"delta"`
		FinishReason *string `json:"finish_reason"`
	} `json:"choices"`
}

// settled waits until every request of loser has ended, and returns its
// records and those of the cluster's other nodes by request ID.
func (c *cluster) settled(t *testing.T, loser *testNode) ([]simnode.Record, map[string]simnode.Record) {
	t.Helper()
	var recs []simnode.Record
	eventually(t, 10*time.Second, func() error {
		recs = loser.Requests()
		for _, r := range recs {
			if r.End.IsZero() {
				return fmt.Errorf("request %s on %s still running", r.RequestID, loser.ID)
			}
		}
		return nil
	})
	others := make(map[string]simnode.Record)
	for _, n := range c.nodes {
		if n != loser {
			for _, r := range n.Requests() {
				others[r.RequestID] = r
			}
		}
	}
	return recs, others
}

// checkStream checks that an SSE body is exactly one node's whole answer of
// tokens tokens, as simnode sends it: a role chunk, one chunk per token in
// order, a finish chunk and [DONE], all with the same completion id.
func checkStream(body, node string, tokens int) error {
	var events []string
	sc := bufio.NewScanner(strings.NewReader(body))
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "":
		case strings.HasPrefix(line, "data: "):
			events = append(events, strings.TrimPrefix(line, "data: "))
		default:
			return fmt.Errorf("unexpected SSE line %q", line)
		}
	}
	if len(events) != tokens+3 {
		return fmt.Errorf("%d events, want %d", len(events), tokens+3)
	}
	if events[len(events)-1] != "[DONE]" {
		return fmt.Errorf("last event %q, want [DONE]", events[len(events)-1])
	}
	var text strings.Builder
	var id string
	for i, e := range events[:len(events)-1] {
		var ch chunk
		if err := json.Unmarshal([]byte(e), &ch); err != nil {
			return fmt.Errorf("event %d %q: %v", i, e, err)
		}
		if len(ch.Choices) != 1 {
			return fmt.Errorf("event %d has %d choices", i, len(ch.Choices))
		}
		if i == 0 {
			id = ch.ID
			if !strings.HasPrefix(id, "chatcmpl-"+node+"-") {
				return fmt.Errorf("completion id %q is not from %s", id, node)
			}
		} else if ch.ID != id {
			return fmt.Errorf("event %d has completion id %q, the stream began with %q", i, ch.ID, id)
		}
		c := ch.Choices[0]
		switch {
		case i == 0:
			if c.Delta.Role == nil || *c.Delta.Role != "assistant" {
				return fmt.Errorf("first event %q has no assistant role", e)
			}
		case i <= tokens:
			want := simnode.TokenText(node, i-1)
			if c.Delta.Content == nil || *c.Delta.Content != want {
				return fmt.Errorf("event %d is %q, want token %q", i, e, want)
			}
			text.WriteString(*c.Delta.Content)
		default:
			if c.FinishReason == nil || *c.FinishReason != "stop" {
				return fmt.Errorf("event %d %q has no finish reason", i, e)
			}
		}
	}
	if got, want := text.String(), simnode.Text(node, tokens); got != want {
		return fmt.Errorf("text %q, want %q", got, want)
	}
	return nil
}

// checkFull checks a non-streamed answer is node's whole answer.
func checkFull(body, node string, tokens int) error {
	var out struct {
		Choices []struct {
			Message struct {
				Content string `json:"content"`
			} `json:"message"`
		} `json:"choices"`
	}
	if err := json.Unmarshal([]byte(body), &out); err != nil {
		return fmt.Errorf("%q: %v", body, err)
	}
	if len(out.Choices) != 1 || out.Choices[0].Message.Content != simnode.Text(node, tokens) {
		return fmt.Errorf("answer %q is not %s's %d tokens", body, node, tokens)
	}
	return nil
}

// checkAnswer checks a successful answer came whole from the node both
// X-Sim-Node and X-AI-LB-Node name.
func (c *cluster) checkAnswer(t *testing.T, a answer, stream bool, tokens int) {
	t.Helper()
	require.Equal(t, http.StatusOK, a.status, a.body)
	node := a.simNode()
	require.NotEmpty(t, node)
	if a.hedged() != "" { // the hedge handled it (response_headers)
		require.Equal(t, node, c.nodeByHostport()[a.lbNode()], "X-AI-LB-Node %q names another node than X-Sim-Node", a.lbNode())
	}
	if stream {
		require.NoError(t, checkStream(a.body, node, tokens), "request %s", a.id)
	} else {
		require.NoError(t, checkFull(a.body, node, tokens), "request %s", a.id)
	}
}

// metricValue reads one unlabelled counter from the admin API's /metrics
// (0 when it has not been created yet).
func metricValue(t *testing.T, name string) float64 {
	t.Helper()
	resp, err := http.Get(fmt.Sprintf("http://localhost:%d/metrics", adminPort))
	require.NoError(t, err)
	defer resp.Body.Close()
	require.Equal(t, http.StatusOK, resp.StatusCode)
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), name+" "); ok {
			f, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			require.NoError(t, err)
			return f
		}
	}
	require.NoError(t, sc.Err())
	return 0
}

func TestHedgeFastClusterSendsNoHedges(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		c.addNode(id, simnode.Config{TTFT: 5 * time.Millisecond})
	}
	base := c.startHedged("delay 500ms\n\t\tbudget 100%", "")
	before := metricValue(t, `ai_lb_hedge_attempts_total{role="hedge"}`)

	const n = 30
	for i := range n {
		stream := i%2 == 0
		a, err := post(context.Background(), base, fmt.Sprintf("fast-%d", i), chatBody("sim-model", stream, "hi"))
		require.NoError(t, err)
		c.checkAnswer(t, a, stream, 8)
		require.Equal(t, "false", a.hedged())
		require.Equal(t, "1", a.attempts())
	}
	require.EqualValues(t, n, c.received(), "one upstream request per client request")
	require.Equal(t, before, metricValue(t, `ai_lb_hedge_attempts_total{role="hedge"}`))
}

func TestHedgeSlowNodeLoses(t *testing.T) {
	c := newCluster(t)
	const tokens = 16
	// The fast nodes' streams last a while (16 × 15 ms), so that a loser's
	// abort and the winner's end are far apart.
	fast := simnode.Config{TTFT: 5 * time.Millisecond, InterTokenLatency: 15 * time.Millisecond, Tokens: tokens}
	c.addNode("fast-a", fast)
	c.addNode("fast-b", fast)
	slow := c.addNode("slow", simnode.Config{TTFT: 5 * time.Second, Tokens: tokens})
	base := c.startHedged("delay 150ms\n\t\tbudget 100%", "")

	// Sequential requests: p2c sends about a third to the slow node first.
	// Go on until enough streamed and non-streamed ones have.
	answers := make(map[string]answer)
	streamed := make(map[string]bool)
	slowHits := func() (streams, full int) {
		for _, r := range slow.Requests() {
			if streamed[r.RequestID] {
				streams++
			} else {
				full++
			}
		}
		return streams, full
	}
	for i := 0; i < 300; i++ {
		if s, f := slowHits(); s >= 4 && f >= 2 {
			break
		}
		stream := i%2 == 0
		id := fmt.Sprintf("req-%d", i)
		streamed[id] = stream
		a, err := post(context.Background(), base, id, chatBody("sim-model", stream, "hi"))
		require.NoError(t, err)
		c.checkAnswer(t, a, stream, tokens)
		require.NotEqual(t, "slow", a.simNode())
		require.NotContains(t, a.body, "slow-tok")
		answers[a.id] = a
	}
	s, f := slowHits()
	t.Logf("%d requests, %d streamed and %d non-streamed went to the slow node first", len(answers), s, f)
	require.True(t, s >= 4 && f >= 2, "too few requests went to the slow node first")

	// Every request to the slow node was cancelled; for streams, before
	// the winner's stream ended. (A non-streamed answer wins with its first
	// byte, which simnode sends when it ends.)
	slowRecs, winnerRecs := c.settled(t, slow)
	for _, r := range slowRecs {
		a, ok := answers[r.RequestID]
		require.True(t, ok, "slow node record for unknown request %q", r.RequestID)
		require.True(t, r.Aborted, "slow node request %s was not cancelled: %+v", r.RequestID, r)
		require.True(t, r.FirstToken.IsZero())
		require.Equal(t, "true", a.hedged(), "request %s", a.id)
		require.Equal(t, "2", a.attempts(), "request %s", a.id)
		require.NotEqual(t, slow.hostport(), a.lbNode())
		w, ok := winnerRecs[r.RequestID]
		require.True(t, ok, "no winner record for %s", r.RequestID)
		require.False(t, w.Aborted)
		if !streamed[r.RequestID] {
			continue
		}
		require.True(t, r.End.Before(w.End), "request %s: the slow attempt ended at %v, after the winner's stream at %v", a.id, r.End, w.End)
		require.True(t, r.End.Before(a.end), "request %s: the slow attempt ended at %v, after the client had the whole stream at %v", a.id, r.End, a.end)
	}
	require.Zero(t, slow.Stats().Completed)
	require.EqualValues(t, len(slowRecs), slow.Stats().Aborted)
}

func TestHedgeClientDisconnectAbortsAll(t *testing.T) {
	c := newCluster(t)
	const ttft = 5 * time.Second
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		c.addNode(id, simnode.Config{TTFT: ttft})
	}
	base := c.startHedged("delay 100ms\n\t\tbudget 100%", "")

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	errc := make(chan error, 1)
	go func() {
		_, err := post(ctx, base, "gone", chatBody("sim-model", true, "hi"))
		errc <- err
	}()
	eventually(t, 10*time.Second, func() error {
		if r, f := c.received(), c.inFlight(); r != 2 || f != 2 {
			return fmt.Errorf("%d received, %d in flight", r, f)
		}
		return nil
	})
	cancel()
	cancelled := time.Now()
	require.ErrorIs(t, <-errc, context.Canceled)

	// Both attempts are aborted, long before their first token was due.
	eventually(t, ttft/2, func() error {
		for _, n := range c.nodes {
			for _, r := range n.Requests() {
				if !r.Aborted {
					return fmt.Errorf("%s: request not aborted: %+v", n.ID, r)
				}
			}
		}
		return nil
	})
	t.Logf("attempts aborted %v after the client left", time.Since(cancelled))
	require.EqualValues(t, 2, c.received(), "no attempt started after the client left")
	require.Zero(t, c.inFlight())
}

func TestHedgeBudgetBoundsExtraLoad(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"node-a", "node-b", "node-c", "node-d"} {
		c.addNode(id, simnode.Config{TTFT: 300 * time.Millisecond})
	}
	base := c.startHedged("delay 20ms\n\t\tbudget 10%\n\t\tbudget_min 1\n\t\tbudget_window 1m", "")
	refusals := metricValue(t, "ai_lb_hedge_budget_refusals_total")

	const n, workers = 60, 6
	ids := make(chan int, n)
	for i := range n {
		ids <- i
	}
	close(ids)
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range workers {
		wg.Go(func() {
			for i := range ids {
				a, err := post(context.Background(), base, fmt.Sprintf("budget-%d", i), chatBody("sim-model", i%2 == 0, "hi"))
				if err == nil && a.status != http.StatusOK {
					err = fmt.Errorf("status %d: %s", a.status, a.body)
				}
				if err != nil {
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		require.NoError(t, err)
	}

	total := c.received()
	limit := int64(n + int(math.Ceil(0.1*n)) + 1)
	t.Logf("%d upstream requests for %d client requests (limit %d)", total, n, limit)
	require.LessOrEqual(t, total, limit, "hedges exceeded the budget")
	require.Greater(t, total, int64(n), "no hedge at all")
	require.Greater(t, metricValue(t, "ai_lb_hedge_budget_refusals_total"), refusals)
}

func TestHedgeBodyOverCapProxiedOnce(t *testing.T) {
	c := newCluster(t)
	c.addNode("node-a", simnode.Config{TTFT: 300 * time.Millisecond})
	c.addNode("node-b", simnode.Config{TTFT: 300 * time.Millisecond})
	base := c.startHedged("delay 20ms\n\t\tbudget 100%\n\t\tmax_body_size 1KiB", "")

	big := chatBody("sim-model", true, strings.Repeat("x", 4000))
	require.Greater(t, len(big), 4000)
	a, err := post(context.Background(), base, "big", big)
	require.NoError(t, err)
	c.checkAnswer(t, a, true, 8)
	require.EqualValues(t, 1, c.received(), "a body over max_body_size is proxied once")
	require.Empty(t, a.hedged(), "the hedge passed it through")

	c.resetCounters()
	a, err = post(context.Background(), base, "small", chatBody("sim-model", true, "hi"))
	require.NoError(t, err)
	c.checkAnswer(t, a, true, 8)
	require.EqualValues(t, 2, c.received(), "a small body is hedged")
	require.Equal(t, "true", a.hedged())
}

func TestHedgeConcurrentStreamsByteExact(t *testing.T) {
	c := newCluster(t)
	const tokens = 12
	cfg := simnode.Config{TTFT: 20 * time.Millisecond, TTFTJitter: 0.5, SlowFraction: 0.3, SlowFactor: 10,
		InterTokenLatency: 3 * time.Millisecond, Tokens: tokens}
	for _, id := range []string{"node-a", "node-b", "node-c"} {
		c.addNode(id, cfg)
	}
	slower := cfg
	slower.SlowFraction = 0.6
	c.addNode("node-d", slower)
	base := c.startHedged("delay 50ms\n\t\tbudget 100%", "")
	wonBefore := metricValue(t, "ai_lb_hedge_won_total")

	const n = 200
	answers := make([]answer, n)
	errs := make([]error, n)
	start := make(chan struct{})
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			<-start
			answers[i], errs[i] = post(context.Background(), base, fmt.Sprintf("conc-%d", i), chatBody("sim-model", true, "hi"))
		})
	}
	close(start)
	wg.Wait()

	hedged := 0
	winners := make(map[string]string) // request id → node
	for i, a := range answers {
		require.NoError(t, errs[i])
		c.checkAnswer(t, a, true, tokens)
		require.Equal(t, "text/event-stream", strings.Split(a.header.Get("Content-Type"), ";")[0])
		if a.hedged() == "true" {
			hedged++
		}
		winners[a.id] = a.simNode()
	}
	won := metricValue(t, "ai_lb_hedge_won_total") - wonBefore
	t.Logf("%d of %d requests hedged, %v won by the hedge", hedged, n, won)
	require.Positive(t, hedged, "no request was hedged: the test proves nothing")
	require.Positive(t, won, "no hedge won: the test proves nothing")

	// Each request has a completed record on the node that answered it.
	// (Losers are not checked: one whose first token raced the winner's
	// may have sent its whole short stream before its connection closed.)
	completed := make(map[string][]string)
	eventually(t, 10*time.Second, func() error {
		if f := c.inFlight(); f != 0 {
			return fmt.Errorf("%d still in flight", f)
		}
		return nil
	})
	for _, nd := range c.nodes {
		for _, r := range nd.Requests() {
			if !r.Aborted && r.Status == http.StatusOK {
				completed[r.RequestID] = append(completed[r.RequestID], nd.ID)
			}
		}
	}
	for id, node := range winners {
		require.Contains(t, completed[id], node, "request %s: its node has no completed record", id)
	}
}

func TestHedgeRetryableFailureStartsNextAttempt(t *testing.T) {
	c := newCluster(t)
	bad := c.addNode("bad", simnode.Config{FailRate: 1})
	good := c.addNode("good", simnode.Config{})
	// The delay never passes during the test: only the failure path can
	// start a second attempt.
	const delay = 10 * time.Second
	base := c.startHedged("delay 10s\n\t\tbudget 100%", "")

	for i := range 20 {
		stream := i%2 == 0
		a, err := post(context.Background(), base, fmt.Sprintf("retry-%d", i), chatBody("sim-model", stream, "hi"))
		require.NoError(t, err)
		c.checkAnswer(t, a, stream, 8)
		require.Equal(t, "good", a.simNode())
		require.Less(t, a.took, delay, "the failure did not start the next attempt at once")
	}
	require.Positive(t, bad.Stats().Failed, "no request went to the failing node first")
	require.Zero(t, good.Stats().Failed)

	// When every node fails, the client gets the last upstream answer.
	for _, n := range c.nodes {
		n.Update(func(cfg *simnode.Config) { cfg.FailRate, cfg.FailStatus = 1, http.StatusServiceUnavailable })
	}
	for i, stream := range []bool{false, true} {
		c.resetCounters()
		a, err := post(context.Background(), base, fmt.Sprintf("allfail-%d", i), chatBody("sim-model", stream, "hi"))
		require.NoError(t, err)
		require.Equal(t, http.StatusServiceUnavailable, a.status, a.body)
		require.Contains(t, a.body, "simulated_failure", "the upstream's own answer")
		require.Contains(t, []string{"bad", "good"}, a.simNode())
		require.Less(t, a.took, delay)
		// The first attempt and the ai_lb handler's two retries.
		require.EqualValues(t, 3, c.received())
		require.EqualValues(t, 3, bad.Stats().Failed+good.Stats().Failed)
	}
}

func TestHedgeClientErrorNotHedged(t *testing.T) {
	c := newCluster(t)
	for _, id := range []string{"node-a", "node-b"} {
		c.addNode(id, simnode.Config{TTFT: 2 * time.Second})
	}
	// Two nodes the registry says serve ghost-model, which they do not:
	// simnode answers 404 model_not_found.
	for _, id := range []string{"ghost-a", "ghost-b"} {
		n := c.startNode(id, simnode.Config{TTFT: 2 * time.Second})
		require.NoError(t, c.client.Register(context.Background(), registry.Node{
			ID: n.ID, URL: n.URL, Models: []string{"ghost-model"}, TTLMillis: registry.DefaultTTL.Milliseconds(),
		}))
	}
	base := c.startHedged("delay 200ms\n\t\tbudget 100%", "")

	for i, stream := range []bool{false, true} {
		// An empty messages array: the node's 400 is final.
		c.resetCounters()
		body := fmt.Sprintf(`{"model":"sim-model","stream":%v,"messages":[]}`, stream)
		a, err := post(context.Background(), base, fmt.Sprintf("bad-%d", i), body)
		require.NoError(t, err)
		require.Equal(t, http.StatusBadRequest, a.status, a.body)
		require.Contains(t, a.body, "messages must be a non-empty array", "the node's own answer")
		require.Contains(t, []string{"node-a", "node-b"}, a.simNode())
		require.EqualValues(t, 1, c.received(), "a client error is not hedged nor retried")

		// A model the node does not serve: the node's 404.
		c.resetCounters()
		a, err = post(context.Background(), base, fmt.Sprintf("ghost-%d", i), chatBody("ghost-model", stream, "hi"))
		require.NoError(t, err)
		require.Equal(t, http.StatusNotFound, a.status, a.body)
		require.Contains(t, a.body, "model_not_found")
		require.Contains(t, []string{"ghost-a", "ghost-b"}, a.simNode())
		require.EqualValues(t, 1, c.received(), "a client error is not hedged nor retried")
	}
}

func TestHedgeAccessLogNamesWinner(t *testing.T) {
	c := newCluster(t)
	fast := c.addNode("fast", simnode.Config{TTFT: 5 * time.Millisecond, InterTokenLatency: 5 * time.Millisecond})
	slow := c.addNode("slow", simnode.Config{TTFT: 5 * time.Second})
	logFile := filepath.Join(t.TempDir(), "access.log")
	base := c.startHedged("delay 100ms\n\t\tbudget 100%", fmt.Sprintf(`	log {
		output file %s
		format json
	}
	log_append upstream {http.reverse_proxy.upstream.hostport}
	log_append upstream_status {http.reverse_proxy.status_code}`, logFile))

	answers := make(map[string]answer)
	for i := 0; i < 100 && len(slow.Requests()) < 3; i++ {
		a, err := post(context.Background(), base, fmt.Sprintf("log-%d", i), chatBody("sim-model", i%2 == 0, "hi"))
		require.NoError(t, err)
		c.checkAnswer(t, a, i%2 == 0, 8)
		answers[a.id] = a
	}
	require.NotEmpty(t, slow.Requests(), "no request went to the slow node first")

	type entry struct {
		Upstream       string `json:"upstream"`
		UpstreamStatus any    `json:"upstream_status"`
		Status         int    `json:"status"`
		Request        struct {
			Headers map[string][]string `json:"headers"`
		} `json:"request"`
	}
	eventually(t, 10*time.Second, func() error {
		raw, err := os.ReadFile(logFile)
		if err != nil {
			return err
		}
		seen := 0
		for line := range bytes.Lines(raw) {
			var e entry
			if err := json.Unmarshal(line, &e); err != nil {
				return fmt.Errorf("log line %q: %v", line, err)
			}
			ids := e.Request.Headers["X-Request-Id"]
			if len(ids) != 1 {
				continue
			}
			a, ok := answers[ids[0]]
			if !ok {
				continue
			}
			seen++
			if e.Upstream != a.lbNode() || e.Upstream != fast.hostport() {
				return fmt.Errorf("request %s: access log names upstream %q, the answer came from %q", a.id, e.Upstream, a.lbNode())
			}
			if fmt.Sprint(e.UpstreamStatus) != "200" || e.Status != http.StatusOK {
				return fmt.Errorf("request %s: logged statuses %v/%d", a.id, e.UpstreamStatus, e.Status)
			}
		}
		if seen != len(answers) {
			return fmt.Errorf("%d of %d requests logged", seen, len(answers))
		}
		return nil
	})
}

func TestHedgeNoGoroutinesLeftAfterUnload(t *testing.T) {
	c := newCluster(t)
	c.addNode("fast-a", simnode.Config{})
	c.addNode("fast-b", simnode.Config{})
	slow := c.addNode("slow", simnode.Config{TTFT: 5 * time.Second})
	base := c.startHedged("delay 50ms\n\t\tbudget 100%", "")

	// Traffic with hedges, cancelled attempts and client disconnects.
	var wg sync.WaitGroup
	for i := range 30 {
		wg.Go(func() {
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			if i%5 == 0 {
				time.AfterFunc(20*time.Millisecond, cancel)
			}
			a, err := post(ctx, base, fmt.Sprintf("leak-%d", i), chatBody("sim-model", i%2 == 0, "hi"))
			if err == nil && a.status != http.StatusOK {
				err = fmt.Errorf("status %d: %s", a.status, a.body)
			}
			if err != nil && !errors.Is(err, context.Canceled) {
				t.Errorf("request %d: %v", i, err)
			}
		})
	}
	wg.Wait()
	require.NotEmpty(t, slow.Requests())

	// Unloading every config leaves no goroutine of ours behind.
	unloadAndRequireNoGoroutines(t)
}
