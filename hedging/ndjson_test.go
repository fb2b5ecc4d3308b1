package hedging

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"
)

func TestRecordOf(t *testing.T) {
	for _, tc := range []struct {
		line string
		want recordKind
	}{
		{`{"model":"m","message":{"role":"assistant","content":""},"done":false}`, noContent},
		{`{"model":"m","response":"","done":false}`, noContent},
		{`   `, noContent},
		{``, noContent},
		{`{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}`, contentRecord},
		{`{"model":"m","message":{"role":"assistant","content":"","thinking":"Hmm"},"done":false}`, contentRecord},
		{`{"model":"m","message":{"role":"assistant","content":"","tool_calls":[{"function":{"name":"f","arguments":{}}}]},"done":false}`, contentRecord},
		{`{"model":"m","response":"Hi","done":false}`, contentRecord},
		{`{"model":"m","response":"","thinking":"Hmm","done":false}`, contentRecord},
		{`{"model":"m","message":{"role":"assistant","content":""},"done":true,"done_reason":"stop","eval_count":0}`, contentRecord},
		{`{"model":"m","response":"","done":true,"done_reason":"load"}`, contentRecord},
		{`{"model":"m","embeddings":[[0.1]]}`, contentRecord},
		{`{"embedding":[0.1]}`, contentRecord},
		{`{"status":"pulling manifest"}`, contentRecord}, // another kind of stream: not held
		{`not json`, contentRecord},
		{`{"model":"m","message":{"content":5},"done":false}`, contentRecord}, // not an Ollama record
		{`{"error":"model runner has unexpectedly stopped"}`, errorRecord},
		{`{"error":{"message":"x"}}`, errorRecord},
		{`{"error":null,"model":"m","message":{"content":""},"done":false}`, noContent},
		{`{"error":"","model":"m","response":"x","done":false}`, contentRecord},
	} {
		require.Equal(t, tc.want, recordOf([]byte(tc.line)), "%s", tc.line)
	}
}

const (
	recEmpty   = `{"model":"m","message":{"role":"assistant","content":""},"done":false}` + "\n"
	recContent = `{"model":"m","message":{"role":"assistant","content":"Hi"},"done":false}` + "\n"
	recDone    = `{"model":"m","message":{"role":"assistant","content":""},"done":true,"eval_count":1}` + "\n"
	recError   = `{"error":"model runner has unexpectedly stopped"}` + "\n"
)

func TestAttemptNDJSONHeldUntilContentThenStreamed(t *testing.T) {
	rc, rec, add := newTestRace()
	a, b := add(), add()
	for _, x := range []*attempt{a, b} {
		x.Header().Set("Content-Type", "application/x-ndjson")
		x.WriteHeader(http.StatusOK)
	}

	// A record without content, and half of the first one with content,
	// split mid-line: held.
	half := len(recContent) / 2
	for _, w := range []string{recEmpty[:10], recEmpty[10:] + recContent[:half]} {
		n, err := b.Write([]byte(w))
		require.NoError(t, err)
		require.Equal(t, len(w), n)
	}
	require.Nil(t, rc.winner, "no content yet")
	require.Zero(t, rec.Body.Len())

	// The line with content ends: the attempt wins, its held bytes go first.
	w := recContent[half:] + `{"mo`
	n, err := b.Write([]byte(w))
	require.NoError(t, err)
	require.Equal(t, len(w), n)
	require.Same(t, b, rc.winner)
	require.False(t, b.firstToken.IsZero())
	_, err = b.Write([]byte(`del":"m"}` + "\n" + recError + recDone))
	require.NoError(t, err, "after content, records (an error one too) are the client's")

	_, err = a.Write([]byte(recContent))
	require.ErrorIs(t, err, errLost)
	require.Equal(t, recEmpty+recContent+`{"model":"m"}`+"\n"+recError+recDone, rec.Body.String())
	require.Equal(t, "application/x-ndjson", rec.Header().Get("Content-Type"))
}

func TestAttemptNDJSONErrorBeforeContentFails(t *testing.T) {
	rc, rec, add := newTestRace()
	a := add()
	a.Header().Set("Content-Type", "application/x-ndjson")
	a.WriteHeader(http.StatusOK)
	_, err := a.Write([]byte(recEmpty))
	require.NoError(t, err)
	_, err = a.Write([]byte(recError))
	require.ErrorIs(t, err, errStreamError, "the error stops reverse_proxy's copy")
	require.Nil(t, rc.winner)
	require.Zero(t, rec.Body.Len())
	require.Equal(t, http.StatusBadGateway, a.status, "a failed attempt, like a 5xx")

	// Its reply of last resort is the error record alone, as a JSON error.
	out := httptest.NewRecorder()
	a.writeHeld(out)
	require.Equal(t, http.StatusBadGateway, out.Code)
	require.Equal(t, "application/json; charset=utf-8", out.Header().Get("Content-Type"))
	require.Equal(t, recError, out.Body.String())
}

func TestAttemptNDJSONLongLineWins(t *testing.T) {
	rc, rec, add := newTestRace()
	a := add()
	a.Header().Set("Content-Type", "application/x-ndjson")
	a.WriteHeader(http.StatusOK)
	long := `{"model":"m","message":{"content":"` + strings.Repeat("x", maxHeld)
	_, err := a.Write([]byte(long))
	require.NoError(t, err)
	require.Same(t, a, rc.winner, "a line longer than the hold bound is not held")
	require.Equal(t, long, rec.Body.String())
}

func ndjson(w http.ResponseWriter, records ...string) error {
	return stream(w, "application/x-ndjson", records...)
}

// TestServeNDJSONErrorRecordFailsOver: an error record before content is a
// failed attempt: the next starts at once, and the client sees only its
// stream.
func TestServeNDJSONErrorRecordFailsOver(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			return ndjson(w, recEmpty, recError, recContent)
		}
		return ndjson(w, recContent, recDone)
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 2, up.numCalls())
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, recContent+recDone, rec.Body.String())
	require.Equal(t, "node-2", rec.Header().Get("X-AI-LB-Node"))
}

// TestServeNDJSONErrorRecordEverywhere: when every attempt's stream begins
// with an error record, the client gets the last one as a 502.
func TestServeNDJSONErrorRecordEverywhere(t *testing.T) {
	h := testHandler(time.Hour)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		return ndjson(w, recError)
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 2, up.numCalls(), "the first attempt and one retry")
	require.Equal(t, http.StatusBadGateway, rec.Code)
	require.JSONEq(t, `{"error":"model runner has unexpectedly stopped"}`, rec.Body.String())
}

// TestServeNDJSONHedgeWinsOnContentNotBytes: the first attempt sends its
// headers and a record without content at once, but its content late; the
// hedge's content comes first and wins, and the first is cancelled.
func TestServeNDJSONHedgeWinsOnContentNotBytes(t *testing.T) {
	h := testHandler(20 * time.Millisecond)
	up := &fakeUpstream{behave: func(i int, w http.ResponseWriter, r *http.Request) error {
		if i == 1 {
			_ = ndjson(w, recEmpty)
			<-r.Context().Done()
			return nil
		}
		return ndjson(w, recEmpty, recContent, recDone)
	}}
	rec := httptest.NewRecorder()
	require.NoError(t, h.ServeHTTP(rec, testRequest(context.Background()), up))
	require.Equal(t, 2, up.numCalls())
	require.Equal(t, "node-2", rec.Header().Get("X-AI-LB-Node"))
	require.Equal(t, recEmpty+recContent+recDone, rec.Body.String())
	require.Error(t, up.ctxs[0].Err(), "the loser is cancelled")
}
