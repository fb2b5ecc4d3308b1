package registry

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
)

// The API keys the `ai_lb` handler accepts can live in the registry, so
// that every replica follows one list: the set `{prefix}:api_keys` holds
// their SHA-256 digests in lower-case hex (APIKeyDigest), never the keys
// themselves. It is written by an operator; agents' Redis users need no
// access to it.
//
//	redis-cli SADD '{ai-lb}:api_keys' "$(printf %s "$KEY" | sha256sum | cut -d' ' -f1)"

// APIKeyDigest returns the digest under which a key is stored in the
// registry's set of API keys.
func APIKeyDigest(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:])
}

// apiKeysKey names the set of API key digests of the registry.
func (c *Client) apiKeysKey() string {
	return strings.TrimSuffix(c.keys.Nodes, ":nodes") + ":api_keys"
}

// APIKeyDigests reads the registry's set of API key digests.
func (c *Client) APIKeyDigests(ctx context.Context) ([]string, error) {
	return c.rdb.SMembers(ctx, c.apiKeysKey()).Result()
}

// APIKeyDigests reads the API key digests of the app's registry.
func (a *App) APIKeyDigests(ctx context.Context) ([]string, error) {
	if a.watcher == nil {
		return nil, errors.New("the registry is not provisioned")
	}
	return a.watcher.client.APIKeyDigests(ctx)
}
