package gateway

import (
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/ai-lb/ai-lb/health"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens:
//
//	ai_lb {
//		max_body_size    <size>
//		min_nodes        <n>
//		retry_after      <duration>
//		retries          <n>
//		try_duration     <duration>
//		stream_header_timeout <duration>
//		retry_budget     <fraction or percent, e.g. 0.2 or 20%>
//		retry_budget_min <n>
//		api_keys {
//			file     <path>
//			env      <variable>
//			registry
//			refresh  <duration>
//		}
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		if option == "api_keys" {
			if err := h.parseAPIKeys(d); err != nil {
				return err
			}
			continue
		}
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
		case "retry_after", "try_duration":
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("parsing %s: %v", option, err)
			}
			if option == "retry_after" {
				h.RetryAfter = caddy.Duration(dur)
			} else {
				h.TryDuration = caddy.Duration(dur)
			}
		case "stream_header_timeout":
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("parsing %s: %v", option, err)
			}
			timeout := caddy.Duration(dur)
			h.StreamHeaderTimeout = &timeout
		case "retries", "retry_budget_min":
			n, err := strconv.Atoi(d.Val())
			if err != nil {
				return d.Errf("parsing %s: %v", option, err)
			}
			if option == "retries" {
				h.Retries = &n
			} else {
				h.RetryBudgetMin = &n
			}
		case "retry_budget":
			f, err := health.ParseFraction(d.Val())
			if err != nil {
				return d.Errf("parsing retry_budget: %v", err)
			}
			h.RetryBudget = &f
		default:
			return d.Errf("unrecognized ai_lb option '%s'", option)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// parseAPIKeys reads an `api_keys { ... }` block.
func (h *Handler) parseAPIKeys(d *caddyfile.Dispenser) error {
	k := new(APIKeys)
	h.APIKeys = k
	if d.NextArg() {
		return d.ArgErr()
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if option == "registry" {
			k.Registry = true
		} else {
			if !d.NextArg() {
				return d.ArgErr()
			}
			switch option {
			case "file":
				k.File = d.Val()
			case "env":
				k.Env = d.Val()
			case "refresh":
				dur, err := caddy.ParseDuration(d.Val())
				if err != nil {
					return d.Errf("parsing api_keys refresh: %v", err)
				}
				k.Refresh = caddy.Duration(dur)
			default:
				return d.Errf("unrecognized api_keys option '%s'", option)
			}
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
