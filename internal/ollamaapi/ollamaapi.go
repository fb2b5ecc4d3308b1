// Package ollamaapi holds the documents of Ollama's API that ai-lb answers
// itself (gateway) and that the simulated node serves (simnode). It
// depends on the standard library only.
package ollamaapi

import (
	"crypto/sha256"
	"encoding/hex"
	"time"
)

// List is the body of GET /api/tags and GET /api/ps.
type List struct {
	Models []Model `json:"models"`
}

// Model is one model of a List.
type Model struct {
	Name       string    `json:"name"`
	Model      string    `json:"model"`
	ModifiedAt time.Time `json:"modified_at"`
	Size       int64     `json:"size"`
	Digest     string    `json:"digest"`
	Details    Details   `json:"details"`

	// Of /api/ps only: when the model unloads, its memory on the GPU and
	// the context it was loaded with.
	ExpiresAt     *time.Time `json:"expires_at,omitempty"`
	SizeVRAM      int64      `json:"size_vram,omitempty"`
	ContextLength int        `json:"context_length,omitempty"`
}

// Details describes a model's weights.
type Details struct {
	ParentModel       string   `json:"parent_model"`
	Format            string   `json:"format"`
	Family            string   `json:"family"`
	Families          []string `json:"families"` // never null: clients iterate it
	ParameterSize     string   `json:"parameter_size"`
	QuantizationLevel string   `json:"quantization_level"`
}

// Error is Ollama's error document.
type Error struct {
	Error string `json:"error"`
}

// NameDigest is a digest of a model's name, for lists that know no digest
// of its weights: stable, and different for every name, so that a client
// caching what it learnt of a model by digest keeps models apart.
func NameDigest(name string) string {
	sum := sha256.Sum256([]byte(name))
	return hex.EncodeToString(sum[:])
}
