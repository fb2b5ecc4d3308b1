// Package simnodecmd adds `caddy ai-lb simnode` to a Caddy binary: a
// simulated LLM node for the demo, the compose stack, tests and benchmarks.
// It is not part of the module a user builds with
// `xcaddy build --with github.com/ai-lb/ai-lb`; add
// `--with github.com/ai-lb/ai-lb/simnode/simnodecmd` to get it (cmd/ai-lb
// and scripts/build.sh do).
package simnodecmd

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/cli"
	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/simnode"
)

func init() {
	cli.AddSubcommand(simnodeCommand)
}

func simnodeCommand() *cobra.Command {
	var cfg *simnode.Config
	cmd := &cobra.Command{
		Use:   "simnode --listen <addr> [--register] [simulator flags]",
		Short: "Runs a simulated OpenAI-compatible LLM node",
		Long: `
Runs a simulated LLM inference server (OpenAI chat/completions/embeddings,
SSE streaming, vLLM metric names) for demos, tests and benchmarks. With
--register it also registers itself in the ai-lb registry and heartbeats
until it is stopped, then deregisters; every --load-interval it publishes
the running and waiting requests of its /metrics, as an agent does for vLLM.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			listen, _ := fs.GetString("listen")
			ln, err := net.Listen("tcp", listen)
			if err != nil {
				return err
			}
			if cfg.ID == simnode.DefaultID {
				cfg.ID = ln.Addr().String()
			}
			node := simnode.New(*cfg)
			srv := &http.Server{Handler: node, ReadHeaderTimeout: 10 * time.Second}
			ctx, stop := cli.SignalContext()
			defer stop()
			logger := cli.NewLogger()
			served := make(chan error, 1)
			go func() { served <- srv.Serve(ln) }()
			logger.Info("simulated node listening", zap.String("addr", ln.Addr().String()), zap.String("id", cfg.ID))

			var agentDone chan error
			if reg, _ := fs.GetBool("register"); reg {
				advertise, _ := fs.GetString("advertise")
				if advertise == "" {
					advertise = "http://" + ln.Addr().String()
				}
				// --id and --models are the simulator's own flags, so the
				// registered node matches what it serves.
				regNode, client, err := cli.NodeAndRegistry(ctx, fs, advertise)
				if err != nil {
					return err
				}
				defer client.Close()
				agentDone = make(chan error, 1)
				agent := &registry.Agent{Client: client, Node: regNode, Logger: logger, LoadInterval: cli.LoadInterval(fs)}
				go func() { agentDone <- agent.Run(ctx) }()
			}
			select {
			case err := <-served:
				return err
			case <-ctx.Done():
			}
			if agentDone != nil {
				if err := <-agentDone; err != nil {
					logger.Error("deregistering", zap.Error(err))
				}
			}
			shutdownCtx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := srv.Shutdown(shutdownCtx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
				return fmt.Errorf("shutting down: %v", err)
			}
			return nil
		},
	}
	fs := cmd.Flags()
	cfg = simnode.BindFlags(fs)
	fs.String("listen", "127.0.0.1:9001", "address to listen on")
	fs.Bool("register", false, "register in the ai-lb registry and heartbeat")
	fs.String("advertise", "", "URL to register (default http://<listen address>)")
	cli.RegistryFlags(fs)
	fs.Int("max-concurrency", 0, "registered max concurrency (0: no limit)")
	fs.Float64("weight", 1, "registered weight")
	fs.StringToString("label", nil, "registered labels, key=value (repeatable)")
	fs.Duration("ttl", registry.DefaultTTL, "registered TTL; heartbeats run every ttl/3")
	cli.LoadFlags(fs)
	return cmd
}
