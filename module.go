// Package ailb is ai-lb: a load balancer for LLM inference servers, built
// as Caddy modules. Importing it registers every module, the Caddyfile
// directives and the `ai_lb` global option:
//
//	ai_lb                                      app: the shared node registry in Redis (registry.App)
//	http.handlers.ai_lb                        the OpenAI front door (gateway.Handler)
//	http.handlers.hedge                        races a second node when the first token is late (hedging.Handler)
//	http.reverse_proxy.upstreams.ai_lb         live nodes serving the request's model (selection.Source)
//	http.reverse_proxy.selection_policies.p2c  power of two choices (selection.P2C)
//
// A site runs `ai_lb` → `hedge` → `reverse_proxy`: the `ai_lb` directive is
// ordered after `metrics`, and `hedge` before `reverse_proxy`.
package ailb

import (
	"github.com/caddyserver/caddy/v2"
	"github.com/caddyserver/caddy/v2/caddyconfig"
	"github.com/caddyserver/caddy/v2/caddyconfig/caddyfile"
	"github.com/caddyserver/caddy/v2/caddyconfig/httpcaddyfile"
	"github.com/caddyserver/caddy/v2/modules/caddyhttp"

	_ "github.com/ai-lb/ai-lb/cli"
	"github.com/ai-lb/ai-lb/gateway"
	"github.com/ai-lb/ai-lb/hedging"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/selection"
)

func init() {
	caddy.RegisterModule(registry.App{})
	caddy.RegisterModule(gateway.Handler{})
	caddy.RegisterModule(hedging.Handler{})
	caddy.RegisterModule(selection.Source{})
	caddy.RegisterModule(selection.P2C{})

	httpcaddyfile.RegisterGlobalOption("ai_lb", parseGlobalOption)
	httpcaddyfile.RegisterHandlerDirective("ai_lb", handlerDirective[gateway.Handler])
	httpcaddyfile.RegisterDirectiveOrder("ai_lb", httpcaddyfile.After, "metrics")
	httpcaddyfile.RegisterHandlerDirective("hedge", handlerDirective[hedging.Handler])
	httpcaddyfile.RegisterDirectiveOrder("hedge", httpcaddyfile.Before, "reverse_proxy")
}

// parseGlobalOption turns the `ai_lb` global option into the ai_lb app.
func parseGlobalOption(d *caddyfile.Dispenser, _ any) (any, error) {
	app := new(registry.App)
	if err := app.UnmarshalCaddyfile(d); err != nil {
		return nil, err
	}
	return httpcaddyfile.App{Name: "ai_lb", Value: caddyconfig.JSON(app, nil)}, nil
}

// handlerDirective sets up a handler from its directive with the handler's
// own UnmarshalCaddyfile.
func handlerDirective[T any, PT interface {
	*T
	caddyhttp.MiddlewareHandler
	caddyfile.Unmarshaler
}](h httpcaddyfile.Helper) (caddyhttp.MiddlewareHandler, error) {
	handler := PT(new(T))
	err := handler.UnmarshalCaddyfile(h.Dispenser)
	return handler, err
}
