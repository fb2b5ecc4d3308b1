package registry

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
)

// UnmarshalCaddyfile sets up the app from the `ai_lb` global option:
//
//	ai_lb {
//		redis           <url>
//		prefix          <prefix>
//		resync_interval <duration>
//		legacy_keys
//	}
func (a *App) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume option name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		switch d.Val() {
		case "redis":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.Redis = d.Val()
		case "prefix":
			if !d.NextArg() {
				return d.ArgErr()
			}
			a.Prefix = d.Val()
		case "resync_interval":
			if !d.NextArg() {
				return d.ArgErr()
			}
			dur, err := caddy.ParseDuration(d.Val())
			if err != nil {
				return d.Errf("parsing resync_interval: %v", err)
			}
			a.ResyncInterval = caddy.Duration(dur)
		case "legacy_keys":
			a.LegacyKeys = true
		default:
			return d.Errf("unrecognized ai_lb option '%s'", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
