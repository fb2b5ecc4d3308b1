// Package testredis starts real redis-server processes for tests, each on a
// free loopback port, so a test can kill and restart its Redis at will: one
// Redis (Start), a Redis Cluster (StartCluster), or a master and replica
// behind Sentinel (StartSentinel).
package testredis

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Server is one redis-server process owned by a test.
type Server struct {
	t    testing.TB
	Port int
	// conf is the config file of a server that needs one (a sentinel
	// rewrites its own), else "".
	conf string
	args []string // further command-line options
	dir  string   // working directory: replication and cluster files, the log
	cmd  *exec.Cmd
}

// Start runs a redis-server on a free loopback port and stops it when the
// test ends. The test fails at once if redis-server is not installed, and
// skips under -short: the unit loop runs without Redis.
func Start(t testing.TB) *Server {
	t.Helper()
	skipShort(t)
	return start(t, t.TempDir(), "")
}

// start runs a redis-server with the given config file ("" for none) and
// options on a free port, in dir, until the test ends.
func start(t testing.TB, dir, conf string, args ...string) *Server {
	t.Helper()
	return startOn(t, freePort(t), dir, conf, args...)
}

// startOn is start on a given port.
func startOn(t testing.TB, port int, dir, conf string, args ...string) *Server {
	t.Helper()
	s := &Server{t: t, Port: port, conf: conf, args: args, dir: dir}
	s.Restart()
	t.Cleanup(s.Kill)
	return s
}

func skipShort(t testing.TB) {
	t.Helper()
	if testing.Short() {
		t.Skip("needs redis-server: skipped under -short")
	}
}

// URL returns the server's redis:// URL.
func (s *Server) URL() string { return fmt.Sprintf("redis://127.0.0.1:%d", s.Port) }

// Addr returns the server's host:port.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.Port)) }

// Client returns a plain client of the server (on a cluster node: MOVED
// errors are not followed), closed when the test ends.
func (s *Server) Client(t testing.TB) *redis.Client {
	rdb := s.client()
	t.Cleanup(func() { rdb.Close() })
	return rdb
}

// String names the server by address, for messages.
func (s *Server) String() string { return fmt.Sprintf("redis-server %s", s.Addr()) }

