package gateway

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	ai_lb {
//		max_body_size <size>
//		min_nodes     <n>
//		retry_after   <duration>
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		switch option {
		case "max_body_size":
			size, err := humanize.ParseBytes(d.Val())
			if err != nil {
				return d.Errf("parsing max_body_size: %v", err)
			}
			h.MaxBodySize = int64(size)
		case "min_nodes":
			n, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("parsing min_nodes: %v", err)
			}
			h.MinNodes = &n
		case "retry_after":
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("parsing retry_after: %v", err)
			}
			h.RetryAfter = caddy.Duration(dur)
		default:
			return d.Errf("unrecognized ai_lb option '%s'", option)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
