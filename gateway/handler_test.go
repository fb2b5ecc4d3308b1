package gateway

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// countingReader counts the bytes read from it and fails with err (if
// any) once r is exhausted, as net/http's request body fails with
// io.ErrUnexpectedEOF when the client sends less than its Content-Length.
type countingReader struct {
	r   io.Reader
	n   int
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += n
	if err == io.EOF && c.err != nil {
		err = c.err
	}
	return n, err
}

func TestReadBody(t *testing.T) {
	const limit = 10
	for _, tc := range []struct {
		name          string
		body          string
		contentLength int64 // -1: chunked
		readErr       error
		status        int // 0: read
		code          string
		want          string
	}{
		{name: "declared over the limit", body: strings.Repeat("x", limit+1), contentLength: limit + 1,
			status: http.StatusRequestEntityTooLarge, code: "request_too_large"},
		{name: "declared far over the limit, nothing sent", contentLength: 1 << 40,
			status: http.StatusRequestEntityTooLarge, code: "request_too_large"},
		{name: "exactly the limit", body: strings.Repeat("x", limit), contentLength: limit,
			want: strings.Repeat("x", limit)},
		{name: "under the limit", body: `{"a":1}`, contentLength: 7, want: `{"a":1}`},
		{name: "empty", contentLength: 0, want: ""},
		{name: "chunked over the limit", body: strings.Repeat("x", limit+1), contentLength: -1,
			status: http.StatusRequestEntityTooLarge, code: "request_too_large"},
		{name: "chunked exactly the limit", body: strings.Repeat("x", limit), contentLength: -1,
			want: strings.Repeat("x", limit)},
		{name: "chunked under the limit", body: "abc", contentLength: -1, want: "abc"},
		{name: "shorter than declared", body: "abcd", contentLength: limit, readErr: io.ErrUnexpectedEOF,
			status: http.StatusBadRequest, code: "body_read_error"},
		{name: "chunked read error", body: "abc", contentLength: -1, readErr: errors.New("connection reset"),
			status: http.StatusBadRequest, code: "body_read_error"},
		{name: "a request_body limit ahead", body: "abc", contentLength: -1, readErr: &http.MaxBytesError{Limit: 2},
			status: http.StatusRequestEntityTooLarge, code: "request_too_large"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHandler(t, snapshot(true, nil))
			h.MaxBodySize = limit
			src := &countingReader{r: strings.NewReader(tc.body), err: tc.readErr}
			r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", src)
			r.ContentLength = tc.contentLength
			body, apiErr := h.readBody(r)
			if tc.status == 0 {
				require.Nil(t, apiErr)
				require.Equal(t, tc.want, string(body))
				return
			}
			require.Nil(t, body)
			rec := httptest.NewRecorder()
			apiErr.write(rec, 0)
			e := decodeError(t, rec, tc.status, tc.code)
			require.Equal(t, typeInvalidRequest, e.Error.Type)
			switch tc.code {
			case "request_too_large":
				require.Equal(t, "the request body exceeds the limit of 10 bytes", e.Error.Message)
			case "body_read_error":
				require.Contains(t, e.Error.Message, "reading the request body: ")
			}
			if tc.contentLength > limit {
				require.Zero(t, src.n, "a declared length over the limit is refused before reading")
			}
			if tc.contentLength < 0 {
				require.LessOrEqual(t, src.n, limit+1, "a chunked body is read one byte past the limit at most")
			}
		})
	}
}

// TestReadBodyFromWire reads bodies as net/http's server parses them from
// a connection: with a Content-Length, or chunked (ContentLength -1).
func TestReadBodyFromWire(t *testing.T) {
	for _, tc := range []struct {
		name    string
		sent    string   // a body sent with Content-Length: 10
		chunks  []string // a chunked body
		status  int      // 0: read
		message string
	}{
		{name: "shorter than declared", sent: "abcd",
			status: http.StatusBadRequest, message: "reading the request body: unexpected EOF"},
		{name: "exactly the limit", sent: "0123456789"},
		{name: "chunked under the limit", chunks: []string{"012", "345"}},
		{name: "chunked exactly the limit", chunks: []string{"01234", "56789"}},
		{name: "chunked over the limit", chunks: []string{"01234", "56789", "x"},
			status: http.StatusRequestEntityTooLarge, message: "the request body exceeds the limit of 10 bytes"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			raw := "POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nContent-Length: 10\r\n\r\n" + tc.sent
			want, contentLength := tc.sent, int64(10)
			if tc.chunks != nil {
				raw = "POST /v1/chat/completions HTTP/1.1\r\nHost: lb\r\nTransfer-Encoding: chunked\r\n\r\n"
				for _, c := range tc.chunks {
					raw += fmt.Sprintf("%x\r\n%s\r\n", len(c), c)
				}
				raw += "0\r\n\r\n"
				want, contentLength = strings.Join(tc.chunks, ""), -1
			}
			r, err := http.ReadRequest(bufio.NewReader(strings.NewReader(raw)))
			require.NoError(t, err)
			require.Equal(t, contentLength, r.ContentLength)
			h := testHandler(t, snapshot(true, nil))
			h.MaxBodySize = 10
			body, apiErr := h.readBody(r)
			if tc.status == 0 {
				require.Nil(t, apiErr)
				require.Equal(t, want, string(body))
				return
			}
			require.NotNil(t, apiErr)
			require.Equal(t, tc.status, apiErr.status)
			require.Equal(t, tc.message, apiErr.Message)
		})
	}
}

