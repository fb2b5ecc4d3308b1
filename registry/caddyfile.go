package registry

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"

	"github.com/ai-lb/ai-lb/health"
)

// UnmarshalCaddyfile sets up the app from the `ai_lb` global option:
//
//	ai_lb {
//		redis           <url>
//		prefix          <prefix>
//		resync_interval <duration>
//		legacy_keys
//		ejection off
//		ejection {
//			consecutive_failures <n>
//			failure_rate         <fraction or percent>
//			min_requests         <n>
//			window               <duration>
//			base_duration        <duration>
//			max_duration         <duration>
//		}
//		load {
//			ttft_half_life <duration>
//			staleness      <duration>
//			prefill_tokens <n>
//		}
//		node_allowlist {
//			networks      <cidr or address...>
//			hosts         <pattern...>
//			schemes       <http|https...>
//			deny_networks <cidr or address...>
//			deny_hosts    <pattern...>
//			allow_link_local
//		}
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
		case "ejection":
			if err := a.parseEjection(d); err != nil {
				return err
			}
		case "load":
			if err := a.parseLoad(d); err != nil {
				return err
			}
		case "node_allowlist":
			if err := a.parseNodeAllowlist(d); err != nil {
				return err
			}
		default:
			return d.Errf("unrecognized ai_lb option '%s'", d.Val())
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// parseEjection reads `ejection off` or an `ejection { ... }` block.
func (a *App) parseEjection(d *caddyfile.Dispenser) error {
	e := new(Ejection)
	a.Ejection = e
	if d.NextArg() {
		if d.Val() != "off" {
			return d.Errf("ejection: expected 'off' or a block, got '%s'", d.Val())
		}
		e.Off = true
		return nil
	}
	return parseSettings(d, "ejection", func(option, value string) (err error) {
		switch option {
		case "consecutive_failures":
			e.ConsecutiveFailures, err = strconv.Atoi(value)
		case "min_requests":
			e.MinRequests, err = strconv.Atoi(value)
		case "failure_rate":
			e.FailureRate, err = health.ParseFraction(value)
		case "window":
			err = parseDuration(value, &e.Window)
		case "base_duration":
			err = parseDuration(value, &e.BaseDuration)
		case "max_duration":
			err = parseDuration(value, &e.MaxDuration)
		default:
			return errUnknownOption
		}
		return err
	})
}

// parseLoad reads a `load { ... }` block.
func (a *App) parseLoad(d *caddyfile.Dispenser) error {
	l := new(Load)
	a.Load = l
	if d.NextArg() {
		return d.ArgErr()
	}
	return parseSettings(d, "load", func(option, value string) (err error) {
		switch option {
		case "ttft_half_life":
			err = parseDuration(value, &l.TTFTHalfLife)
		case "staleness":
			err = parseDuration(value, &l.Staleness)
		case "prefill_tokens":
			l.PrefillTokens, err = strconv.ParseFloat(value, 64)
		default:
			return errUnknownOption
		}
		return err
	})
}

// errUnknownOption is what a parseSettings setter returns for an option it
// does not know.
var errUnknownOption = errors.New("unknown option")

// parseSettings reads a block of `<option> <value>` lines, named name in
// errors, handing each to set.
func parseSettings(d *caddyfile.Dispenser, name string, set func(option, value string) error) error {
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		if !d.NextArg() {
			return d.ArgErr()
		}
		err := set(option, d.Val())
		switch {
		case errors.Is(err, errUnknownOption):
			return d.Errf("unrecognized %s option '%s'", name, option)
		case err != nil:
			return d.Errf("parsing %s %s: %v", name, option, err)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// parseNodeAllowlist reads a `node_allowlist { ... }` block. A list may
// span several lines of the same option.
func (a *App) parseNodeAllowlist(d *caddyfile.Dispenser) error {
	l := new(NodeAllowlist)
	a.NodeAllowlist = l
	if d.NextArg() {
		return d.ArgErr()
	}
	checkScheme := func(s string) error {
		if s != "http" && s != "https" {
			return fmt.Errorf("not http or https")
		}
		return nil
	}
	checkNetwork := func(s string) error { _, err := ParseNetwork(s); return err }
	lists := map[string]struct {
		into  *[]string
		check func(string) error
	}{
		"networks":      {&l.Networks, checkNetwork},
		"deny_networks": {&l.DenyNetworks, checkNetwork},
		"hosts":         {&l.Hosts, CheckHostPattern},
		"deny_hosts":    {&l.DenyHosts, CheckHostPattern},
		"schemes":       {&l.Schemes, checkScheme},
	}
	for nesting := d.Nesting(); d.NextBlock(nesting); {
		option := d.Val()
		args := d.RemainingArgs()
		list, isList := lists[option]
		switch {
		case option == "allow_link_local" && len(args) == 0:
			l.AllowLinkLocal = true
			continue
		case option != "allow_link_local" && !isList:
			return d.Errf("unrecognized node_allowlist option '%s'", option)
		case option == "allow_link_local" || len(args) == 0:
			return d.ArgErr()
		}
		for _, arg := range args {
			if err := list.check(arg); err != nil {
				return d.Errf("parsing node_allowlist %s %q: %v", option, arg, err)
			}
		}
		*list.into = append(*list.into, args...)
	}
	return nil
}

func parseDuration(s string, into *caddy.Duration) error {
	d, err := caddy.ParseDuration(s)
	*into = caddy.Duration(d)
	return err
}

// Interface guards
var _ caddyfile.Unmarshaler = (*App)(nil)
