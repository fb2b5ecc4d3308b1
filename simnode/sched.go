package simnode

import (
	"container/list"
	"context"
	"sync"
)

// scheduler models a server's batch slots and its FIFO waiting queue. It is
// a mutex plus a list rather than a buffered-channel semaphore because the
// number of slots can change at runtime (Update) and because a waiting
// request that goes away must leave the queue without disturbing the order
// of the others.
type scheduler struct {
	mu      sync.Mutex
	running int
	queue   list.List // of *waiter, oldest first
	// models holds per-model gauges for /metrics, which labels
	// vllm:num_requests_* by model_name.
	models map[string]*gauge
}

type gauge struct {
	running, waiting int
}

type waiter struct {
	ready   chan struct{} // closed when the waiter has been given a slot
	model   string
	el      *list.Element
	granted bool // set under scheduler.mu together with closing ready
}

type admission int

const (
	admitted admission = iota
	queueFull
	gaveUp // the client went away while waiting
)

func (s *scheduler) gauge(model string) *gauge {
	g := s.models[model]
	if g == nil {
		g = new(gauge)
		s.models[model] = g
	}
	return g
}

// acquire obtains a slot for a request, waiting in the queue if needed. On
// admitted the caller must call release exactly once.
func (n *Node) acquire(ctx context.Context, model string) admission {
	cfg := &n.cfg.Load().cfg
	s := &n.sched
	s.mu.Lock()
	// Only bypass the queue when it is empty, so that arrivals cannot
	// overtake waiters.
	if cfg.Slots <= 0 || (s.running < cfg.Slots && s.queue.Len() == 0) {
		s.running++
		s.gauge(model).running++
		s.mu.Unlock()
		return admitted
	}
	if s.queue.Len() >= cfg.QueueSize {
		s.mu.Unlock()
		return queueFull
	}
	w := &waiter{ready: make(chan struct{}), model: model}
	w.el = s.queue.PushBack(w)
	s.gauge(model).waiting++
	s.mu.Unlock()

	select {
	case <-w.ready:
		return admitted
	case <-ctx.Done():
		s.mu.Lock()
		if w.granted {
			// Lost the race: the slot was handed over just as the client
			// left. Give it back so the next waiter gets it.
			s.mu.Unlock()
			n.release(model)
			return gaveUp
		}
		s.queue.Remove(w.el)
		s.gauge(model).waiting--
		s.mu.Unlock()
		return gaveUp
	}
}

// release frees a slot and hands it to the oldest waiter, if any.
func (n *Node) release(model string) {
	s := &n.sched
	s.mu.Lock()
	s.running--
	s.gauge(model).running--
	n.dispatchLocked()
	s.mu.Unlock()
}

// dispatchLocked admits waiters while slots are free. sched.mu must be held.
func (n *Node) dispatchLocked() {
	s := &n.sched
	slots := n.cfg.Load().cfg.Slots
	for s.queue.Len() > 0 && (slots <= 0 || s.running < slots) {
		w := s.queue.Remove(s.queue.Front()).(*waiter)
		g := s.gauge(w.model)
		g.waiting--
		g.running++
		s.running++
		w.granted = true
		close(w.ready)
	}
}
