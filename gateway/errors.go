package gateway

import (
	"encoding/json"
	"net/http"
	"strconv"
	"time"
)

// apiError is an error in the OpenAI API's format. On Ollama's API it is
// written in Ollama's (see writeOllama).
type apiError struct {
	status  int
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"` // null when there is none, as OpenAI's

	ollama string // the message for Ollama's API, when it differs
}

// Error types, as the OpenAI API names them.
const (
	typeInvalidRequest = "invalid_request_error"
	typeServer         = "server_error"
)

func invalidRequest(status int, code, param, message string) *apiError {
	return &apiError{status: status, Message: message, Type: typeInvalidRequest, Code: orNull(code), Param: orNull(param)}
}

func serverError(status int, code, message string) *apiError {
	return &apiError{status: status, Message: message, Type: typeServer, Code: orNull(code)}
}

// orNull is s, or nil (JSON null) when s is empty.
func orNull(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

// write sends the error as `{"error":{...}}`. A positive retryAfter adds a
// Retry-After header, rounded up to whole seconds.
func (e *apiError) write(w http.ResponseWriter, retryAfter time.Duration) {
	body, _ := json.Marshal(struct {
		Error *apiError `json:"error"`
	}{e})
	e.send(w, body, retryAfter)
}

// send writes the error document body with the error's status.
func (e *apiError) send(w http.ResponseWriter, body []byte, retryAfter time.Duration) {
	h := w.Header()
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(body)))
	if retryAfter > 0 {
		h.Set("Retry-After", strconv.Itoa(int((retryAfter+time.Second-1)/time.Second)))
	}
	w.WriteHeader(e.status)
	_, _ = w.Write(body)
}
