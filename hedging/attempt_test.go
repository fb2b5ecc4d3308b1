package hedging

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/stretchr/testify/require"
)

func TestHasDataAcrossWrites(t *testing.T) {
	for _, tc := range []struct {
		name   string
		writes []string
		want   int // index of the write that starts the first data line; -1: none
	}{
		{"one event", []string{"data: x\n\n"}, 0},
		{"no space", []string{"data:x\n\n"}, 0},
		{"comment then data, one write", []string{": c\nevent: e\ndata: y\n\n"}, 0},
		{"comment, event, data", []string{": keep-alive\n\n", "event: message\n", "data: y\n\n"}, 2},
		{"comment split mid-line", []string{": keep", "alive\n\n", "data: 1\n\n"}, 2},
		{"blank line then data", []string{"\n", "data: 1"}, 1},
		{"CRLF lines", []string{"id: 1\r\n", "data: y\r\n"}, 1},
		{"data: inside a line is no data line", []string{"event: data:", " x\n", "data: y\n"}, 2},
		{"field name starting like data", []string{"dat", "x\n", "data: y"}, 2},
		{"prefix split in two", []string{"da", "ta: x\n\n"}, 1},
		{"prefix split after a line", []string{": c\nd", "ata: x\n"}, 1},
		{"prefix split byte by byte", []string{"d", "a", "t", "a", ":", " x\n"}, 4},
		{"split prefix that turns out not to be data", []string{"da", "x\n", "data: y\n"}, 2},
		{"split prefix ending the line", []string{"dat", "\n", "data: y\n"}, 2},
		{"no data at all", []string{": c\n", "event: x\n", "id: 2\n\n"}, -1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			a := &attempt{atLineHead: true}
			got := -1
			for i, w := range tc.writes {
				if a.hasData([]byte(w)) {
					got = i
					break
				}
			}
			require.Equal(t, tc.want, got, "writes %q", tc.writes)
		})
	}
}

// newTestRace returns a race writing to a recorder, and a function adding
// an attempt to it.
func newTestRace() (*race, *httptest.ResponseRecorder, func() *attempt) {
	rec := httptest.NewRecorder()
	rc := &race{w: rec}
	add := func() *attempt {
		_, cancel := context.WithCancel(context.Background())
		a := &attempt{race: rc, index: len(rc.attempts) + 1, cancel: cancel,
			done: make(chan struct{}), header: make(http.Header)}
		rc.attempts = append(rc.attempts, a)
		return a
	}
	return rc, rec, add
}

func TestAttemptSSEHeldUntilDataThenStreamed(t *testing.T) {
	rc, rec, add := newTestRace()
	a, b := add(), add()

	a.Header().Set("Content-Type", "text/event-stream")
	a.WriteHeader(http.StatusOK)
	b.Header().Set("Content-Type", "text/event-stream")
	b.Header().Set("X-From", "b")
	b.WriteHeader(http.StatusOK)

	// Comments and an event line are held: no winner yet.
	for _, w := range []string{": ping\n\n", "event: msg\n", "da"} {
		n, err := b.Write([]byte(w))
		require.NoError(t, err)
		require.Equal(t, len(w), n)
	}
	require.Nil(t, rc.winner, "no data line yet")
	require.Zero(t, rec.Body.Len())

	// The data line wins; the held bytes go first.
	_, err := b.Write([]byte("ta: 1\n\n"))
	require.NoError(t, err)
	require.Same(t, b, rc.winner)
	_, err = b.Write([]byte("data: [DONE]\n\n"))
	require.NoError(t, err)

	// The other attempt's output is refused and never reaches the client.
	_, err = a.Write([]byte("data: from-a\n\n"))
	require.ErrorIs(t, err, errLost)

	require.Equal(t, ": ping\n\nevent: msg\ndata: 1\n\ndata: [DONE]\n\n", rec.Body.String())
	require.Equal(t, "b", rec.Header().Get("X-From"))
	require.Equal(t, http.StatusOK, rec.Code)
}

