package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/gateway"
	"github.com/ai-lb/ai-lb/internal/testredis"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/selection"
)

// BenchmarkRequestPath measures ai-lb's own per-request work: the ai_lb
// handler (body read, model lookup, availability check), the source's
// sample and the p2c pick, for one model served by 3 and by 1,000 nodes.
// The modules are provisioned in a real Caddy config against a real Redis;
// the proxying itself is Caddy's and is not included.
func BenchmarkRequestPath(b *testing.B) {
	for _, nodes := range []int{3, 1000} {
		for _, size := range []struct {
			name string
			body []byte
		}{{"small", sizedChatBody(1)}, {"40KB", sizedChatBody(40)}} {
			b.Run(fmt.Sprintf("nodes=%d/body=%s", nodes, size.name), func(b *testing.B) {
				benchRequestPath(b, nodes, size.body)
			})
		}
	}
}

func benchRequestPath(b *testing.B, nodes int, body []byte) {
	rs := testredis.Start(b)
	client, err := registry.Open(rs.URL(), "")
	require.NoError(b, err)
	defer client.Close()
	for i := 0; i < nodes; i++ {
		require.NoError(b, client.Register(context.Background(), registry.Node{
			ID: fmt.Sprintf("node-%d", i), URL: fmt.Sprintf("http://10.0.%d.%d:8000", i/250, i%250+1),
			Models: []string{"bench-model"}, TTLMillis: time.Hour.Milliseconds(),
		}))
	}
	b.Setenv("REDIS_URL", rs.URL())
	startCaddy(b, exampleCaddyfile(b, freePort(b)))

	ctx := caddy.ActiveContext()
	app, err := registry.FromContext(ctx)
	require.NoError(b, err)
	deadline := time.Now().Add(10 * time.Second)
	for len(app.Snapshot().ServingModel("bench-model")) != nodes {
		require.True(b, time.Now().Before(deadline), "registry never showed %d nodes", nodes)
		time.Sleep(10 * time.Millisecond)
	}
	handler, source, policy := new(gateway.Handler), new(selection.Source), new(selection.P2C)
	require.NoError(b, handler.Provision(ctx))
	require.NoError(b, source.Provision(ctx))
	require.NoError(b, policy.Provision(ctx))

	next := caddyhttp.HandlerFunc(func(w http.ResponseWriter, r *http.Request) error {
		ups, err := source.GetUpstreams(r)
		if err != nil {
			return err
		}
		if policy.Select(ups, r, w) == nil {
			return fmt.Errorf("no upstream selected")
		}
		w.WriteHeader(http.StatusNoContent) // as reverse_proxy answers
		return nil
	})
	var reader bytes.Reader
	req, err := http.NewRequest(http.MethodPost, "/v1/chat/completions", nil)
	require.NoError(b, err)
	req.ContentLength = int64(len(body))
	w := &discardWriter{header: http.Header{}}
	b.SetBytes(int64(len(body)))
	b.ReportAllocs()
	for b.Loop() {
		reader.Reset(body)
		req.Body = io.NopCloser(&reader)
		w.status = 0
		if err := handler.ServeHTTP(w, req, next); err != nil || w.status != http.StatusNoContent {
			b.Fatalf("request failed: %v (status %d)", err, w.status)
		}
	}
}

// sizedChatBody returns an OpenAI chat body of about kb KiB, shaped like an
// agent's: a long system prompt, tools and a few turns.
func sizedChatBody(kb int) []byte {
	var buf bytes.Buffer
	buf.WriteString(`{"model":"bench-model","stream":true,"stream_options":{"include_usage":true},"messages":[{"role":"system","content":"`)
	buf.WriteString(strings.Repeat("You are a careful assistant. ", max(1, kb*1024/29-60)))
	buf.WriteString(`"},{"role":"user","content":[{"type":"text","text":"What is the weather in Paris?"}]}],`)
	buf.WriteString(`"tools":[{"type":"function","function":{"name":"get_weather","parameters":{"type":"object","properties":{"city":{"type":"string"}}}}}],`)
	buf.WriteString(`"tool_choice":"auto","max_completion_tokens":512}`)
	return buf.Bytes()
}

// discardWriter is a ResponseWriter that records only the status.
type discardWriter struct {
	header http.Header
	status int
}

func (w *discardWriter) Header() http.Header         { return w.header }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(status int)      { w.status = status }
