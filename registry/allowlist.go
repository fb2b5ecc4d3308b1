package registry

import (
	"fmt"
	"net/netip"
	"net/url"
	"path"
	"slices"
	"strings"
	"sync"

	"go.uber.org/zap"
)

// NodeAllowlist decides which registered nodes ai-lb may route to. Anyone
// who can write to the registry chooses where ai-lb sends requests (and
// every prompt in them), so the registry is not trusted with the address:
// a node outside the allowlist is neither routed to nor listed, as if it
// were not registered.
//
// The zero value (and no allowlist at all) allows any address except the
// built-in refusals: link-local networks (169.254.0.0/16, fe80::/10) and the
// cloud metadata endpoints (MetadataAddresses, MetadataHosts).
//
// Host names are judged by name and never resolved here: a check at
// registry-read time could be answered with a harmless address and the dial
// a moment later with another (DNS rebinding), so resolving would promise
// what it cannot hold, and put DNS in the routing table's path. To keep
// names to known ones, list them in Hosts, or register nodes by address
// and list their networks in Networks.
type NodeAllowlist struct {
	// Networks are the networks (CIDR, or a single address) that nodes
	// registered by IP address must be in. When Networks or Hosts is set,
	// a node must match one of them; when neither is, any address is
	// allowed but the refused ones.
	Networks []string `json:"networks,omitempty"`

	// Hosts are the host name patterns that nodes registered by name must
	// match: `*` matches within one label (`*.gpu.internal`, `vllm-*`), as
	// do `?` and `[...]`; case and a trailing dot are ignored.
	Hosts []string `json:"hosts,omitempty"`

	// Schemes are the URL schemes allowed. Default: http, https.
	Schemes []string `json:"schemes,omitempty"`

	// DenyNetworks are refused on top of the built-in refusals, e.g.
	// 127.0.0.0/8 and ::1/128 when the balancer's admin API listens on its
	// loopback.
	DenyNetworks []string `json:"deny_networks,omitempty"`

	// DenyHosts are host name patterns refused on top of the built-in
	// ones, e.g. the balancer's own service names.
	DenyHosts []string `json:"deny_hosts,omitempty"`

	// AllowLinkLocal lifts the refusal of the link-local networks. The
	// metadata endpoints stay refused.
	AllowLinkLocal bool `json:"allow_link_local,omitempty"`
}

// Cloud metadata endpoints, refused whatever the allowlist says. Sources:
// the providers' instance metadata documentation (AWS EC2 IMDS and its
// IPv6 endpoint, ECS task metadata, EKS Pod Identity; Google Compute
// Engine; Azure IMDS and the WireServer 168.63.129.16; Oracle Cloud;
// Alibaba Cloud; OpenStack, DigitalOcean and Hetzner use 169.254.169.254),
// as collected in PayloadsAllTheThings' "SSRF URL for Cloud Instances"
// (Server Side Request Forgery/SSRF-Cloud-Instances.md).
var (
	MetadataAddresses = []string{
		"169.254.169.254", // AWS, GCP, Azure, Oracle, OpenStack, DigitalOcean, Hetzner, ...
		"169.254.170.2",   // AWS ECS task metadata and credentials
		"169.254.170.23",  // AWS EKS Pod Identity agent
		"fd00:ec2::254",   // AWS IMDS over IPv6
		"fd00:ec2::23",    // AWS EKS Pod Identity agent over IPv6
		"168.63.129.16",   // Azure WireServer (platform agent, extension settings)
		"100.100.100.200", // Alibaba Cloud
		"192.0.0.192",     // Oracle Cloud (classic)
	}
	MetadataHosts = []string{
		"metadata.google.internal", // GCE
		"metadata",                 // GCE's short name, through its DNS search path
		"instance-data",            // AWS
		"instance-data.ec2.internal",
		"rancher-metadata", // Rancher
	}
)

// linkLocal are the networks AllowLinkLocal lifts.
var linkLocal = []netip.Prefix{netip.MustParsePrefix("169.254.0.0/16"), netip.MustParsePrefix("fe80::/10")}

