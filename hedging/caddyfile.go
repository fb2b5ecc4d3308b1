package hedging

import (
	"slices"
	"strconv"

	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/dustin/go-humanize"

	"github.com/ai-lb/ai-lb/health"
)

// UnmarshalCaddyfile sets up the handler from Caddyfile tokens. The bare
// directive hedges with the defaults.
//
//	hedge {
//		delay            <duration>
//		percentile       <0-100>
//		window           <duration>
//		min_samples      <n>
//		min_delay        <duration>
//		max_delay        <duration>
//		max_attempts     <n>
//		budget           <fraction or percent, e.g. 0.1 or 10%>
//		budget_window    <duration>
//		budget_min       <n>
//		max_body_size    <size>
//		paths            <path...>
//		response_headers
//	}
func (h *Handler) UnmarshalCaddyfile(d *caddyfile.Dispenser) error {
	d.Next() // consume directive name
	if d.NextArg() {
		return d.ArgErr()
	}
	for d.NextBlock(0) {
		option := d.Val()
		switch option {
		case "response_headers":
			h.ResponseHeaders = true
			if d.NextArg() {
				return d.ArgErr()
			}
			continue
		case "paths":
			h.Paths = d.RemainingArgs()
			if len(h.Paths) == 0 {
				return d.ArgErr()
			}
			continue
		}
		if !slices.Contains(valueOptions, option) {
			return d.Errf("unrecognized hedge option '%s'", option)
		}
		if !d.NextArg() {
			return d.ArgErr()
		}
		val := d.Val()
		var err error
		switch option {
		case "delay":
			err = parseDuration(val, &h.Delay)
		case "window":
			err = parseDuration(val, &h.Window)
		case "min_delay":
			err = parseDuration(val, &h.MinDelay)
		case "max_delay":
			err = parseDuration(val, &h.MaxDelay)
		case "budget_window":
			err = parseDuration(val, &h.BudgetWindow)
		case "percentile":
			h.Percentile, err = strconv.ParseFloat(val, 64)
		case "min_samples":
			h.MinSamples, err = strconv.Atoi(val)
		case "max_attempts":
			h.MaxAttempts, err = strconv.Atoi(val)
		case "budget_min":
			var n int
			n, err = strconv.Atoi(val)
			h.BudgetMin = &n
		case "budget":
			var f float64
			f, err = health.ParseFraction(val)
			h.Budget = &f
		case "max_body_size":
			var size uint64
			size, err = humanize.ParseBytes(val)
			h.MaxBodySize = int64(size)
		default:
			return d.Errf("unrecognized hedge option '%s'", option)
		}
		if err != nil {
			return d.Errf("parsing %s: %v", option, err)
		}
		if d.NextArg() {
			return d.ArgErr()
		}
	}
	return nil
}

// valueOptions are the options that take exactly one value.
var valueOptions = []string{"delay", "window", "min_delay", "max_delay", "budget_window",
	"percentile", "min_samples", "max_attempts", "budget_min", "budget", "max_body_size"}

func parseDuration(s string, into *caddy.Duration) error {
	d, err := caddy.ParseDuration(s)
	*into = caddy.Duration(d)
	return err
}

// Interface guards
var _ caddyfile.Unmarshaler = (*Handler)(nil)
