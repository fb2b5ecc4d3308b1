// Command ai-lb is Caddy with the ai-lb modules built in, so the balancer
// builds with plain `go build`; xcaddy builds the same modules into any Caddy.
// It also has `caddy ai-lb simnode`, the simulated node of the demo and the
// tests, which the module itself leaves out.
package main

import (
	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	_ "github.com/caddyserver/caddy/v2/modules/standard"
	_ "time/tzdata"

	_ "github.com/ai-lb/ai-lb"
	_ "github.com/ai-lb/ai-lb/simnode/simnodecmd"
)

func main() { caddycmd.Main() }