// Kill stops the server abruptly (SIGKILL); its data is lost.
func (s *Server) Kill() {
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Running reports whether the server's process runs (it was not killed).
func (s *Server) Running() bool { return s.cmd != nil }

// Restart starts the server again on the same port, with its data empty
// (a cluster node keeps its cluster configuration, a replica replicates
// again), and waits until it answers PING.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	path, err := exec.LookPath("redis-server")
	if err != nil {
		s.t.Fatalf("redis-server not found (apt-get install redis-server): %v", err)
	}
	var argv []string
	if s.conf != "" {
		argv = append(argv, s.conf)
	}
	argv = append(argv, "--port", strconv.Itoa(s.Port), "--bind", "127.0.0.1",
		"--protected-mode", "no", "--dir", s.dir)
	if s.conf == "" {
		// Sentinels refuse persistence options.
		argv = append(argv, "--save", "", "--appendonly", "no")
	}
	s.cmd = exec.Command(path, append(argv, s.args...)...)
	log, err := os.OpenFile(s.logPath(), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		s.t.Fatal(err)
	}
	defer log.Close()
	s.cmd.Stdout, s.cmd.Stderr = log, log
	if err := s.cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	c := s.client()
	defer c.Close()
	deadline := time.Now().Add(10 * time.Second)
	for c.Ping(context.Background()).Err() != nil {
		if time.Now().After(deadline) {
			s.t.Fatalf("redis-server on port %d did not answer; its log:\n%s", s.Port, s.Log())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// client returns a plain client of this one server, without retries.
func (s *Server) client() *redis.Client {
	return redis.NewClient(&redis.Options{Addr: s.Addr(), MaxRetries: -1, DialTimeout: time.Second})
}

func (s *Server) logPath() string {
	return filepath.Join(s.dir, fmt.Sprintf("redis-%d.log", s.Port))
}

// Log returns the last lines the server logged, for a failure message.
func (s *Server) Log() string {
	b, _ := os.ReadFile(s.logPath())
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	return strings.Join(lines[max(0, len(lines)-40):], "\n")
}

// info returns one field of the server's INFO section (or CLUSTER INFO with
// section "cluster-info"), "" if it cannot be read.
func (s *Server) info(section, field string) string {
	c := s.client()
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	var text string
	var err error
	if section == "cluster-info" {
		text, err = c.ClusterInfo(ctx).Result()
	} else {
		text, err = c.Info(ctx, section).Result()
	}
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(text, "\n") {
		if v, ok := strings.CutPrefix(strings.TrimSpace(line), field+":"); ok {
			return v
		}
	}
	return ""
}

// waitUntil polls cond until it holds, failing the test after timeout with
// what and the logs of the servers.
func waitUntil(t testing.TB, timeout time.Duration, what string, servers []*Server, cond func() bool) {
	t.Helper()
	end := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(end) {
			var logs strings.Builder
			for _, s := range servers {
				fmt.Fprintf(&logs, "--- log of %s:\n%s\n", s.Addr(), s.Log())
			}
			t.Fatalf("timed out after %v waiting for %s\n%s", timeout, what, logs.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort(t testing.TB) int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// Cluster is a Redis Cluster of three masters without replicas, each a
// Server on a free loopback port, stopped when the test ends.
type Cluster struct {
	Masters []*Server
}

// StartCluster starts three cluster-enabled redis-servers, gives each a
// third of the slots, joins them and waits until every one of them knows
// the others and answers cluster_state:ok. It skips under -short.
func StartCluster(t testing.TB) *Cluster {
	t.Helper()
	skipShort(t)
	dir := t.TempDir()
	c := &Cluster{}
	for range 3 {
		port := freePort(t)
		s := &Server{t: t, Port: port, dir: dir, args: []string{
			"--cluster-enabled", "yes",
			"--cluster-config-file", filepath.Join(dir, "nodes-"+strconv.Itoa(port)+".conf"),
			"--cluster-node-timeout", "2000",
		}}
		s.Restart()
		t.Cleanup(s.Kill)
		c.Masters = append(c.Masters, s)
	}
	// What `redis-cli --cluster create` does, without needing redis-cli.
	ctx := context.Background()
	for i, s := range c.Masters {
		rdb := s.client()
		lo, hi := c.slots(i)
		err := rdb.ClusterAddSlotsRange(ctx, lo, hi).Err()
		if err == nil && i > 0 {
			err = rdb.ClusterMeet(ctx, "127.0.0.1", strconv.Itoa(c.Masters[0].Port)).Err()
		}
		rdb.Close()
		if err != nil {
			t.Fatalf("forming the cluster on %s: %v", s.Addr(), err)
		}
	}
	c.waitOK(t)
	return c
}

// waitOK waits until every running master says cluster_state:ok and knows
// all the others.
func (c *Cluster) waitOK(t testing.TB) {
	t.Helper()
	want := strconv.Itoa(len(c.Masters))
	waitUntil(t, 20*time.Second, "cluster_state:ok on every node", c.Masters, func() bool {
		for _, s := range c.Masters {
			if s.Running() && (s.info("cluster-info", "cluster_state") != "ok" || s.info("cluster-info", "cluster_known_nodes") != want) {
				return false
			}
		}
		return true
	})
}

// URL returns the cluster's redis:// URL, which names every master:
// redis://host:port?addr=host2:port2&addr=host3:port3.
func (c *Cluster) URL() string {
	var addrs []string
	for _, s := range c.Masters[1:] {
		addrs = append(addrs, "addr="+s.Addr())
	}
	return c.Masters[0].URL() + "?" + strings.Join(addrs, "&")
}

// Owner returns the master that serves key's slot.
func (c *Cluster) Owner(t testing.TB, key string) *Server {
	t.Helper()
	rdb := c.Masters[0].client()
	defer rdb.Close()
	slot, err := rdb.ClusterKeySlot(context.Background(), key).Result()
	if err != nil {
		t.Fatalf("CLUSTER KEYSLOT %s: %v", key, err)
	}
	for i, s := range c.Masters {
		if lo, hi := c.slots(i); lo <= int(slot) && int(slot) <= hi {
			return s
		}
	}
	t.Fatalf("slot %d of %s is not in the cluster", slot, key)
	return nil
}

// slots returns the first and last slot of the i-th master.
func (c *Cluster) slots(i int) (lo, hi int) {
	const slots = 16384
	return i * slots / len(c.Masters), (i+1)*slots/len(c.Masters) - 1
}

// MasterName is the name the sentinels of StartSentinel monitor.
const MasterName = "mymaster"

// Sentinel is a Redis master and its replica, monitored by three sentinels
// that fail over within a few seconds of the master going down
// (down-after-milliseconds 1000), all on free loopback ports and stopped
// when the test ends.
type Sentinel struct {
	t testing.TB
	// Redis holds the two data servers: the first master, then its replica.
	Redis     []*Server
	Sentinels []*Server
}

// StartSentinel starts a master, a replica of it and three sentinels, and
// waits until every sentinel knows the replica and the other sentinels, so
// that a failover can start at once. It skips under -short.
func StartSentinel(t testing.TB) *Sentinel {
	t.Helper()
	skipShort(t)
	dir := t.TempDir()
	// A master starts a full sync at once, rather than waiting 5 s for more
	// replicas to share it.
	noDelay := []string{"--repl-diskless-sync-delay", "0"}
	master := start(t, dir, "", noDelay...)
	replica := start(t, dir, "", append(noDelay, "--replicaof", "127.0.0.1", strconv.Itoa(master.Port))...)
	s := &Sentinel{t: t, Redis: []*Server{master, replica}}
	waitUntil(t, 20*time.Second, "the replica's link to its master", s.Redis, func() bool {
		return replica.info("replication", "master_link_status") == "up"
	})
	// Each sentinel is told of the others and of the replica, which it
	// would otherwise learn within seconds through the master.
	ports := []int{freePort(t), freePort(t), freePort(t)}
	id := func(port int) string { return fmt.Sprintf("%040d", port) }
	for _, port := range ports {
		conf := fmt.Sprintf(`sentinel myid %[3]s
sentinel monitor %[1]s 127.0.0.1 %[2]d 2
sentinel down-after-milliseconds %[1]s 1000
sentinel failover-timeout %[1]s 3000
sentinel parallel-syncs %[1]s 1
sentinel known-replica %[1]s 127.0.0.1 %[4]d
`, MasterName, master.Port, id(port), replica.Port)
		for _, other := range ports {
			if other != port {
				conf += fmt.Sprintf("sentinel known-sentinel %s 127.0.0.1 %d %s\n", MasterName, other, id(other))
			}
		}
		path := filepath.Join(dir, fmt.Sprintf("sentinel-%d.conf", port))
		if err := os.WriteFile(path, []byte(conf), 0o644); err != nil {
			t.Fatal(err)
		}
		s.Sentinels = append(s.Sentinels, startOn(t, port, dir, path, "--sentinel"))
	}
	waitUntil(t, 30*time.Second, "every sentinel to know the replica and the other sentinels", s.servers(), func() bool {
		for _, sn := range s.Sentinels {
			m := sn.sentinelMaster()
			if m["num-other-sentinels"] != "2" || m["num-slaves"] != "1" {
				return false
			}
		}
		return true
	})
	return s
}

// URL returns the URL ai-lb connects through:
// redis://sentinel1?master_name=mymaster&addr=sentinel2&addr=sentinel3.
func (s *Sentinel) URL() string {
	q := []string{"master_name=" + MasterName}
	for _, sn := range s.Sentinels[1:] {
		q = append(q, "addr="+sn.Addr())
	}
	return s.Sentinels[0].URL() + "?" + strings.Join(q, "&")
}

// Master returns the data server every sentinel names as the master, once
// it answers as one, failing the test if that does not happen within 20 s.
func (s *Sentinel) Master() *Server {
	s.t.Helper()
	var master *Server
	waitUntil(s.t, 20*time.Second, "the sentinels to agree on a master", s.servers(), func() bool {
		master = s.announced()
		return master != nil
	})
	return master
}

// Failover asks a sentinel to fail over (SENTINEL FAILOVER: the master is
// demoted, not killed) and waits until every sentinel announces the
// replica as the new master, which it returns.
func (s *Sentinel) Failover() *Server {
	s.t.Helper()
	old := s.Master()
	rdb := redis.NewSentinelClient(&redis.Options{Addr: s.Sentinels[0].Addr()})
	defer rdb.Close()
	if err := rdb.Failover(context.Background(), MasterName).Err(); err != nil {
		s.t.Fatalf("SENTINEL FAILOVER %s: %v", MasterName, err)
	}
	return s.waitPromotion(old)
}

// KillMaster kills the master (SIGKILL) and waits until the sentinels have
// noticed and promoted the replica, which it returns.
func (s *Sentinel) KillMaster() *Server {
	s.t.Helper()
	old := s.Master()
	old.Kill()
	return s.waitPromotion(old)
}

// waitPromotion waits until a data server other than old is the announced
// master.
func (s *Sentinel) waitPromotion(old *Server) *Server {
	s.t.Helper()
	var master *Server
	waitUntil(s.t, 30*time.Second, "the sentinels to announce a new master", s.servers(), func() bool {
		master = s.announced()
		return master != nil && master != old
	})
	return master
}

// announced returns the data server that every sentinel names as the
// master and that answers with the master role, or nil.
func (s *Sentinel) announced() *Server {
	var addr string
	for _, sn := range s.Sentinels {
		if !sn.Running() {
			continue
		}
		a := sn.sentinelMaster()
		got := a["ip"] + ":" + a["port"]
		if addr != "" && got != addr {
			return nil
		}
		addr = got
	}
	for _, r := range s.Redis {
		if r.Addr() == addr && r.Running() && r.info("replication", "role") == "master" {
			return r
		}
	}
	return nil
}

// servers returns every process of the setup, for failure messages.
func (s *Sentinel) servers() []*Server {
	return append(append([]*Server{}, s.Redis...), s.Sentinels...)
}

// sentinelMaster returns what a sentinel says about MasterName (SENTINEL
// MASTER), nil if it does not answer.
func (sn *Server) sentinelMaster() map[string]string {
	rdb := redis.NewSentinelClient(&redis.Options{Addr: sn.Addr(), MaxRetries: -1, DialTimeout: time.Second})
	defer rdb.Close()
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	m, err := rdb.Master(ctx, MasterName).Result()
	if err != nil {
		return nil
	}
	return m
}
