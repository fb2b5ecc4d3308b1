// Command ai-lb is Caddy with the ai-lb modules built in, so the balancer
// builds with plain `go build`; xcaddy builds the same modules into any Caddy.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "time/tzdata"

	_ "github.com/ai-lb/ai-lb"
)

func main() { caddycmd.Main() }
