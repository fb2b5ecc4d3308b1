package gateway

import (
	"context"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/registry"
)

// APIKeys makes the `ai_lb` handler require an API key, sent as
// `Authorization: Bearer <key>` (what OpenAI SDKs send, and Ollama clients
// given a key), on every request but GET /health. The keys come from any
// of the sources below; at least one key must be found.
//
// A key is checked before anything else (before the body is read), and the
// Authorization header is then removed, so that nodes never see client
// keys (a node that wants its own key gets it from reverse_proxy's
// `header_up`). Keys are never logged; Caddy's access log shows the
// Authorization header as REDACTED unless the server sets
// `log_credentials`.
type APIKeys struct {
	// File is a file of keys, one a line; blank lines and lines starting
	// with # are skipped, and a line `sha256:<hex>` is the SHA-256 digest
	// of a key rather than the key. Read when the config loads.
	File string `json:"file,omitempty"`

	// Env names an environment variable holding keys separated by commas
	// or white space (`sha256:<hex>` digests too). Read when the config
	// loads.
	Env string `json:"env,omitempty"`

	// Registry also accepts the keys whose digests are in the registry's
	// set `{prefix}:api_keys` (see registry.APIKeyDigest), re-read every
	// Refresh: adding or removing a key there applies to every replica
	// without a reload.
	Registry bool `json:"registry,omitempty"`

	// Refresh is how often the registry's keys are re-read. Default: 5s.
	Refresh caddy.Duration `json:"refresh,omitempty"`
}

// Key rules.
const (
	// minKeyLength is the shortest key accepted from a file or the
	// environment: shorter ones are guessable.
	minKeyLength = 16
	// defaultKeysRefresh is APIKeys.Refresh's default.
	defaultKeysRefresh = 5 * time.Second
	// keysReadTimeout bounds one read of the registry's keys.
	keysReadTimeout = 2 * time.Second
)

// digests is a set of key digests, indexed by their first 8 bytes. A
// presented key is hashed and compared, in constant time, with every
// digest that shares those bytes: no comparison runs over key bytes, and
// the index reveals nothing of a key but a fraction of its digest.
type digests map[uint64][][sha256.Size]byte

func (d digests) add(sum [sha256.Size]byte) {
	i := binary.LittleEndian.Uint64(sum[:8])
	for _, s := range d[i] {
		if s == sum {
			return
		}
	}
	d[i] = append(d[i], sum)
}

func (d digests) has(sum [sha256.Size]byte) bool {
	match := 0
	for _, s := range d[binary.LittleEndian.Uint64(sum[:8])] {
		match |= subtle.ConstantTimeCompare(s[:], sum[:])
	}
	return match == 1
}

func (d digests) len() int {
	n := 0
	for _, b := range d {
		n += len(b)
	}
	return n
}

// parseDigest reads a `sha256:<hex>` entry (the prefix optional when
// prefixed is false).
func parseDigest(s string, prefixed bool) ([sha256.Size]byte, bool) {
	var sum [sha256.Size]byte
	h, ok := strings.CutPrefix(strings.ToLower(s), "sha256:")
	if !ok && prefixed {
		return sum, false
	}
	b, err := hex.DecodeString(h)
	if err != nil || len(b) != sha256.Size {
		return sum, false
	}
	copy(sum[:], b)
	return sum, true
}

// keyring holds the keys a handler accepts.
type keyring struct {
	static   digests                                 // from the file and the environment
	registry atomic.Pointer[digests]                 // from the registry, nil without it
	read     func(context.Context) ([]string, error) // reads the registry's digests
	logger   *zap.Logger

	stop context.CancelFunc
	done chan struct{}
	mu   sync.Mutex // guards down and bad
	down bool       // the last registry read failed (logged)
	bad  int        // malformed registry entries last logged
}

// newKeyring reads the static keys of cfg. read, when cfg.Registry is
// set, reads the registry's digests.
func newKeyring(cfg *APIKeys, read func(context.Context) ([]string, error), logger *zap.Logger) (*keyring, error) {
	k := &keyring{static: digests{}, logger: logger}
	var sources []string
	if cfg.File != "" {
		path := caddy.NewReplacer().ReplaceAll(cfg.File, "")
		raw, err := os.ReadFile(path)
		if err != nil {
			return nil, fmt.Errorf("api_keys: file: %v", err)
		}
		var lines []string
		for _, line := range strings.Split(string(raw), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				lines = append(lines, line)
			}
		}
		if err := k.addStatic(lines, "the file "+path); err != nil {
			return nil, err
		}
		sources = append(sources, fmt.Sprintf("file %s: %d", path, len(lines)))
	}
	if cfg.Env != "" {
		entries := strings.FieldsFunc(os.Getenv(cfg.Env), func(r rune) bool {
			return r == ',' || r == ' ' || r == '\t' || r == '\n' || r == '\r'
		})
		if err := k.addStatic(entries, "$"+cfg.Env); err != nil {
			return nil, err
		}
		sources = append(sources, fmt.Sprintf("$%s: %d", cfg.Env, len(entries)))
	}
	if cfg.Registry {
		k.read = read
		k.registry.Store(&digests{})
		sources = append(sources, "registry")
	}
	if k.static.len() == 0 && !cfg.Registry {
		return nil, fmt.Errorf("api_keys: no key found (%s)", strings.Join(sources, ", "))
	}
	logger.Info("API keys required", zap.Strings("sources", sources), zap.Int("static_keys", k.static.len()))
	return k, nil
}

