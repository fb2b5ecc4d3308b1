package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/stretchr/testify/require"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest/observer"

	"github.com/ai-lb/ai-lb/registry"
)

// Keys of these tests. None may ever appear in a log or an answer.
const (
	fileKey     = "sk-file-0123456789abcdef"
	hashedKey   = "sk-hashed-0123456789abcdef" // in the file as its sha256: digest
	envKey      = "sk-env-0123456789abcdef"
	registryKey = "sk-registry-0123456789abcdef"
	wrongKey    = "sk-wrong-0123456789abcdef"
)

var allKeys = []string{fileKey, hashedKey, envKey, registryKey, wrongKey}

// observed returns a logger whose entries the test can read.
func observed() (*zap.Logger, *observer.ObservedLogs) {
	core, logs := observer.New(zapcore.DebugLevel)
	return zap.New(core), logs
}

// requireNoKeys fails if any test key shows up in text.
func requireNoKeys(t *testing.T, text string) {
	t.Helper()
	for _, k := range allKeys {
		require.NotContains(t, text, k)
	}
	require.NotContains(t, text, registry.APIKeyDigest(hashedKey)[8:], "not even a digest")
}

// requireLogsClean fails if any log entry carries a test key.
func requireLogsClean(t *testing.T, logs *observer.ObservedLogs) {
	t.Helper()
	for _, e := range logs.All() {
		fields, err := json.Marshal(e.ContextMap())
		require.NoError(t, err)
		requireNoKeys(t, e.Message+string(fields))
	}
}

// keyedHandler returns a test handler that requires the file and
// environment keys (and the registry's, read by read, if not nil).
func keyedHandler(t *testing.T, read func(context.Context) ([]string, error)) (*Handler, *observer.ObservedLogs) {
	t.Helper()
	file := filepath.Join(t.TempDir(), "keys")
	require.NoError(t, os.WriteFile(file, []byte("# ai-lb keys\n\n"+fileKey+"\n  sha256:"+
		strings.ToUpper(registry.APIKeyDigest(hashedKey))+"  \n"), 0o600))
	t.Setenv("AI_LB_TEST_KEYS", "sk-other-0123456789abcdef, "+envKey)
	h := testHandler(t, snapshot(true, nil, member("a", "llama")))
	logger, logs := observed()
	h.logger = logger
	cfg := &APIKeys{File: file, Env: "AI_LB_TEST_KEYS", Registry: read != nil}
	keys, err := newKeyring(cfg, read, logger)
	require.NoError(t, err)
	keys.start(10 * time.Millisecond)
	t.Cleanup(keys.close)
	h.keys = keys
	return h, logs
}

func TestAPIKeysRequired(t *testing.T) {
	h, logs := keyedHandler(t, nil)
	chat := `{"model":"llama","messages":[]}`
	for _, tc := range []struct {
		name, method, path, auth string
		status                   int
		code                     string // for 401
	}{
		{name: "no key", method: "POST", path: "/v1/chat/completions", status: 401},
		{name: "wrong key", method: "POST", path: "/v1/chat/completions", auth: "Bearer " + wrongKey, status: 401, code: "invalid_api_key"},
		{name: "not bearer", method: "POST", path: "/v1/chat/completions", auth: "Basic " + fileKey, status: 401},
		{name: "empty bearer", method: "POST", path: "/v1/chat/completions", auth: "Bearer ", status: 401},
		{name: "a key's prefix", method: "POST", path: "/v1/chat/completions", auth: "Bearer " + fileKey[:20], status: 401, code: "invalid_api_key"},
		{name: "models without key", method: "GET", path: "/v1/models", status: 401},
		{name: "file key", method: "POST", path: "/v1/chat/completions", auth: "Bearer " + fileKey, status: 200},
		{name: "hashed file key", method: "POST", path: "/v1/chat/completions", auth: "Bearer " + hashedKey, status: 200},
		{name: "env key, lower-case scheme", method: "POST", path: "/v1/chat/completions", auth: "bearer " + envKey, status: 200},
		{name: "models with key", method: "GET", path: "/v1/models", auth: "Bearer " + envKey, status: 200},
		{name: "health is open", method: "GET", path: "/health", status: 200},
	} {
		t.Run(tc.name, func(t *testing.T) {
			next := new(recordingNext)
			rec := httptest.NewRecorder()
			var body *strings.Reader
			if tc.method == "POST" {
				body = strings.NewReader(chat)
			} else {
				body = strings.NewReader("")
			}
			r := httptest.NewRequest(tc.method, tc.path, body)
			if tc.auth != "" {
				r.Header.Set("Authorization", tc.auth)
			}
			require.NoError(t, h.ServeHTTP(rec, r, next))
			requireNoKeys(t, rec.Body.String())
			for _, v := range rec.Header() {
				requireNoKeys(t, strings.Join(v, " "))
			}
			if tc.status == 401 {
				e := decodeError(t, rec, 401, tc.code)
				require.Equal(t, typeInvalidRequest, e.Error.Type)
				require.Equal(t, `Bearer realm="ai-lb"`, rec.Header().Get("WWW-Authenticate"))
				require.Zero(t, next.calls, "refused before anything else")
				return
			}
			require.Equal(t, tc.status, rec.Code, rec.Body.String())
			if next.calls > 0 {
				require.Empty(t, next.last.Header.Values("Authorization"), "nodes never see the client's key")
			}
		})
	}
	requireLogsClean(t, logs)
}

