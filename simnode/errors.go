package simnode

import (
	"net/http"
)

// clientError answers a request the node refuses to process.
func (n *Node) clientError(w http.ResponseWriter, rec *Record, status int, code, param, msg string) {
	n.failed.Add(1)
	n.endRecord(rec, status, false)
	writeError(w, status, "invalid_request_error", code, param, msg)
}

// abort accounts for a client that went away. status is what the record
// shows: 499 if nothing was sent yet, otherwise the status already sent.
func (n *Node) abort(rec *Record, status int) {
	n.aborted.Add(1)
	n.endRecord(rec, status, true)
}

// apiError is the OpenAI error object; param and code are null when unset.
type apiError struct {
	Message string  `json:"message"`
	Type    string  `json:"type"`
	Param   *string `json:"param"`
	Code    *string `json:"code"`
}

// writeError writes an OpenAI-style error: {"error":{...}}.
func writeError(w http.ResponseWriter, status int, typ, code, param, msg string) {
	e := apiError{Message: msg, Type: typ}
	if code != "" {
		e.Code = &code
	}
	if param != "" {
		e.Param = &param
	}
	writeJSON(w, status, struct {
		Error apiError `json:"error"`
	}{e})
}
