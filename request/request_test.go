package request

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"
)

func TestInfoTried(t *testing.T) {
	var nilReq *Info
	require.False(t, nilReq.Tried("a"))

	req := new(Info)
	require.False(t, req.Tried("a"))
	require.Empty(t, req.TriedDials())
	req.MarkTried("a")
	req.MarkTried("b")
	req.MarkTried("a")
	require.True(t, req.Tried("a"))
	require.True(t, req.Tried("b"))
	require.False(t, req.Tried("c"))
	got := req.TriedDials()
	require.Equal(t, []string{"a", "b"}, got, "in order, once each")
	got[0] = "changed"
	require.Equal(t, []string{"a", "b"}, req.TriedDials(), "TriedDials returns a copy")
}

func TestInfoTriedConcurrent(t *testing.T) {
	req := new(Info)
	const workers, dials = 8, 50
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range dials {
				d := fmt.Sprintf("10.0.0.%d:80", (i+w)%dials)
				req.MarkTried(d)
				if !req.Tried(d) {
					t.Errorf("%s not tried right after MarkTried", d)
				}
				if i%10 == 0 {
					_ = req.TriedDials()
				}
			}
		}()
	}
	wg.Wait()
	got := req.TriedDials()
	require.Len(t, got, dials)
	seen := map[string]bool{}
	for _, d := range got {
		require.False(t, seen[d], "duplicate %s", d)
		seen[d] = true
	}
}

func TestNewContext(t *testing.T) {
	require.Nil(t, FromContext(context.Background()))
	req := new(Info)
	require.Same(t, req, FromContext(NewContext(context.Background(), req)))
}

// closeRecorder is a request body that records whether it was closed.
type closeRecorder struct {
	io.Reader
	closed bool
}

func (c *closeRecorder) Close() error {
	c.closed = true
	return nil
}

// newVarsRequest returns a request with a Caddy vars table, as Caddy's
// server sets one up for every request.
func newVarsRequest(body io.Reader) *http.Request {
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", body)
	return r.WithContext(context.WithValue(r.Context(), caddyhttp.VarsCtxKey, map[string]any{}))
}

func TestOf(t *testing.T) {
	big := `{"model":"m","pad":"` + strings.Repeat("x", DefaultMaxBody) + `"}`
	tests := []struct {
		name  string
		body  string
		model string
	}{
		{name: "model", body: `{"model":"llama-3","stream":true,"messages":[{"role":"user","content":"hi"}]}`, model: "llama-3"},
		{name: "no model", body: `{"messages":[]}`},
		{name: "malformed", body: `{"model":"llama-3"`},
		{name: "model not text", body: `{"model":3}`},
		{name: "not json", body: "model=llama-3"},
		{name: "too large to read", body: big},
		{name: "exactly the limit", body: `{"model":"m","pad":"` + strings.Repeat("x", DefaultMaxBody-len(`{"model":"m","pad":""}`)) + `"}`, model: "m"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			orig := &closeRecorder{Reader: strings.NewReader(tt.body)}
			r := newVarsRequest(nil)
			r.Body = orig

			req := Of(r)
			require.Equal(t, tt.model, req.Model)
			require.Same(t, req, caddyhttp.GetVar(r.Context(), varKey), "kept in the request's vars")
			require.Same(t, req, Of(r), "a second call finds the same Info")

			// The proxy reads the whole body, byte for byte.
			got, err := io.ReadAll(r.Body)
			require.NoError(t, err)
			require.True(t, bytes.Equal([]byte(tt.body), got), "the body was not put back intact (%d bytes, want %d)", len(got), len(tt.body))
			require.NoError(t, r.Body.Close())
			require.True(t, orig.closed, "closing the body closes the client's")
		})
	}
}

func TestOfNoBody(t *testing.T) {
	for name, body := range map[string]io.ReadCloser{"nil": nil, "NoBody": http.NoBody} {
		t.Run(name, func(t *testing.T) {
			r := newVarsRequest(nil)
			r.Body = body
			req := Of(r)
			require.NotNil(t, req)
			require.Empty(t, req.Model)
			require.Equal(t, body, r.Body, "no body to put back")
			require.Same(t, req, Of(r))
		})
	}
}

func TestOfHandlerRequest(t *testing.T) {
	const body = `{"model":"from-body"}`
	r := newVarsRequest(strings.NewReader(body))
	bodyBefore := r.Body
	req := &Info{Model: "from-handler"}
	r = r.WithContext(NewContext(r.Context(), req))

	require.Same(t, req, Of(r))
	require.Equal(t, bodyBefore, r.Body, "the handler's Info is used without reading the body")
	require.Nil(t, caddyhttp.GetVar(r.Context(), varKey))
}

func TestOfWithoutVars(t *testing.T) {
	// Outside Caddy's server there is no vars table: every call parses the
	// body again, and it still reaches the proxy intact.
	const body = `{"model":"m","stream":true}`
	r := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
	for range 3 {
		req := Of(r)
		require.Equal(t, "m", req.Model)
	}
	got, err := io.ReadAll(r.Body)
	require.NoError(t, err)
	require.Equal(t, body, string(got))
}
