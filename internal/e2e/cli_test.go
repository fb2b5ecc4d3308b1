package e2e

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/simnode"
)

// aiLB runs `ai-lb ai-lb <args>` and returns its output.
func aiLB(t *testing.T, env []string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(binary(t), append([]string{"ai-lb"}, args...)...)
	cmd.Env = append(os.Environ(), env...)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

type listedNode struct {
	ID    string `json:"id"`
	Live  bool   `json:"live"`
	State string `json:"state"`
	Node  struct {
		URL            string   `json:"url"`
		Models         []string `json:"models"`
		MaxConcurrency int      `json:"max_concurrency"`
		Weight         float64  `json:"weight"`
	} `json:"node"`
	Error string `json:"error"`
}

func listNodes(t *testing.T, redisURL string) []listedNode {
	t.Helper()
	out, err := aiLB(t, nil, "nodes", "--json", "--redis", redisURL)
	require.NoError(t, err, out)
	var nodes []listedNode
	require.NoError(t, json.Unmarshal([]byte(out), &nodes), out)
	return nodes
}

func TestCLIRegisterListDeregister(t *testing.T) {
	c := newCluster(t)
	n := c.startNode("cli-node", simnode.Config{Models: []string{"m1", "m2"}})

	// Without --models, register asks the node's /v1/models; --redis
	// defaults to $REDIS_URL.
	out, err := aiLB(t, []string{"REDIS_URL=" + c.redis.URL()}, "register", "--once", "--url", n.URL,
		"--id", "cli-node", "--max-concurrency", "4", "--weight", "2")
	require.NoError(t, err, out)

	nodes := listNodes(t, c.redis.URL())
	require.Len(t, nodes, 1)
	require.Equal(t, "cli-node", nodes[0].ID)
	require.True(t, nodes[0].Live)
	require.Equal(t, n.URL, nodes[0].Node.URL)
	require.Equal(t, []string{"m1", "m2"}, nodes[0].Node.Models)
	require.Equal(t, 4, nodes[0].Node.MaxConcurrency)
	require.Equal(t, 2.0, nodes[0].Node.Weight)

	table, err := aiLB(t, nil, "nodes", "--redis", c.redis.URL())
	require.NoError(t, err, table)
	require.Contains(t, table, "cli-node")
	require.Contains(t, table, "live")
	require.Equal(t, "live", nodes[0].State)

	out, err = aiLB(t, nil, "deregister", "--drain", "--redis", c.redis.URL(), "--id", "cli-node")
	require.NoError(t, err, out)
	nodes = listNodes(t, c.redis.URL())
	require.Len(t, nodes, 1, "a drained node stays registered")
	require.Equal(t, "draining", nodes[0].State)
	require.True(t, nodes[0].Live)
	table, err = aiLB(t, nil, "nodes", "--redis", c.redis.URL())
	require.NoError(t, err, table)
	require.Contains(t, table, "draining")

	out, err = aiLB(t, nil, "deregister", "--redis", c.redis.URL(), "--id", "cli-node")
	require.NoError(t, err, out)
	require.Empty(t, listNodes(t, c.redis.URL()))

	out, err = aiLB(t, nil, "deregister", "--redis", c.redis.URL(), "--id", "cli-node")
	require.Error(t, err, "deregistering an unknown node fails")
	require.Contains(t, out, "no node")
	out, err = aiLB(t, nil, "deregister", "--drain", "--redis", c.redis.URL(), "--id", "cli-node")
	require.Error(t, err, "draining an unknown node fails")
	require.Contains(t, out, "no node")

	out, err = aiLB(t, nil, "register", "--once", "--redis", c.redis.URL(), "--url", "not a url", "--models", "m")
	require.Error(t, err, out)
}

func TestCLISimnodeRegistersAndDeregistersOnSIGTERM(t *testing.T) {
	c := newCluster(t)
	port := freePort(t)
	p := startAILB(t, "simnode", "--listen", fmt.Sprintf("127.0.0.1:%d", port),
		"--id", "sim-agent", "--models", "agent-model", "--register", "--redis", c.redis.URL(), "--ttl", "3s")
	eventually(t, 10*time.Second, func() error {
		nodes := listNodes(t, c.redis.URL())
		if len(nodes) != 1 || !nodes[0].Live || nodes[0].Node.Models[0] != "agent-model" {
			return fmt.Errorf("nodes: %+v", nodes)
		}
		return nil
	})
	// It keeps heartbeating past its TTL.
	time.Sleep(4 * time.Second)
	nodes := listNodes(t, c.redis.URL())
	require.Len(t, nodes, 1)
	require.True(t, nodes[0].Live, "heartbeats keep the node live")

	p.stop(os.Interrupt)
	require.Empty(t, listNodes(t, c.redis.URL()), "the node deregisters on the way out")
}

// TestCLIRegisterAgentDrainsOnSIGUSR1: a running `register` agent drains
// its node on SIGUSR1 (registered, live, not routed) and deregisters it on
// SIGTERM.
func TestCLIRegisterAgentDrainsOnSIGUSR1(t *testing.T) {
	c := newCluster(t)
	n := c.startNode("drained", simnode.Config{})
	p := startAILB(t, "register", "--url", n.URL, "--id", "drained", "--redis", c.redis.URL(), "--ttl", "3s")
	state := func(want string) func() error {
		return func() error {
			nodes := listNodes(t, c.redis.URL())
			if len(nodes) != 1 || nodes[0].State != want {
				return fmt.Errorf("want one %s node: %+v", want, nodes)
			}
			return nil
		}
	}
	eventually(t, 10*time.Second, state("live"))

	require.NoError(t, p.cmd.Process.Signal(syscall.SIGUSR1))
	eventually(t, 10*time.Second, state("draining"))
	time.Sleep(2 * time.Second) // heartbeats keep the drain
	require.NoError(t, state("draining")())

	p.stop(syscall.SIGTERM)
	require.Empty(t, listNodes(t, c.redis.URL()), "the node deregisters on the way out")
}

// aiLBProcess is a running `ai-lb ai-lb <args>`.
type aiLBProcess struct {
	t      *testing.T
	cmd    *exec.Cmd
	output strings.Builder
	done   chan error
}

// startAILB starts `ai-lb ai-lb <args>`; it is killed when the test ends.
func startAILB(t *testing.T, args ...string) *aiLBProcess {
	t.Helper()
	p := &aiLBProcess{t: t, cmd: exec.Command(binary(t), append([]string{"ai-lb"}, args...)...), done: make(chan error, 1)}
	p.cmd.Stdout, p.cmd.Stderr = &p.output, &p.output
	require.NoError(t, p.cmd.Start())
	go func() { p.done <- p.cmd.Wait() }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Kill()
		<-p.done
	})
	return p
}

// stop sends sig and requires the process to exit cleanly within 10s.
func (p *aiLBProcess) stop(sig os.Signal) {
	p.t.Helper()
	require.NoError(p.t, p.cmd.Process.Signal(sig))
	select {
	case err := <-p.done:
		p.done <- err // for the cleanup
		require.NoError(p.t, err, p.output.String())
	case <-time.After(10 * time.Second):
		_ = p.cmd.Process.Kill()
		err := <-p.done
		p.done <- err
		p.t.Fatalf("ai-lb %v did not exit on %v: %s", p.cmd.Args[1:], sig, p.output.String())
	}
}