// nat64 is the well-known NAT64 prefix (RFC 6052): 64:ff9b::a9fe:a9fe
// reaches 169.254.169.254 through a NAT64 gateway.
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

// allowlist is a NodeAllowlist ready to check nodes.
type allowlist struct {
	networks, denyNetworks []netip.Prefix
	hosts, denyHosts       []string // patterns with labels separated by '/', for path.Match
	restrict               bool     // Networks or Hosts is set
	schemes                []string
	metadata               map[netip.Addr]bool
	allowLinkLocal         bool
}

// compile checks the allowlist (nil: the default) and prepares it.
func (l *NodeAllowlist) compile() (*allowlist, error) {
	if l == nil {
		l = &NodeAllowlist{}
	}
	a := &allowlist{
		restrict:       len(l.Networks) > 0 || len(l.Hosts) > 0,
		schemes:        []string{"http", "https"},
		metadata:       make(map[netip.Addr]bool, len(MetadataAddresses)),
		allowLinkLocal: l.AllowLinkLocal,
	}
	for _, s := range MetadataAddresses {
		a.metadata[netip.MustParseAddr(s)] = true
	}
	var err error
	if a.networks, err = parseNetworks("networks", l.Networks); err != nil {
		return nil, err
	}
	if a.denyNetworks, err = parseNetworks("deny_networks", l.DenyNetworks); err != nil {
		return nil, err
	}
	if a.hosts, err = parseHostPatterns("hosts", l.Hosts); err != nil {
		return nil, err
	}
	if a.denyHosts, err = parseHostPatterns("deny_hosts", l.DenyHosts); err != nil {
		return nil, err
	}
	for _, h := range MetadataHosts {
		a.denyHosts = append(a.denyHosts, labels(h))
	}
	if len(l.Schemes) > 0 {
		a.schemes = nil
		for _, s := range l.Schemes {
			if s = strings.ToLower(s); s != "http" && s != "https" {
				return nil, fmt.Errorf("node_allowlist: schemes: %q is not http or https", s)
			}
			a.schemes = append(a.schemes, s)
		}
	}
	return a, nil
}

// ParseNetwork reads a network in CIDR notation, or a single address.
func ParseNetwork(s string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		addr, err := netip.ParseAddr(s)
		if err != nil {
			return netip.Prefix{}, err
		}
		return netip.PrefixFrom(addr, addr.BitLen()), nil
	}
	p, err := netip.ParsePrefix(s)
	return p.Masked(), err
}

func parseNetworks(field string, list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		p, err := ParseNetwork(s)
		if err != nil {
			return nil, fmt.Errorf("node_allowlist: %s: %v", field, err)
		}
		out = append(out, p)
	}
	return out, nil
}

// CheckHostPattern reports whether a host name pattern is well-formed.
func CheckHostPattern(p string) error {
	_, err := path.Match(labels(p), "")
	return err
}

func parseHostPatterns(field string, list []string) ([]string, error) {
	var out []string
	for _, p := range list {
		if err := CheckHostPattern(p); err != nil {
			return nil, fmt.Errorf("node_allowlist: %s: %q: %v", field, p, err)
		}
		out = append(out, labels(p))
	}
	return out, nil
}

// labels normalizes a host name or pattern (lower case, no trailing dot)
// and separates its labels with '/', so that path.Match's `*` stays within
// one label.
func labels(host string) string {
	return strings.ReplaceAll(strings.TrimSuffix(strings.ToLower(host), "."), ".", "/")
}

// check returns why a node may not be routed to, or nil.
func (a *allowlist) check(n *Node) error {
	u, err := url.Parse(n.URL)
	if err != nil {
		return fmt.Errorf("url: %v", err)
	}
	if scheme := strings.ToLower(u.Scheme); !slices.Contains(a.schemes, scheme) {
		return fmt.Errorf("scheme %q is not allowed", scheme)
	}
	// The host as Node.Dial gives it to the dialer: an IP address is
	// dialled as is, anything else is resolved.
	host := u.Hostname()
	if addr, err := netip.ParseAddr(host); err == nil {
		return a.checkAddr(addr)
	}
	return a.checkName(host)
}

