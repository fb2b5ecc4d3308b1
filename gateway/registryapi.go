package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"strings"

	"github.com/ai-lb/ai-lb/registry"
)

// model is one entry of GET /v1/models, in the OpenAI format.
type model struct {
	ID      string `json:"id"`
	Object  string `json:"object"`
	Created int64  `json:"created"`
	OwnedBy string `json:"owned_by"`
}

func newModel(id string) model { return model{ID: id, Object: "model", OwnedBy: "ai-lb"} }

// healthBody is the body of GET /health; the field names are the original
// ai-lb's, which its test_connection.sh expects.
type healthBody struct {
	Status          string `json:"status"`
	NodesFound      int    `json:"nodes_found"`
	Models          int    `json:"models"`
	MinimumRequired int    `json:"minimum_required"`
	RegistrySynced  bool   `json:"registry_synced"`
}

// serveRegistry answers the GET requests the registry alone can answer,
// and reports whether it did.
func (h *Handler) serveRegistry(w http.ResponseWriter, r *http.Request) bool {
	path := r.URL.Path
	snap := h.snapshot()
	switch {
	case path == "/health":
		body := healthBody{
			Status:          "ok",
			NodesFound:      len(snap.Members),
			Models:          len(snap.Models()),
			MinimumRequired: h.minNodes,
			RegistrySynced:  snap.Synced,
		}
		status := http.StatusOK
		if body.NodesFound < h.minNodes {
			body.Status, status = "unavailable", http.StatusServiceUnavailable
		}
		writeJSON(w, status, body)
	case path == "/v1/models":
		writeJSON(w, http.StatusOK, listModels(snap))
	case strings.HasPrefix(path, "/v1/models/"):
		id := strings.TrimPrefix(path, "/v1/models/")
		if len(snap.ServingModel(id)) == 0 {
			invalidRequest(http.StatusNotFound, "model_not_found", "model",
				"The model '"+id+"' does not exist or you do not have access to it.").write(w, 0)
			return true
		}
		writeJSON(w, http.StatusOK, newModel(id))
	default:
		return false
	}
	return true
}

func listModels(snap *registry.Snapshot) any {
	data := make([]model, 0, len(snap.Models()))
	for _, id := range snap.Models() {
		data = append(data, newModel(id))
	}
	return struct {
		Object string  `json:"object"`
		Data   []model `json:"data"`
	}{"list", data}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	body, _ := json.Marshal(v)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(status)
	_, _ = w.Write(body)
}