func TestCheckAvailable(t *testing.T) {
	live := []*registry.Member{member("a", "llama", "qwen"), member("b", "qwen")}
	for _, tc := range []struct {
		name    string
		snap    *registry.Snapshot
		model   string
		status  int // 0: available
		code    string
		message string
	}{
		{name: "no live node", snap: snapshot(true, []string{"llama"}), model: "llama",
			status: 503, code: "no_nodes_available", message: "no inference node is available"},
		{name: "no live node, no model", snap: snapshot(true, nil),
			status: 503, code: "no_nodes_available", message: "no inference node is available"},
		{name: "no live node, not synced", snap: snapshot(false, nil), model: "llama",
			status: 503, code: "no_nodes_available", message: "no inference node is available"},
		{name: "served", snap: snapshot(true, nil, live...), model: "llama"},
		{name: "served by two", snap: snapshot(true, nil, live...), model: "qwen"},
		{name: "no model, any live node", snap: snapshot(true, nil, live...)},
		{name: "known only on a node that is not live", snap: snapshot(true, []string{"mistral"}, live...), model: "mistral",
			status: 503, code: "no_nodes_available", message: "no node serving the model 'mistral' is available"},
		{name: "registry not read yet", snap: snapshot(false, nil, live...), model: "mistral",
			status: 503, code: "no_nodes_available", message: "no node serving the model 'mistral' is available"},
		{name: "unknown", snap: snapshot(true, nil, live...), model: "mistral",
			status: 404, code: "model_not_found", message: "The model 'mistral' does not exist or you do not have access to it."},
	} {
		t.Run(tc.name, func(t *testing.T) {
			apiErr := testHandler(t, tc.snap).checkAvailable(tc.model)
			if tc.status == 0 {
				require.Nil(t, apiErr)
				return
			}
			require.NotNil(t, apiErr)
			rec := httptest.NewRecorder()
			apiErr.write(rec, 0)
			e := decodeError(t, rec, tc.status, tc.code)
			require.Equal(t, tc.message, e.Error.Message)
			if tc.status == http.StatusNotFound {
				require.Equal(t, typeInvalidRequest, e.Error.Type)
				require.NotNil(t, e.Error.Param)
				require.Equal(t, "model", *e.Error.Param)
			} else {
				require.Equal(t, typeServer, e.Error.Type)
			}
		})
	}
}

// TestServeHTTPRejects checks the requests the handler answers itself,
// without calling the rest of the route.
func TestServeHTTPRejects(t *testing.T) {
	live := snapshot(true, []string{"sleepy"}, member("a", "llama"))
	for _, tc := range []struct {
		name, path, body string
		snap             *registry.Snapshot
		status           int
		code, param      string
		retryAfter       string
	}{
		{name: "invalid JSON", path: "/v1/chat/completions", body: `{"model":`, snap: live,
			status: 400, code: "invalid_json"},
		{name: "not an object", path: "/v1/chat/completions", body: `["llama"]`, snap: live,
			status: 400, code: "invalid_json"},
		{name: "plain text on a JSON endpoint", path: "/v1/embeddings", body: "hello", snap: live,
			status: 400, code: "invalid_json"},
		{name: "missing model", path: "/v1/chat/completions", body: `{"messages":[]}`, snap: live,
			status: 400, code: "missing_model", param: "model"},
		{name: "missing model, completions", path: "/v1/completions", body: `{"prompt":"hi"}`, snap: live,
			status: 400, code: "missing_model", param: "model"},
		{name: "too large", path: "/v1/chat/completions", body: `{"model":"llama","prompt":"` + strings.Repeat("x", 64) + `"}`, snap: live,
			status: 413, code: "request_too_large"},
		{name: "unknown model", path: "/v1/chat/completions", body: `{"model":"mistral"}`, snap: live,
			status: 404, code: "model_not_found", param: "model"},
		{name: "model of a node that is not live", path: "/v1/chat/completions", body: `{"model":"sleepy"}`, snap: live,
			status: 503, code: "no_nodes_available", retryAfter: "3"},
		{name: "no live node", path: "/v1/chat/completions", body: `{"model":"llama"}`, snap: snapshot(true, nil),
			status: 503, code: "no_nodes_available", retryAfter: "3"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h := testHandler(t, tc.snap)
			h.MaxBodySize = 64
			h.RetryAfter = caddy.Duration(3 * time.Second)
			next := new(recordingNext)
			rec := httptest.NewRecorder()
			r := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader(tc.body))
			require.NoError(t, h.ServeHTTP(rec, r, next))
			require.Zero(t, next.calls, "the rest of the route was called")
			e := decodeError(t, rec, tc.status, tc.code)
			if tc.param == "" {
				require.Nil(t, e.Error.Param)
			} else {
				require.NotNil(t, e.Error.Param)
				require.Equal(t, tc.param, *e.Error.Param)
			}
			require.Equal(t, tc.retryAfter, rec.Header().Get("Retry-After"))
		})
	}
}

