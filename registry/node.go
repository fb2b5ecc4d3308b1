package registry

import (
	"encoding/json"
	"fmt"
	"net"
	"net/url"
	"strings"
	"time"
)

// Node is one upstream LLM server as it is stored in the registry.
// Its JSON form is the value of a field of the nodes hash (see Keys).
type Node struct {
	// ID names the node uniquely within one registry prefix.
	ID string `json:"id"`

	// URL is the node's base URL, scheme://host:port. A path such as
	// /v1 is allowed and ignored: clients' request paths are proxied
	// unchanged.
	URL string `json:"url"`

	// Models lists the model IDs the node serves, as in its /v1/models.
	Models []string `json:"models,omitempty"`

	// MaxConcurrency bounds the requests one ai-lb replica sends to the
	// node at once. 0 means no bound.
	MaxConcurrency int `json:"max_concurrency,omitempty"`

	// Weight scales the node's share of traffic relative to other nodes
	// (a node of weight 2 is as loaded at 2N in-flight requests as a
	// node of weight 1 at N). 0 means 1.
	Weight float64 `json:"weight,omitempty"`

	// Labels are free-form metadata for operators and tooling.
	Labels map[string]string `json:"labels,omitempty"`

	// TTLMillis is how long the node stays live after its last
	// heartbeat, in milliseconds. 0 means DefaultTTL.
	TTLMillis int64 `json:"ttl_ms,omitempty"`

	// Unhealthy marks a node whose agent found it failing (see Agent):
	// it stays registered and live, so its models stay known (a request
	// for them is answered 503, not 404), but it gets no requests.
	Unhealthy bool `json:"unhealthy,omitempty"`

	// Draining marks a node that takes no new requests while the streams
	// it serves finish (see Client.Drain). Like an unhealthy node it stays
	// live and its models stay known.
	Draining bool `json:"draining,omitempty"`
}

// Routable reports whether a live node may be offered requests.
func (n *Node) Routable() bool { return !n.Unhealthy && !n.Draining }

// DefaultTTL is the liveness period of a node that does not set one.
const DefaultTTL = 15 * time.Second

// TTL returns how long the node stays live after a heartbeat.
func (n *Node) TTL() time.Duration {
	if n.TTLMillis <= 0 {
		return DefaultTTL
	}
	return time.Duration(n.TTLMillis) * time.Millisecond
}

// EffectiveWeight returns Weight, or 1 when it is unset.
func (n *Node) EffectiveWeight() float64 {
	if n.Weight <= 0 {
		return 1
	}
	return n.Weight
}

// Dial returns the host:port that reverse_proxy dials for this node.
func (n *Node) Dial() (string, error) {
	u, err := url.Parse(n.URL)
	if err != nil {
		return "", fmt.Errorf("url: %v", err)
	}
	if u.Host == "" {
		return "", fmt.Errorf("url %q: no host", n.URL)
	}
	port := u.Port()
	if port == "" {
		switch u.Scheme {
		case "http":
			port = "80"
		case "https":
			port = "443"
		default:
			return "", fmt.Errorf("url %q: scheme must be http or https", n.URL)
		}
	}
	return net.JoinHostPort(u.Hostname(), port), nil
}

// Validate reports the first problem that makes the node unusable.
func (n *Node) Validate() error {
	if strings.TrimSpace(n.ID) == "" {
		return fmt.Errorf("id: empty")
	}
	if _, err := n.Dial(); err != nil {
		return err
	}
	if n.MaxConcurrency < 0 {
		return fmt.Errorf("max_concurrency: %d is negative", n.MaxConcurrency)
	}
	if n.Weight < 0 {
		return fmt.Errorf("weight: %v is negative", n.Weight)
	}
	if n.TTLMillis < 0 {
		return fmt.Errorf("ttl_ms: %d is negative", n.TTLMillis)
	}
	return nil
}

// decodeNode parses and validates one stored node entry.
func decodeNode(raw string) (*Node, error) {
	var n Node
	if err := json.Unmarshal([]byte(raw), &n); err != nil {
		return nil, err
	}
	if err := n.Validate(); err != nil {
		return nil, err
	}
	return &n, nil
}