// TestAPIKeysCheckedFirst: an unauthenticated request is refused before
// its body is read.
func TestAPIKeysCheckedFirst(t *testing.T) {
	h, _ := keyedHandler(t, nil)
	src := &countingReader{r: strings.NewReader(strings.Repeat("x", 1<<20))}
	r := httptest.NewRequest(http.MethodPost, "/v1/chat/completions", src)
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, r, new(recordingNext)))
	require.Equal(t, http.StatusUnauthorized, rec.Code)
	require.Zero(t, src.n, "no byte of the body read")
}

// TestAPIKeysOllamaShape: Ollama's API answers 401 in its own shape.
func TestAPIKeysOllamaShape(t *testing.T) {
	h, _ := keyedHandler(t, nil)
	rec := httptest.NewRecorder()
	r := httptest.NewRequest(http.MethodGet, "/api/tags", nil)
	r.Header.Set("Authorization", "Bearer "+wrongKey)
	require.NoError(t, h.ServeHTTP(rec, r, new(recordingNext)))
	require.Equal(t, http.StatusUnauthorized, rec.Code)
	var body struct {
		Error string `json:"error"`
	}
	require.NoError(t, json.Unmarshal(rec.Body.Bytes(), &body), rec.Body.String())
	require.Equal(t, "Incorrect API key provided.", body.Error)
}

// TestAPIKeysRegistry: keys whose digests are in the registry are accepted
// once read, refused once removed; a failed read keeps the keys read last
// and is logged once.
func TestAPIKeysRegistry(t *testing.T) {
	var mu sync.Mutex
	var entries []string
	var readErr error
	read := func(context.Context) ([]string, error) {
		mu.Lock()
		defer mu.Unlock()
		return entries, readErr
	}
	set := func(e []string, err error) {
		mu.Lock()
		entries, readErr = e, err
		mu.Unlock()
	}
	h, logs := keyedHandler(t, read)
	status := func(key string) int {
		rec := httptest.NewRecorder()
		r := httptest.NewRequest(http.MethodGet, "/v1/models", nil)
		r.Header.Set("Authorization", "Bearer "+key)
		require.NoError(t, h.ServeHTTP(rec, r, new(recordingNext)))
		return rec.Code
	}
	eventually := func(key string, want int) {
		t.Helper()
		require.Eventually(t, func() bool { return status(key) == want }, 5*time.Second, 5*time.Millisecond, "%d", want)
	}
	require.Equal(t, 401, status(registryKey))
	require.Equal(t, 200, status(fileKey))

	set([]string{"not-a-digest", "sha256:" + registry.APIKeyDigest(registryKey)}, nil)
	eventually(registryKey, 200)
	require.Equal(t, 1, logs.FilterMessage("skipping registry API key entries that are not SHA-256 hex digests").Len())

	set(nil, errors.New("redis down"))
	time.Sleep(50 * time.Millisecond) // several failed reads
	require.Equal(t, 200, status(registryKey), "a failed read keeps the keys read last")
	require.Equal(t, 1, logs.FilterMessage("reading the registry's API keys failed; the keys read last stay in force").Len())

	set([]string{registry.APIKeyDigest(wrongKey)}, nil)
	eventually(registryKey, 401)
	require.Equal(t, 200, status(wrongKey))
	require.Equal(t, 200, status(fileKey), "the static keys stay")
	requireLogsClean(t, logs)
}