func TestAttemptNonSSEWinsOnFirstByte(t *testing.T) {
	rc, rec, add := newTestRace()
	a := add()
	a.Header().Set("Content-Type", "application/json")
	_, err := a.Write([]byte(`{"x":1}`)) // implicit 200
	require.NoError(t, err)
	require.Same(t, a, rc.winner)
	require.Equal(t, http.StatusOK, rec.Code)
	require.Equal(t, `{"x":1}`, rec.Body.String())
}

func TestAttemptFailedAnswerHeldBounded(t *testing.T) {
	rc, rec, add := newTestRace()
	a := add()
	a.Header().Set("Content-Type", "application/json")
	a.WriteHeader(http.StatusServiceUnavailable)
	big := strings.Repeat("x", maxHeld+100)
	n, err := a.Write([]byte(big))
	require.NoError(t, err)
	require.Equal(t, len(big), n)
	require.Nil(t, rc.winner, "a 5xx does not win")
	require.Zero(t, rec.Body.Len())
	require.Equal(t, maxHeld, a.held.Len())

	// Written as the reply of last resort, without a Content-Length it
	// cannot honour.
	out := httptest.NewRecorder()
	a.writeHeld(out)
	require.Equal(t, http.StatusServiceUnavailable, out.Code)
	require.Equal(t, maxHeld, out.Body.Len())
	require.Empty(t, out.Header().Get("Content-Length"))

	b := add()
	b.WriteHeader(http.StatusBadGateway)
	_, _ = b.Write([]byte("bad"))
	out = httptest.NewRecorder()
	b.writeHeld(out)
	require.Equal(t, "3", out.Header().Get("Content-Length"))
	require.Equal(t, "bad", out.Body.String())
}

func TestAttemptClientErrorWinsWhenAlone(t *testing.T) {
	rc, rec, add := newTestRace()
	a, b := add(), add()
	a.WriteHeader(http.StatusTooManyRequests) // retryable: does not win
	require.Nil(t, rc.winner)
	b.WriteHeader(http.StatusBadRequest)
	require.Nil(t, rc.winner, "a client error while another attempt runs is held")
	_, err := b.Write([]byte("held"))
	require.NoError(t, err)
	require.Equal(t, "held", b.held.String())

	close(a.done)
	close(b.done)
	c := add()
	c.WriteHeader(http.StatusBadRequest)
	require.Same(t, c, rc.winner, "alone, a client error wins at once")
	require.Equal(t, http.StatusBadRequest, rec.Code)
	_, err = c.Write([]byte("bad request"))
	require.NoError(t, err)
	require.Equal(t, "bad request", rec.Body.String())
}

func TestAttemptRedirectWinsAtOnce(t *testing.T) {
	rc, rec, add := newTestRace()
	a, b := add(), add()
	b.header.Set("Location", "/elsewhere")
	b.WriteHeader(http.StatusFound)
	require.Same(t, b, rc.winner, "a redirect is an answer, not a failure")
	require.Equal(t, http.StatusFound, rec.Code)
	require.Equal(t, "/elsewhere", rec.Header().Get("Location"))
	_, err := a.Write([]byte("x"))
	require.ErrorIs(t, err, errLost)
}

func TestAttemptUnwrapOnlyForTheWinner(t *testing.T) {
	rc, rec, add := newTestRace()
	a, b := add(), add()
	require.Nil(t, a.Unwrap(), "not the client's writer before winning")
	b.WriteHeader(http.StatusOK)
	rc.claim(b)
	require.Nil(t, a.Unwrap())
	require.Same(t, http.ResponseWriter(rec), b.Unwrap())
}

func TestAttemptDropsInformationalAnd499(t *testing.T) {
	rc, _, add := newTestRace()
	a := add()
	a.WriteHeader(http.StatusEarlyHints)
	a.WriteHeader(499)
	require.Zero(t, a.status)
	require.Nil(t, rc.winner)
}

func TestIsClientError(t *testing.T) {
	require.True(t, isClientError(400))
	require.True(t, isClientError(404))
	require.False(t, isClientError(429))
	require.False(t, isClientError(500))
}
