package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/openai/openai-go/v3"
	"github.com/openai/openai-go/v3/option"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

// waitNodes waits until the balancer's /health reports n live nodes.
func waitNodes(t *testing.T, base string, n int) time.Duration {
	t.Helper()
	want := fmt.Sprintf(`"nodes_found":%d,`, n)
	return eventually(t, 15*time.Second, func() error {
		resp, err := http.Get(base + "/health")
		if err != nil {
			return err
		}
		defer resp.Body.Close()
		body, err := io.ReadAll(resp.Body)
		if err != nil || !strings.Contains(string(body), want) {
			return fmt.Errorf("health: %s %v", body, err)
		}
		return nil
	})
}

func TestExampleCaddyfileWithOpenAISDK(t *testing.T) {
	c := newCluster(t)
	a := c.addNode("node-a", simnode.Config{})
	b := c.addNode("node-b", simnode.Config{})
	solo := c.addNode("node-c", simnode.Config{Models: []string{"sim-model", "solo-model"}})
	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 3)

	client := openai.NewClient(option.WithBaseURL(base+"/v1"), option.WithAPIKey("unused"), option.WithMaxRetries(0))
	ctx := context.Background()
	params := openai.ChatCompletionNewParams{
		Model:    "sim-model",
		Messages: []openai.ChatCompletionMessageParamUnion{openai.UserMessage("hello")},
	}

	for i := 0; i < 15; i++ {
		resp, err := client.Chat.Completions.New(ctx, params)
		require.NoError(t, err)
		require.Len(t, resp.Choices, 1)
		require.Contains(t, resp.Choices[0].Message.Content, "-tok0 ")
		require.Equal(t, "stop", resp.Choices[0].FinishReason)

		stream := client.Chat.Completions.NewStreaming(ctx, params)
		var text strings.Builder
		chunks := 0
		for stream.Next() {
			chunks++
			if ch := stream.Current(); len(ch.Choices) > 0 {
				text.WriteString(ch.Choices[0].Delta.Content)
			}
		}
		require.NoError(t, stream.Err())
		require.NoError(t, stream.Close())
		require.Greater(t, chunks, 1)
		require.True(t, fromOneNode(text.String(), "node-a", "node-b", "node-c"), "stream mixes nodes: %q", text.String())
	}

	// Raw streams end with data: [DONE].
	for i := 0; i < 6; i++ {
		resp, err := http.Post(base+"/v1/chat/completions", "application/json",
			strings.NewReader(`{"model":"sim-model","stream":true,"messages":[{"role":"user","content":"hi"}]}`))
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, resp.StatusCode)
		require.Equal(t, "text/event-stream", strings.Split(resp.Header.Get("Content-Type"), ";")[0])
		events := sseEvents(t, resp.Body)
		resp.Body.Close()
		require.Equal(t, "[DONE]", events[len(events)-1])
	}

	for _, n := range []*testNode{a, b, solo} {
		require.Positive(t, n.Stats().Completed, "node %s served no traffic", n.ID)
	}

	// A model only node-c serves goes only to node-c.
	before := a.Stats().Received + b.Stats().Received
	for i := 0; i < 10; i++ {
		status, node, body, err := chat(base, "solo-model")
		require.NoError(t, err)
		require.Equal(t, http.StatusOK, status, body)
		require.Equal(t, "node-c", node)
	}
	require.Equal(t, before, a.Stats().Received+b.Stats().Received)
}

// fromOneNode reports whether every token of a generated text names the
// same one of the nodes.
func fromOneNode(text string, ids ...string) bool {
	for _, id := range ids {
		if strings.Count(text, id+"-tok") == strings.Count(text, "-tok") && strings.Count(text, "-tok") > 0 {
			return true
		}
	}
	return false
}
