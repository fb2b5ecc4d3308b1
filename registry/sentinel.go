package registry

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"
)

// sentinelClient is a Sentinel client whose subscriptions follow the
// master.
//
// go-redis moves its command connections to a new master as soon as a
// sentinel announces it (+switch-master), but not its pub/sub connections.
// After a failover that leaves the old master running (SENTINEL FAILOVER, a
// partition), a watcher's subscription would stay on the demoted master,
// which no longer gets the registry's events, until Sentinel reconfigures
// it and drops its clients (10 s or more later), or for good if Sentinel
// cannot reach it. sentinelClient listens to the announcements of every
// configured sentinel too, and closes its own connections to the old
// master: a subscription then reconnects, to the new master, and the
// watcher resyncs.
type sentinelClient struct {
	*redis.Client
	masterName string
	sentinels  []*redis.SentinelClient
	subs       []*redis.PubSub // +switch-master on each sentinel
	wg         sync.WaitGroup

	mu    sync.Mutex
	conns map[*trackedConn]bool
}

func newSentinelClient(o *redis.FailoverOptions) *sentinelClient {
	c := &sentinelClient{masterName: o.MasterName, conns: make(map[*trackedConn]bool)}
	dialTimeout := o.DialTimeout
	if dialTimeout == 0 {
		dialTimeout = 5 * time.Second // go-redis's default
	}
	// go-redis's own dialer, which a custom one replaces: it also applies
	// the TLS settings.
	dial := redis.NewDialer(&redis.Options{DialTimeout: dialTimeout, TLSConfig: o.TLSConfig})
	o.Dialer = func(ctx context.Context, network, addr string) (net.Conn, error) {
		conn, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		return c.track(conn, addr), nil
	}
	c.Client = redis.NewFailoverClient(o)
	for _, addr := range o.SentinelAddrs {
		s := redis.NewSentinelClient(&redis.Options{Addr: addr, Username: o.SentinelUsername,
			Password: o.SentinelPassword, TLSConfig: o.TLSConfig, DialTimeout: dialTimeout})
		sub := s.Subscribe(context.Background(), "+switch-master")
		c.sentinels, c.subs = append(c.sentinels, s), append(c.subs, sub)
		// The channel reconnects by itself; it ends when sub is closed.
		ch := sub.Channel()
		c.wg.Go(func() {
			for msg := range ch {
				c.switched(msg.Payload)
			}
		})
	}
	return c
}

// switched handles a +switch-master announcement, "<name> <old ip> <old
// port> <new ip> <new port>": it closes the connections to the old master.
func (c *sentinelClient) switched(payload string) {
	f := strings.Fields(payload)
	if len(f) != 5 || f[0] != c.masterName {
		return
	}
	old := net.JoinHostPort(f[1], f[2])
	c.mu.Lock()
	var stale []*trackedConn
	for t := range c.conns {
		if t.addr == old {
			stale = append(stale, t)
		}
	}
	c.mu.Unlock()
	for _, t := range stale {
		_ = t.Close()
	}
}

// Close closes the client and stops listening to the sentinels.
func (c *sentinelClient) Close() error {
	err := c.Client.Close()
	for i, s := range c.sentinels {
		_ = c.subs[i].Close()
		_ = s.Close()
	}
	c.wg.Wait()
	return err
}

func (c *sentinelClient) track(conn net.Conn, addr string) net.Conn {
	t := &trackedConn{Conn: conn, addr: addr, client: c}
	c.mu.Lock()
	c.conns[t] = true
	c.mu.Unlock()
	return t
}

// trackedConn is a connection a sentinelClient can close, until it is
// closed.
type trackedConn struct {
	net.Conn
	addr   string
	client *sentinelClient
}

func (t *trackedConn) Close() error {
	t.client.mu.Lock()
	delete(t.client.conns, t)
	t.client.mu.Unlock()
	return t.Conn.Close()
}

// SyscallConn exposes the socket, which go-redis checks for a connection
// the server closed before it reuses it.
func (t *trackedConn) SyscallConn() (syscall.RawConn, error) {
	if sc, ok := t.Conn.(syscall.Conn); ok {
		return sc.SyscallConn()
	}
	return nil, errors.New("not a socket")
}