func TestAPIKeysSources(t *testing.T) {
	dir := t.TempDir()
	write := func(name, content string) string {
		path := filepath.Join(dir, name)
		require.NoError(t, os.WriteFile(path, []byte(content), 0o600))
		return path
	}
	t.Setenv("AI_LB_TEST_EMPTY", "")
	t.Setenv("AI_LB_TEST_SHORT", "sk-short")
	for _, tc := range []struct {
		name string
		cfg  APIKeys
		want string
	}{
		{"missing file", APIKeys{File: filepath.Join(dir, "nope")}, "api_keys: file:"},
		{"empty file", APIKeys{File: write("empty", "# nothing\n\n")}, "api_keys: no key found (file "},
		{"unset variable", APIKeys{Env: "AI_LB_TEST_UNSET"}, "api_keys: no key found ($AI_LB_TEST_UNSET: 0)"},
		{"empty variable", APIKeys{Env: "AI_LB_TEST_EMPTY"}, "api_keys: no key found"},
		{"short key", APIKeys{Env: "AI_LB_TEST_SHORT"}, "entry 1 of $AI_LB_TEST_SHORT is shorter than 16 characters"},
		{"bad digest", APIKeys{File: write("bad", fileKey+"\nsha256:abc\n")}, "entry 2 of the file"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			logger, logs := observed()
			_, err := newKeyring(&tc.cfg, nil, logger)
			require.ErrorContains(t, err, tc.want)
			requireNoKeys(t, err.Error())
			require.NotContains(t, err.Error(), "sk-short")
			requireLogsClean(t, logs)
		})
	}

	// The registry alone needs no static key; the load is logged without keys.
	logger, logs := observed()
	k, err := newKeyring(&APIKeys{Registry: true, File: write("one", fileKey+"\n")}, func(context.Context) ([]string, error) { return nil, nil }, logger)
	require.NoError(t, err)
	require.True(t, k.accepts(fileKey))
	require.False(t, k.accepts(registryKey))
	require.Equal(t, 1, logs.FilterMessage("API keys required").Len())
	requireLogsClean(t, logs)
}

func TestAPIKeysCaddyfile(t *testing.T) {
	for _, tc := range []struct {
		block string
		want  *APIKeys // nil: an error containing err
		err   string
	}{
		{block: "file /run/secrets/ai-lb-keys\n env AI_LB_API_KEYS\n registry\n refresh 2s",
			want: &APIKeys{File: "/run/secrets/ai-lb-keys", Env: "AI_LB_API_KEYS", Registry: true, Refresh: caddy.Duration(2 * time.Second)}},
		{block: "registry", want: &APIKeys{Registry: true}},
		{block: "refresh soon", err: "parsing api_keys refresh"},
		{block: "header x-api-key", err: "unrecognized api_keys option 'header'"},
		{block: "file", err: "wrong argument count"},
		{block: "registry yes", err: "wrong argument count"},
		{block: "env A B", err: "wrong argument count"},
	} {
		var h Handler
		err := h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("ai_lb {\n max_body_size 1MB\n api_keys {\n " +
			tc.block + "\n }\n min_nodes 2\n}"))
		if tc.want == nil {
			require.ErrorContains(t, err, tc.err, tc.block)
			continue
		}
		require.NoError(t, err, tc.block)
		require.Equal(t, tc.want, h.APIKeys)
		require.Equal(t, 2, *h.MinNodes, "options after the block are read")
	}
	var h Handler
	require.ErrorContains(t, h.UnmarshalCaddyfile(caddyfile.NewTestDispenser("ai_lb {\n api_keys sk-inline-key\n}")),
		"wrong argument count", "keys are never inline")
}

func TestBearer(t *testing.T) {
	for header, want := range map[string]string{
		"Bearer abc":    "abc",
		"bearer abc":    "abc",
		"BEARER  abc  ": "abc",
		"Bearer":        "",
		"Bearer ":       "",
		"Basic abc":     "",
		"abc":           "",
		"":              "",
	} {
		got, ok := bearer(header)
		require.Equal(t, want, got, header)
		require.Equal(t, want != "", ok, header)
	}
}
