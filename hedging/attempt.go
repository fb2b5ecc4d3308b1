package hedging

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"maps"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/caddyserver/caddy/v2"

	"github.com/ai-lb/ai-lb/request"
)

// errLost is what a losing attempt's writes return: its stream is not
// wanted, and the error makes reverse_proxy stop copying it.
var errLost = errors.New("hedged attempt lost the race")

// errStreamError is what an attempt's write returns when its NDJSON stream
// reports an error before any content: the attempt has failed, and the
// error makes reverse_proxy stop copying it.
var errStreamError = errors.New("the node's stream began with an error record")

// maxHeld bounds what an attempt buffers before it wins: the bytes of an
// SSE stream before its first data line or of an NDJSON stream before its
// first record with content, or a failed answer held as the reply of last
// resort.
const maxHeld = 64 << 10

// attempt is one run of the rest of the route (reverse_proxy) for a hedged
// request. It has its own context, writer, replacer overlay and vars; only
// a winning attempt writes to the client.
type attempt struct {
	race   *race
	index  int  // 1 for the first attempt
	kind   kind // why it started
	start  time.Time
	cancel context.CancelFunc
	done   chan struct{}    // closed when the attempt's handler returned
	repl   *caddy.Replacer  // the attempt's replacer overlay
	slot   *request.Attempt // the node the policy picks for it

	// racesBefore is how many attempt runners had run the request when
	// this attempt started: more after it means one ran inside it.
	racesBefore int32

	gotHeader atomic.Bool // the node's response headers arrived
	timedOut  atomic.Bool // they did not arrive in time: cancelled

	// Set by the attempt's goroutine; read after done is closed, or under
	// race.mu.
	header      http.Header
	status      int
	held        bytes.Buffer // output before winning
	sse         bool
	ndjson      bool // Ollama's streams: one JSON record a line
	lineStart   int  // NDJSON: where in held the line not yet read begins
	atLineHead  bool
	headMatched int // bytes of "data:" seen at the current line head
	won         bool
	firstToken  time.Time
	err         error // from the handler
	panicked    any   // recovered panic value
}

// Header returns the attempt's own header map.
func (a *attempt) Header() http.Header { return a.header }

// WriteHeader records the status. 1xx answers are dropped, and so is the
// 499 that reverse_proxy writes when the attempt is cancelled. A redirect
// wins at once: it is an answer. So does a client error (4xx other than
// 429) when no other attempt is running, since the same request would
// fail on any node; while another runs, it is held like a failure, in
// case the other answers.
func (a *attempt) WriteHeader(status int) {
	if status < 200 || status == 499 || a.status != 0 {
		return
	}
	a.status = status
	a.gotHeader.Store(true)
	contentType := a.header.Get("Content-Type")
	a.sse = strings.HasPrefix(contentType, "text/event-stream")
	a.ndjson = strings.HasPrefix(contentType, "application/x-ndjson")
	a.atLineHead = true
	if status < 400 && status >= 300 || isClientError(status) && a.race.alone(a) {
		a.race.claim(a)
	}
}

// Write buffers output until the attempt produces its first token — the
// first body byte of a 2xx answer, for SSE the first `data:` line, for
// NDJSON the first record with content (see writeNDJSON) — and then claims
// the race. The winner writes through to the client.
func (a *attempt) Write(p []byte) (int, error) {
	if a.status == 0 {
		a.WriteHeader(http.StatusOK)
	}
	if a.won {
		return a.race.w.Write(p)
	}
	if a.status >= 400 {
		// A failed answer, held (bounded) as the reply of last resort.
		if room := maxHeld - a.held.Len(); room > 0 {
			a.held.Write(p[:min(len(p), room)])
		}
		return len(p), nil
	}
	if a.race.lost(a) {
		return 0, errLost
	}
	if a.ndjson {
		return a.writeNDJSON(p)
	}
	if !a.sse || a.hasData(p) || a.held.Len()+len(p) > maxHeld {
		a.firstToken = time.Now()
		if a.race.claim(a) {
			return a.race.w.Write(p)
		}
		return 0, errLost
	}
	a.held.Write(p)
	return len(p), nil
}

// writeNDJSON holds an NDJSON stream (Ollama's /api/chat and
// /api/generate) until its first record with content, which claims the
// race (see recordOf). An error record before it fails the attempt as a
// 502 would: the record is held as the reply of last resort, as a JSON
// error document, and the returned error makes reverse_proxy stop, so the
// next attempt starts at once. A line longer than the hold bound counts as
// content.
func (a *attempt) writeNDJSON(p []byte) (int, error) {
	a.held.Write(p)
	for {
		rest := a.held.Bytes()[a.lineStart:]
		i := bytes.IndexByte(rest, '\n')
		if i < 0 {
			break
		}
		line := rest[:i]
		a.lineStart += i + 1
		switch recordOf(line) {
		case contentRecord:
			return a.claimHeld(p)
		case errorRecord:
			a.status = http.StatusBadGateway
			a.header.Set("Content-Type", "application/json; charset=utf-8")
			failure := append(bytes.Clone(bytes.TrimSpace(line)), '\n')
			a.held.Reset()
			a.held.Write(failure)
			return 0, errStreamError
		}
	}
	if a.held.Len() > maxHeld {
		return a.claimHeld(p)
	}
	return len(p), nil
}

// claimHeld claims the race with a first token at the end of the held
// output, which already holds p.
func (a *attempt) claimHeld(p []byte) (int, error) {
	a.firstToken = time.Now()
	if a.race.claim(a) {
		return len(p), nil // claim wrote the held output
	}
	return 0, errLost
}

