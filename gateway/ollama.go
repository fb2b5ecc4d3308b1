package gateway

import (
	"encoding/json"
	"net/http"
	"slices"
	"strings"
	"time"

	"github.com/ai-lb/ai-lb/internal/ollamaapi"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// Ollama's API (/api/*) on the ai_lb handler:
//
//   - GET /api/tags and GET /api/ps are answered from the registry: the
//     union of the models of the live nodes, each once, under its full
//     name (request.ModelName: "llama3.2" is "llama3.2:latest").
//   - GET /api/version answers ollamaVersion.
//   - /api/pull, /api/push, /api/create, /api/copy, /api/delete and
//     /api/blobs/* are refused (see ollamaRefusal).
//   - /api/chat, /api/generate, /api/embed, /api/embeddings and /api/show
//     are routed by their model like the OpenAI endpoints; /api/chat and
//     /api/generate stream unless "stream" is false, as Ollama does.
//   - Errors take Ollama's shape, {"error":"..."}, with the statuses of the
//     OpenAI paths (404 for an unknown model, 400 for a bad body, 503 when
//     no node can take the request).
//
// Any other /api/* request goes to a live node unchanged.

// ollamaVersion is what GET /api/version answers: the Ollama release whose
// API this front door follows (tool calls, think, /api/embed, the
// truncate and shift options OpenClaw sends). ai-lb's own version means
// nothing to an Ollama client, and the nodes behind it may each run
// another release, so a client that checks the version for a feature is
// told the API level ai-lb passes through.
const ollamaVersion = "0.12.0"

// isOllamaPath reports whether path is on Ollama's API.
func isOllamaPath(path string) bool { return strings.HasPrefix(path, "/api/") }

// ollamaManaged names the endpoints that manage the models of one Ollama
// server, which ai-lb refuses.
var ollamaManaged = map[string]string{
	"/api/pull":   "pull",
	"/api/push":   "push",
	"/api/create": "create",
	"/api/copy":   "copy",
	"/api/delete": "delete",
}

// serveOllama answers the Ollama requests that the registry alone can
// answer, and the refused ones, and reports whether it did.
func (h *Handler) serveOllama(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	if op, ok := ollamaManaged[path]; ok || strings.HasPrefix(path, "/api/blobs/") {
		if !ok {
			op = "create"
		}
		h.writeError(w, r, ollamaRefusal(op))
		return true
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		return false
	}
	switch path {
	case "/api/tags":
		writeJSON(w, http.StatusOK, ollamaapi.List{Models: ollamaModels(h.snapshot(), false)})
	case "/api/ps":
		writeJSON(w, http.StatusOK, ollamaapi.List{Models: ollamaModels(h.snapshot(), true)})
	case "/api/version":
		writeJSON(w, http.StatusOK, map[string]string{"version": ollamaVersion})
	default:
		return false
	}
	return true
}

// ollamaRefusal is the answer to a request that would manage models on an
// Ollama server: a balancer does not know which of its nodes should hold a
// model, and must not pull one onto a random machine.
func ollamaRefusal(op string) *apiError {
	return invalidRequest(http.StatusForbidden, "model_management_refused", "",
		"ai-lb balances requests over several Ollama servers and does not "+op+" models: "+
			"manage models on each server (e.g. `ollama pull <model>` there); "+
			"the models its nodes serve are listed by GET /api/tags")
}

// writeOllama sends the error in Ollama's shape, {"error":"..."}.
func (e *apiError) writeOllama(w http.ResponseWriter, retryAfter time.Duration) {
	msg := e.ollama
	if msg == "" {
		msg = e.Message
	}
	body, _ := json.Marshal(ollamaapi.Error{Error: msg})
	e.send(w, body, retryAfter)
}

// ollamaStreamed are the Ollama endpoints that stream unless the body says
// "stream": false.
var ollamaStreamed = map[string]bool{"/api/chat": true, "/api/generate": true}

// ollamaFields adapts the body fields of an Ollama request: its model by
// its full name (an empty one is none), its stream flag as Ollama defaults
// it, and for /api/show the model that older clients send as "name".
func ollamaFields(path string, body []byte, f request.BodyFields) request.BodyFields {
	if path == "/api/show" && !f.HasModel {
		var legacy struct {
			Name *string `json:"name"`
		}
		if json.Unmarshal(body, &legacy) == nil && legacy.Name != nil {
			f.Model, f.HasModel = *legacy.Name, true
		}
	}
	if f.Model == "" {
		f.HasModel = false
	}
	f.Model = request.ModelName(f.Model)
	if ollamaStreamed[path] && !f.HasStream {
		f.Stream = true
	}
	return f
}

// ollamaModels lists the models of the live nodes by their full names,
// sorted, each once; with running, in /api/ps's form. The registry knows a
// model's name only: the fields it cannot know are zero, and the digest is
// one of the name (ollamaapi.NameDigest). Until nodes publish which models
// they have loaded, /api/ps lists the models they serve.
func ollamaModels(snap *registry.Snapshot, running bool) []ollamaapi.Model {
	models := make([]ollamaapi.Model, 0, len(snap.Models()))
	for _, id := range snap.Models() {
		name := request.ModelName(id)
		m := ollamaapi.Model{Name: name, Model: name, Digest: ollamaapi.NameDigest(name),
			Details: ollamaapi.Details{Families: []string{}}}
		if running {
			m.ExpiresAt = new(time.Time)
		}
		models = append(models, m)
	}
	slices.SortFunc(models, func(a, b ollamaapi.Model) int { return strings.Compare(a.Name, b.Name) })
	return models
}