// TestServeHTTPPassesOn checks what the rest of the route gets: the body
// unchanged, and the request's model and stream flag in its context.
func TestServeHTTPPassesOn(t *testing.T) {
	h := testHandler(t, snapshot(true, nil, member("a", "llama")))
	for _, tc := range []struct {
		name, method, path, body string
		model                    string
		stream                   bool
	}{
		{name: "chat", method: http.MethodPost, path: "/v1/chat/completions",
			body: `{"model":"llama","stream":true,"messages":[]}`, model: "llama", stream: true},
		{name: "embeddings", method: http.MethodPost, path: "/v1/embeddings",
			body: `{"input":"hi","model":"llama"}`, model: "llama"},
		{name: "not JSON on another path", method: http.MethodPost, path: "/v1/audio/transcriptions",
			body: "RIFF\x00\x01binary"},
		{name: "JSON without model on another path", method: http.MethodPost, path: "/tokenize",
			body: `{"prompt":"hi"}`},
		{name: "GET without body on another path", method: http.MethodGet, path: "/metrics"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := new(recordingNext)
			rec := httptest.NewRecorder()
			var body io.Reader
			if tc.body != "" {
				body = strings.NewReader(tc.body)
			}
			r := httptest.NewRequest(tc.method, tc.path, body)
			require.NoError(t, h.ServeHTTP(rec, r, next))
			require.Equal(t, http.StatusOK, rec.Code)
			require.Equal(t, "ok", rec.Body.String())
			require.Equal(t, 1, next.calls)
			require.Equal(t, []string{tc.body}, next.bodies)
			require.Equal(t, tc.path, next.last.URL.Path)
			req := request.FromContext(next.last.Context())
			require.NotNil(t, req)
			require.Equal(t, tc.model, req.Model)
			require.Equal(t, tc.stream, req.Stream)
			require.NotNil(t, req.Failover)
			if tc.body != "" {
				require.Equal(t, tc.body, string(req.Body))
				require.Equal(t, int64(len(tc.body)), next.last.ContentLength)
			}
		})
	}
}

// TestServeHTTPProxyError checks that an error of the rest of the route
// (reverse_proxy fails before writing anything) becomes an API error.
func TestServeHTTPProxyError(t *testing.T) {
	h := testHandler(t, snapshot(true, nil, member("a", "llama")))
	h.RetryAfter = caddy.Duration(time.Second)
	for _, tc := range []struct {
		status     int
		code       string
		retryAfter string
		calls      int
	}{
		{status: http.StatusGatewayTimeout, code: "upstream_timeout", calls: 3},
		{status: http.StatusServiceUnavailable, code: "no_nodes_available", retryAfter: "1", calls: 1},
		{status: http.StatusBadGateway, code: "upstream_error", calls: 3},
	} {
		next := &recordingNext{handler: func(http.ResponseWriter, *http.Request) error {
			return caddyhttp.Error(tc.status, errors.New("upstream failed"))
		}}
		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", strings.NewReader(`{"model":"llama"}`))
		require.NoError(t, h.ServeHTTP(rec, r, next))
		// Failed attempts are retried (twice by default); "no node
		// available" (reverse_proxy's own 503) is not.
		require.Equal(t, tc.calls, next.calls)
		decodeError(t, rec, tc.status, tc.code)
		require.Equal(t, tc.retryAfter, rec.Header().Get("Retry-After"))
	}
}
