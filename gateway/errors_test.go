package gateway

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"
	"github.com/stretchr/testify/require"
)

// TestAPIErrorWrite checks the OpenAI error document byte for byte: every
// field present, param null unless set.
func TestAPIErrorWrite(t *testing.T) {
	for _, tc := range []struct {
		name   string
		err    *apiError
		status int
		want   string
	}{
		{
			name:   "invalid request with param",
			err:    invalidRequest(http.StatusNotFound, "model_not_found", "model", "no such model"),
			status: http.StatusNotFound,
			want:   `{"error":{"message":"no such model","type":"invalid_request_error","param":"model","code":"model_not_found"}}`,
		},
		{
			name:   "invalid request without param",
			err:    invalidRequest(http.StatusBadRequest, "invalid_json", "", "bad"),
			status: http.StatusBadRequest,
			want:   `{"error":{"message":"bad","type":"invalid_request_error","param":null,"code":"invalid_json"}}`,
		},
		{
			name:   "server error",
			err:    serverError(http.StatusBadGateway, "upstream_error", "it failed"),
			status: http.StatusBadGateway,
			want:   `{"error":{"message":"it failed","type":"server_error","param":null,"code":"upstream_error"}}`,
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			tc.err.write(rec, 0)
			require.Equal(t, tc.status, rec.Code)
			require.Equal(t, tc.want, rec.Body.String())
			require.Equal(t, "application/json", rec.Header().Get("Content-Type"))
			require.Equal(t, strconv.Itoa(rec.Body.Len()), rec.Header().Get("Content-Length"))
			require.Empty(t, rec.Header().Values("Retry-After"))
		})
	}
}

func TestAPIErrorRetryAfter(t *testing.T) {
	for _, tc := range []struct {
		retryAfter time.Duration
		want       string
	}{
		{retryAfter: 2 * time.Second, want: "2"},
		{retryAfter: 1500 * time.Millisecond, want: "2"}, // rounded up
		{retryAfter: time.Millisecond, want: "1"},
	} {
		rec := httptest.NewRecorder()
		serverError(http.StatusServiceUnavailable, "no_nodes_available", "down").write(rec, tc.retryAfter)
		require.Equal(t, http.StatusServiceUnavailable, rec.Code)
		require.Equal(t, tc.want, rec.Header().Get("Retry-After"), "retry after %v", tc.retryAfter)
	}
}

// TestHandlerRetryAfter checks that only 503 answers carry the configured
// Retry-After.
func TestHandlerRetryAfter(t *testing.T) {
	h := testHandler(t, snapshot(true, nil))
	h.RetryAfter = caddy.Duration(3 * time.Second)
	require.Equal(t, 3*time.Second, h.retryAfter(serverError(http.StatusServiceUnavailable, "no_nodes_available", "")))
	require.Zero(t, h.retryAfter(serverError(http.StatusBadGateway, "upstream_error", "")))
	require.Zero(t, h.retryAfter(invalidRequest(http.StatusNotFound, "model_not_found", "model", "")))
}

func TestProxyError(t *testing.T) {
	for _, tc := range []struct {
		name           string
		err            error
		model          string
		status         int
		typ, code, msg string
	}{
		{name: "502", err: caddyhttp.Error(http.StatusBadGateway, errors.New("dial")),
			status: 502, typ: typeServer, code: "upstream_error", msg: "the inference node failed: Bad Gateway"},
		{name: "500", err: caddyhttp.Error(http.StatusInternalServerError, errors.New("boom")),
			status: 500, typ: typeServer, code: "upstream_error", msg: "the inference node failed: Internal Server Error"},
		{name: "503 with model", err: caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no upstreams")), model: "llama",
			status: 503, typ: typeServer, code: "no_nodes_available", msg: "no node serving the model 'llama' is available"},
		{name: "503 without model", err: caddyhttp.Error(http.StatusServiceUnavailable, errors.New("no upstreams")),
			status: 503, typ: typeServer, code: "no_nodes_available", msg: "no inference node is available"},
		{name: "504", err: caddyhttp.Error(http.StatusGatewayTimeout, errors.New("timeout")), model: "llama",
			status: 504, typ: typeServer, code: "upstream_timeout", msg: "the inference node did not answer in time"},
		{name: "429", err: caddyhttp.Error(http.StatusTooManyRequests, errors.New("slow down")),
			status: 429, typ: typeInvalidRequest, msg: "Too Many Requests"},
		{name: "400", err: caddyhttp.Error(http.StatusBadRequest, errors.New("bad")),
			status: 400, typ: typeInvalidRequest, msg: "Bad Request"},
		{name: "wrapped handler error", err: fmt.Errorf("attempt: %w", caddyhttp.Error(http.StatusGatewayTimeout, nil)),
			status: 504, typ: typeServer, code: "upstream_timeout", msg: "the inference node did not answer in time"},
		{name: "handler error without status", err: caddyhttp.HandlerError{Err: errors.New("x")},
			status: 502, typ: typeServer, code: "upstream_error", msg: "the inference node failed: Bad Gateway"},
		{name: "plain error", err: errors.New("connection refused"), model: "llama",
			status: 502, typ: typeServer, code: "upstream_error", msg: "the inference node failed: Bad Gateway"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			rec := httptest.NewRecorder()
			proxyError(tc.err, tc.model).write(rec, 0)
			e := decodeError(t, rec, tc.status, tc.code)
			require.Equal(t, tc.typ, e.Error.Type)
			require.Equal(t, tc.msg, e.Error.Message)
			require.Nil(t, e.Error.Param)
			if tc.code == "" {
				require.Contains(t, rec.Body.String(), `"code":null`, "no code is null, as OpenAI's, never \"\"")
			}
		})
	}
}
