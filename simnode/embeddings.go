package simnode

import (
	"encoding/base64"
	"encoding/binary"
	"hash/fnv"
	"math"
	"net/http"
)

// EmbeddingDim is the dimension of the simulated embedding vectors.
const EmbeddingDim = 8

// Embed returns the simulated embedding of input: a deterministic unit
// vector derived from a hash of the input bytes. It does not depend on the
// node, so that every node serving a model agrees, as real replicas do.
func Embed(input []byte) []float32 {
	h := fnv.New64a()
	_, _ = h.Write(input)
	x := h.Sum64()
	v := make([]float32, EmbeddingDim)
	var norm float64
	for i := range v {
		x = splitmix64(x)
		f := float64(x>>11)/(1<<53)*2 - 1 // uniform in [-1, 1)
		v[i] = float32(f)
		norm += f * f
	}
	if norm = math.Sqrt(norm); norm > 0 {
		for i := range v {
			v[i] = float32(float64(v[i]) / norm)
		}
	}
	return v
}

// splitmix64 is a tiny, well-mixing PRNG step, used to stretch one hash
// into several independent-looking components.
func splitmix64(x uint64) uint64 {
	x += 0x9e3779b97f4a7c15
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9
	x = (x ^ (x >> 27)) * 0x94d049bb133111eb
	return x ^ (x >> 31)
}

type embeddingOut struct {
	Object    string `json:"object"`
	Index     int    `json:"index"`
	Embedding any    `json:"embedding"` // []float32, or a base64 string
}

type embeddingsOut struct {
	Object string         `json:"object"`
	Data   []embeddingOut `json:"data"`
	Model  string         `json:"model"`
	Usage  usageOut       `json:"usage"`
}

// writeEmbeddings answers an embeddings request in OpenAI format. With
// encoding_format "base64" the vector is little-endian float32 bytes, which
// is what the OpenAI SDKs request by default.
func (n *Node) writeEmbeddings(w http.ResponseWriter, rec *Record, p *plan) {
	out := embeddingsOut{
		Object: "list",
		Data:   make([]embeddingOut, len(p.inputs)),
		Model:  p.model,
		Usage:  usageOut{PromptTokens: p.promptTokens, TotalTokens: p.promptTokens},
	}
	for i, in := range p.inputs {
		v := Embed(in)
		var e any = v
		if p.base64 {
			b := make([]byte, 4*len(v))
			for j, f := range v {
				binary.LittleEndian.PutUint32(b[4*j:], math.Float32bits(f))
			}
			e = base64.StdEncoding.EncodeToString(b)
		}
		out.Data[i] = embeddingOut{Object: "embedding", Index: i, Embedding: e}
	}
	writeJSON(w, http.StatusOK, out)
	n.completed.Add(1)
	n.endRecord(rec, http.StatusOK, false)
}