// addStatic adds keys, or `sha256:` digests, from a source.
func (k *keyring) addStatic(entries []string, source string) error {
	for i, e := range entries {
		if sum, ok := parseDigest(e, true); ok {
			k.static.add(sum)
			continue
		}
		if strings.HasPrefix(strings.ToLower(e), "sha256:") {
			return fmt.Errorf("api_keys: entry %d of %s: a sha256: digest must be 64 hex digits", i+1, source)
		}
		if len(e) < minKeyLength {
			return fmt.Errorf("api_keys: entry %d of %s is shorter than %d characters", i+1, source, minKeyLength)
		}
		k.static.add(sha256.Sum256([]byte(e)))
	}
	return nil
}

// start reads the registry's keys once, then every refresh until close.
func (k *keyring) start(refresh time.Duration) {
	if k.read == nil {
		return
	}
	k.refresh(context.Background())
	ctx, cancel := context.WithCancel(context.Background())
	k.stop, k.done = cancel, make(chan struct{})
	go func() {
		defer close(k.done)
		t := time.NewTicker(refresh)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				k.refresh(ctx)
			}
		}
	}()
}

// close stops the registry reads.
func (k *keyring) close() {
	if k.stop != nil {
		k.stop()
		<-k.done
	}
}

// refresh re-reads the registry's keys. When the read fails, the keys read
// last stay in force, and the failure is logged once until a read works.
func (k *keyring) refresh(ctx context.Context) {
	readCtx, cancel := context.WithTimeout(ctx, keysReadTimeout)
	defer cancel()
	entries, err := k.read(readCtx)
	if ctx.Err() != nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if err != nil {
		if !k.down {
			k.down = true
			k.logger.Warn("reading the registry's API keys failed; the keys read last stay in force", zap.Error(err))
		}
		return
	}
	if k.down {
		k.down = false
		k.logger.Info("reading the registry's API keys again")
	}
	set, bad := digests{}, 0
	for _, e := range entries {
		if sum, ok := parseDigest(strings.TrimSpace(e), false); ok {
			set.add(sum)
		} else {
			bad++
		}
	}
	if bad > 0 && bad != k.bad {
		k.logger.Warn("skipping registry API key entries that are not SHA-256 hex digests", zap.Int("entries", bad))
	}
	k.bad = bad
	k.registry.Store(&set)
}

// accepts reports whether key is one of the keys.
func (k *keyring) accepts(key string) bool {
	sum := sha256.Sum256([]byte(key))
	ok := k.static.has(sum)
	if reg := k.registry.Load(); reg != nil && reg.has(sum) {
		ok = true
	}
	return ok
}

// bearer returns the token of an `Authorization: Bearer <token>` header.
func bearer(header string) (string, bool) {
	scheme, token, ok := strings.Cut(strings.TrimSpace(header), " ")
	if !ok || !strings.EqualFold(scheme, "Bearer") {
		return "", false
	}
	token = strings.TrimSpace(token)
	return token, token != ""
}

// authorize checks the request's API key when keys are required, and
// reports whether the request may go on; if not, it has answered 401, in
// OpenAI's shape. GET /health stays open (health checks carry no key).
// The Authorization header is removed either way: nodes never see it.
func (h *Handler) authorize(w http.ResponseWriter, r *http.Request) bool {
	if h.keys == nil || r.URL.Path == "/health" {
		return true
	}
	key, sent := bearer(r.Header.Get("Authorization"))
	r.Header.Del("Authorization")
	var refused *apiError
	switch {
	case !sent:
		refused = invalidRequest(http.StatusUnauthorized, "", "", "You didn't provide an API key. You need to "+
			"provide your API key in an Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).")
	case !h.keys.accepts(key):
		refused = invalidRequest(http.StatusUnauthorized, "invalid_api_key", "", "Incorrect API key provided.")
	default:
		return true
	}
	// As OpenAI's, the answer names no key.
	w.Header().Set("WWW-Authenticate", `Bearer realm="ai-lb"`)
	h.writeError(w, r, refused)
	return false
}

// provisionKeys sets up the API key check, if any.
func (h *Handler) provisionKeys(app *registry.App) error {
	if h.APIKeys == nil {
		return nil
	}
	if h.APIKeys.Refresh < 0 {
		return fmt.Errorf("api_keys: refresh: must not be negative")
	}
	keys, err := newKeyring(h.APIKeys, app.APIKeyDigests, h.logger)
	if err != nil {
		return err
	}
	refresh := time.Duration(h.APIKeys.Refresh)
	if refresh == 0 {
		refresh = defaultKeysRefresh
	}
	keys.start(refresh)
	h.keys = keys
	return nil
}

// Cleanup stops the registry reads of the API key check.
func (h *Handler) Cleanup() error {
	if h.keys != nil {
		h.keys.close()
	}
	return nil
}

// Interface guard
var _ caddy.CleanerUpper = (*Handler)(nil)
