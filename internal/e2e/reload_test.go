package e2e

import (
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

// watcherLoops counts the running registry watchers.
func watcherLoops() int {
	n := 0
	for _, g := range ourGoroutines() {
		if strings.Contains(g, "registry.(*Watcher).loop") {
			n++
		}
	}
	return n
}

func TestReloadKeepsRoutingWithOneWatcher(t *testing.T) {
	c := newCluster(t)
	c.addNode("node-a", simnode.Config{})
	c.addNode("node-b", simnode.Config{})

	port := freePort(t)
	startCaddy(t, exampleCaddyfile(t, port))
	base := fmt.Sprintf("http://127.0.0.1:%d", port)
	waitNodes(t, base, 2)
	require.Equal(t, 1, watcherLoops())

	// Reload through the admin API (caddytest POSTs /load) several times,
	// with a changed site each time, while requests keep flowing.
	for i := 0; i < 3; i++ {
		port = freePort(t)
		startCaddy(t, exampleCaddyfile(t, port))
		base = fmt.Sprintf("http://127.0.0.1:%d", port)
		for j := 0; j < 5; j++ {
			status, _, body, err := chat(base, "sim-model")
			require.NoError(t, err)
			require.Equal(t, http.StatusOK, status, body)
		}
		require.Equal(t, 1, watcherLoops(), "a reload with the same registry settings must reuse the watcher")
	}

	// A reload that changes the registry settings replaces the watcher.
	changed := strings.Replace(exampleCaddyfile(t, freePort(t)), "prefix ai-lb", "prefix other", 1)
	startCaddy(t, changed)
	eventually(t, 10*time.Second, func() error {
		if n := watcherLoops(); n != 1 {
			return fmt.Errorf("%d watchers", n)
		}
		return nil
	})

	// Unloading every config leaves no goroutine of ours behind.
	unloadAndRequireNoGoroutines(t)
}