// recordKind is what an NDJSON record says about its stream.
type recordKind int

const (
	noContent     recordKind = iota // a generation record without content yet
	contentRecord                   // the stream has begun: a first token
	errorRecord                     // {"error": ...}
)

// ndjsonRecord is what recordOf reads of an Ollama stream record.
type ndjsonRecord struct {
	Error    json.RawMessage `json:"error"`
	Done     *bool           `json:"done"`
	Response string          `json:"response"`
	Thinking string          `json:"thinking"`
	Message  struct {
		Content   string            `json:"content"`
		Thinking  string            `json:"thinking"`
		ToolCalls []json.RawMessage `json:"tool_calls"`
	} `json:"message"`
	Embedding  json.RawMessage `json:"embedding"`
	Embeddings json.RawMessage `json:"embeddings"`
}

// recordOf classifies one line of an NDJSON stream. Content is a message's
// content, thinking or tool calls, a generate record's response or
// thinking, an embedding, or the final record (done:true). A record with a
// "done" flag and none of those is held. Anything else — a line that is not
// such a record, or a record of another kind of stream (with no "done") —
// counts as content, so that streams of unknown kinds are never held back.
// Blank lines are skipped.
func recordOf(line []byte) recordKind {
	line = bytes.TrimSpace(line)
	if len(line) == 0 {
		return noContent
	}
	var rec ndjsonRecord
	if json.Unmarshal(line, &rec) != nil {
		return contentRecord
	}
	m := &rec.Message
	switch {
	case len(rec.Error) > 0 && string(rec.Error) != "null" && string(rec.Error) != `""`:
		return errorRecord
	case rec.Done == nil && rec.Embedding == nil && rec.Embeddings == nil,
		rec.Done != nil && *rec.Done,
		rec.Response != "", rec.Thinking != "",
		m.Content != "", m.Thinking != "", len(m.ToolCalls) > 0,
		rec.Embedding != nil, rec.Embeddings != nil:
		return contentRecord
	}
	return noContent
}

// hasData reports whether p starts a `data:` line of an SSE stream,
// tracking line boundaries, and a `data:` prefix split, across writes.
func (a *attempt) hasData(p []byte) bool {
	const prefix = "data:"
	for len(p) > 0 {
		if a.atLineHead {
			// a.headMatched bytes of the prefix began this line in earlier
			// writes; match the rest.
			n := min(len(prefix)-a.headMatched, len(p))
			if string(p[:n]) == prefix[a.headMatched:a.headMatched+n] {
				if a.headMatched+n == len(prefix) {
					return true
				}
				a.headMatched += n // p ends within the prefix
				return false
			}
			a.headMatched = 0
		}
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			a.atLineHead = false
			return false
		}
		p = p[i+1:]
		a.atLineHead = true
	}
	return false
}

// FlushError flushes the client's writer for the winner; before winning
// there is nothing to flush.
func (a *attempt) FlushError() error {
	if !a.won {
		return nil
	}
	return http.NewResponseController(a.race.w).Flush()
}

// Flush is FlushError for writers that only know http.Flusher.
func (a *attempt) Flush() { _ = a.FlushError() }

// Unwrap gives http.ResponseController the client's writer, for the
// controls a wrapper cannot provide, once the attempt has won: before,
// the client's connection is not the attempt's to touch.
func (a *attempt) Unwrap() http.ResponseWriter {
	if !a.race.isWinner(a) {
		return nil
	}
	return a.race.w
}

// writeHeld sends a held answer (the reply of last resort) to w.
func (a *attempt) writeHeld(w http.ResponseWriter) {
	h := w.Header()
	maps.Copy(h, a.header)
	h.Del("Content-Length")
	if a.held.Len() < maxHeld {
		h.Set("Content-Length", strconv.Itoa(a.held.Len()))
	}
	w.WriteHeader(a.status)
	_, _ = w.Write(a.held.Bytes())
}

// race coordinates the attempts of one request.
type race struct {
	w  http.ResponseWriter // the client's writer
	mu sync.Mutex

	attempts []*attempt
	winner   *attempt
	onWin    func(*attempt) // called under mu before the winner's first write
}

// claim makes a the winner if there is none yet: the other attempts are
// cancelled at once and the held output and headers go to the client.
func (r *race) claim(a *attempt) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.winner != nil {
		return r.winner == a
	}
	r.winner = a
	for _, other := range r.attempts {
		if other != a {
			other.cancel()
		}
	}
	if r.onWin != nil {
		r.onWin(a)
	}
	maps.Copy(r.w.Header(), a.header)
	r.w.WriteHeader(a.status)
	a.won = true
	if a.held.Len() > 0 {
		_, _ = r.w.Write(a.held.Bytes())
	}
	return true
}

// isWinner reports whether a has won the race.
func (r *race) isWinner(a *attempt) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.winner == a
}

// wonByLater reports whether an attempt started after a has won.
func (r *race) wonByLater(a *attempt) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.winner != nil && r.winner.index > a.index
}

// decided reports whether some attempt has won.
func (r *race) decided() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.winner != nil
}

// alone reports whether a is the only attempt still running.
func (r *race) alone(a *attempt) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, other := range r.attempts {
		select {
		case <-other.done:
		default:
			if other != a {
				return false
			}
		}
	}
	return true
}

// lost reports whether another attempt has won.
func (r *race) lost(a *attempt) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.winner != nil && r.winner != a
}

// isClientError reports a final 4xx: the request itself is wrong, so no
// other attempt would do better. 429 (overloaded node) is not one.
func isClientError(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusTooManyRequests
}
