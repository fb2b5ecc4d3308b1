package testredis

import (
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

func TestCluster(t *testing.T) {
	c := StartCluster(t)
	o, err := redis.ParseClusterURL(c.URL())
	if err != nil {
		t.Fatal(err)
	}
	if len(o.Addrs) != 3 {
		t.Fatalf("URL %s names %d addresses", c.URL(), len(o.Addrs))
	}
	rdb := redis.NewClusterClient(o)
	defer rdb.Close()
	ctx := context.Background()
	// Keys of every master: the cluster serves all slots.
	for _, key := range []string{"a", "b", "c", "d", "e", "f"} {
		if err := rdb.Set(ctx, key, key, 0).Err(); err != nil {
			t.Fatalf("SET %s: %v", key, err)
		}
		if got := c.Owner(t, key).Client(t).Get(ctx, key).Val(); got != key {
			t.Fatalf("%s not on the master that owns its slot: %q", key, got)
		}
	}
}

// TestSentinel fails over each way, from a fresh setup: the replica must be
// promoted and announced by every sentinel.
func TestSentinel(t *testing.T) {
	for name, failover := range map[string]func(*Sentinel) *Server{
		"SENTINEL FAILOVER": (*Sentinel).Failover,
		"master killed":     (*Sentinel).KillMaster,
	} {
		t.Run(name, func(t *testing.T) {
			s := StartSentinel(t)
			o, err := redis.ParseFailoverURL(s.URL())
			if err != nil {
				t.Fatal(err)
			}
			if o.MasterName != MasterName || len(o.SentinelAddrs) != 3 {
				t.Fatalf("URL %s: master %q, sentinels %v", s.URL(), o.MasterName, o.SentinelAddrs)
			}
			if m := s.Master(); m != s.Redis[0] {
				t.Fatalf("the first master is %s, not %s", m, s.Redis[0])
			}
			start := time.Now()
			if m := failover(s); m != s.Redis[1] {
				t.Fatalf("%s promoted, not the replica %s", m, s.Redis[1])
			}
			t.Logf("replica promoted after %v", time.Since(start))
		})
	}
}