func (a *allowlist) checkAddr(addr netip.Addr) error {
	addr = addr.WithZone("").Unmap()
	if nat64.Contains(addr) {
		// The IPv4 address it reaches through a NAT64 gateway.
		b := addr.As16()
		addr = netip.AddrFrom4([4]byte(b[12:]))
	}
	switch {
	case a.metadata[addr]:
		return fmt.Errorf("%s is a cloud metadata address", addr)
	case !a.allowLinkLocal && containsAddr(linkLocal, addr):
		return fmt.Errorf("%s is link-local", addr)
	case containsAddr(a.denyNetworks, addr):
		return fmt.Errorf("%s is in deny_networks", addr)
	case a.restrict && !containsAddr(a.networks, addr):
		return fmt.Errorf("%s is not in the allowed networks", addr)
	}
	return nil
}

func (a *allowlist) checkName(host string) error {
	name := labels(host)
	last := name[strings.LastIndexByte(name, '/')+1:]
	switch {
	case name == "":
		return fmt.Errorf("no host")
	case isNumeric(last):
		// 2852039166, 0xa9fea9fe, 0251.0376.0251.0376: not addresses to
		// Go, but a resolver that follows inet_aton (glibc's) dials them
		// as 169.254.169.254. No top-level domain is numeric (RFC 3696).
		return fmt.Errorf("host %q looks like an address in a form that is not standard", host)
	case matchAny(a.denyHosts, name):
		return fmt.Errorf("host %q is refused (a metadata host, or in deny_hosts)", host)
	case a.restrict && !matchAny(a.hosts, name):
		return fmt.Errorf("host %q matches none of the allowed hosts", host)
	}
	return nil
}

// isNumeric reports whether a label is all digits, or hexadecimal with 0x.
func isNumeric(label string) bool {
	digits := label
	if h, ok := strings.CutPrefix(label, "0x"); ok {
		digits = h
		if digits == "" {
			return true
		}
		return strings.Trim(digits, "0123456789abcdef") == ""
	}
	return digits != "" && strings.Trim(digits, "0123456789") == ""
}

func containsAddr(prefixes []netip.Prefix, addr netip.Addr) bool {
	return slices.ContainsFunc(prefixes, func(p netip.Prefix) bool { return p.Contains(addr) })
}

func matchAny(patterns []string, name string) bool {
	return slices.ContainsFunc(patterns, func(p string) bool {
		ok, _ := path.Match(p, name)
		return ok
	})
}

// admission applies an allowlist to the nodes a watcher tracks and logs
// each refused node once, with its ID and the reason, until its entry
// changes.
type admission struct {
	list   *allowlist
	logger *zap.Logger

	mu      sync.Mutex
	refused map[string]string // node ID -> URL already logged as refused
}

// maxRefusedLogged bounds the memory of refusals already logged; past it,
// the memory starts over (a refused node may be logged again).
const maxRefusedLogged = 10000

func newAdmission(list *allowlist, logger *zap.Logger) *admission {
	return &admission{list: list, logger: logger, refused: make(map[string]string)}
}

// admit reports whether the node may be routed to; it is the Admit of
// WatcherOptions.
func (a *admission) admit(n *Node) bool {
	err := a.list.check(n)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err == nil {
		delete(a.refused, n.ID)
		return true
	}
	if a.refused[n.ID] == n.URL {
		return false
	}
	if len(a.refused) >= maxRefusedLogged {
		clear(a.refused)
	}
	a.refused[n.ID] = n.URL
	a.logger.Warn("refusing registry entry outside the node allowlist: not routed, not listed",
		zap.String("id", n.ID), zap.String("url", redactURL(n.URL)), zap.String("reason", err.Error()))
	return false
}

// key identifies the allowlist's settings, for sharing watchers.
func (l *NodeAllowlist) key() string {
	if l == nil {
		return ""
	}
	return fmt.Sprintf("%q|%q|%q|%q|%q|%t", l.Networks, l.Hosts, l.Schemes, l.DenyNetworks, l.DenyHosts, l.AllowLinkLocal)
}
