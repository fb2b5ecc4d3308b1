// Package cli adds the `ai-lb` subcommands to the Caddy binary, for node
// operators: register, deregister and list nodes in the registry. Other
// packages add theirs with AddSubcommand (simnode/simnodecmd does).
package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"go.uber.org/zap"

	"github.com/ai-lb/ai-lb/registry"
)

func init() {
	caddycmd.RegisterCommand(caddycmd.Command{
		Name:  "ai-lb",
		Short: "Manage the ai-lb node registry",
		Long: `
Registers, deregisters and lists the LLM nodes that ai-lb routes to. Nodes
live in Redis; every ai-lb replica on the same Redis and prefix sees a change
within about a second.

--redis defaults to $REDIS_URL, else redis://127.0.0.1:6379.
`,
		CobraFunc: func(cmd *cobra.Command) {
			cmd.AddCommand(registerCommand(), deregisterCommand(), nodesCommand())
			for _, sub := range subcommands {
				cmd.AddCommand(sub())
			}
		},
	})
}

// subcommands are the `ai-lb` subcommands that other packages added.
var subcommands []func() *cobra.Command

// AddSubcommand adds a subcommand to `caddy ai-lb`. Call it from an init
// function, before Caddy's command line is built.
func AddSubcommand(newCommand func() *cobra.Command) {
	subcommands = append(subcommands, newCommand)
}

// RegistryFlags adds --redis and --prefix.
func RegistryFlags(fs *pflag.FlagSet) {
	fs.String("redis", "", "Redis URL (default $REDIS_URL, else redis://127.0.0.1:6379)")
	fs.String("prefix", registry.DefaultPrefix, "registry prefix")
}

func openRegistry(fs *pflag.FlagSet) (*registry.Client, error) {
	redisURL, _ := fs.GetString("redis")
	prefix, _ := fs.GetString("prefix")
	return registry.Open(redisURL, prefix)
}

// LoadFlags adds --load-interval, how often an agent publishes its node's
// engine load.
func LoadFlags(fs *pflag.FlagSet) {
	fs.Duration("load-interval", registry.DefaultLoadInterval,
		"how often the node's engine load (vLLM's or SGLang's /metrics) is read and published; 0: never")
}

// LoadInterval returns the Agent.LoadInterval that the flag of LoadFlags
// asks for.
func LoadInterval(fs *pflag.FlagSet) time.Duration {
	d, _ := fs.GetDuration("load-interval")
	if d <= 0 {
		return -1 // never
	}
	return d
}

// nodeFlags adds the flags that describe a node.
func nodeFlags(fs *pflag.FlagSet) {
	fs.String("id", "", "node ID (default: the URL's host:port)")
	fs.StringSlice("models", nil, "served models, comma-separated (default: asked from the node's /v1/models, or Ollama's /api/tags)")
	fs.Int("max-concurrency", 0, "most concurrent requests per ai-lb replica (0: no limit)")
	fs.Float64("weight", 1, "relative capacity")
	fs.StringToString("label", nil, "labels, key=value (repeatable)")
	fs.Duration("ttl", registry.DefaultTTL, "liveness after each heartbeat; heartbeats run every ttl/3")
}

// nodeFromFlags builds a node for nodeURL, asking it for its models when
// --models is not given.
func nodeFromFlags(ctx context.Context, fs *pflag.FlagSet, nodeURL string) (registry.Node, error) {
	n := registry.Node{URL: nodeURL}
	n.ID, _ = fs.GetString("id")
	n.Models, _ = fs.GetStringSlice("models")
	n.MaxConcurrency, _ = fs.GetInt("max-concurrency")
	n.Weight, _ = fs.GetFloat64("weight")
	n.Labels, _ = fs.GetStringToString("label")
	ttl, _ := fs.GetDuration("ttl")
	n.TTLMillis = ttl.Milliseconds()
	if n.ID == "" {
		dial, err := n.Dial()
		if err != nil {
			return n, err
		}
		n.ID = dial
	}
	if len(n.Models) == 0 {
		fetchCtx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		models, err := registry.FetchModels(fetchCtx, nodeURL)
		if err != nil {
			return n, fmt.Errorf("asking the node for its models (or pass --models): %v", err)
		}
		n.Models = models
	}
	return n, n.Validate()
}

// NodeAndRegistry builds the node that the flags of nodeFlags describe (a
// command may define --id, --models and the like itself) and opens the
// registry of RegistryFlags that it goes to.
func NodeAndRegistry(ctx context.Context, fs *pflag.FlagSet, nodeURL string) (registry.Node, *registry.Client, error) {
	node, err := nodeFromFlags(ctx, fs, nodeURL)
	if err != nil {
		return node, nil, err
	}
	client, err := openRegistry(fs)
	return node, client, err
}

// SignalContext ends on SIGINT or SIGTERM.
func SignalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
}

// NewLogger returns the production logger of the ai-lb subcommands.
func NewLogger() *zap.Logger {
	logger, err := zap.NewProduction()
	if err != nil {
		return zap.NewNop()
	}
	return logger
}

func registerCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "register --url <node-url> [--id <id>] [--models a,b] [--max-concurrency N] [--weight W] [--ttl 15s] [--load-interval 1s] [--once]",
		Short: "Registers a node and keeps it alive with heartbeats",
		Long: `
Registers the node at --url. Without --once it stays up as the node's
heartbeat agent, and deregisters the node on SIGINT or SIGTERM; with --once
it registers (one heartbeat) and exits.

The agent probes the node before every heartbeat: GET /health must answer
2xx (or 404, for a server without /health, with GET /v1/models answering
2xx) within 2s. A node that fails is registered unhealthy (no requests, its
models stay known) until a probe passes again. Without --models, the
registered models follow the node's /v1/models; a server without it
(Ollama without its OpenAI API) is read through GET /api/tags instead.

Every --load-interval (1s) the agent also reads the engine's load from the
node's /metrics (vLLM's running and waiting requests and KV-cache usage, or
SGLang's) and publishes it to every ai-lb replica, which weighs it in the
p2c cost; a node without such metrics (Ollama) publishes nothing.

SIGUSR1 drains the node: it gets no new requests while its streams finish,
and stays registered (draining) until SIGINT or SIGTERM deregisters it.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			nodeURL, _ := fs.GetString("url")
			if nodeURL == "" {
				return fmt.Errorf("--url is required")
			}
			ctx, stop := SignalContext()
			defer stop()
			node, client, err := NodeAndRegistry(ctx, fs, nodeURL)
			if err != nil {
				return err
			}
			defer client.Close()
			if once, _ := fs.GetBool("once"); once {
				if err := client.Register(ctx, node); err != nil {
					return err
				}
				fmt.Printf("registered %s (%s) serving %s\n", node.ID, node.URL, strings.Join(node.Models, ","))
				return nil
			}
			drain := make(chan os.Signal, 1)
			signal.Notify(drain, syscall.SIGUSR1)
			defer signal.Stop(drain)
			agent := &registry.Agent{Client: client, Node: node, Logger: NewLogger(), KeepModels: fs.Changed("models"), Drain: drain,
				LoadInterval: LoadInterval(fs)}
			return agent.Run(ctx)
		},
	}
	fs := cmd.Flags()
	RegistryFlags(fs)
	nodeFlags(fs)
	fs.String("url", "", "the node's base URL, e.g. http://10.0.0.5:8000 (required)")
	fs.Bool("once", false, "register once and exit instead of heartbeating")
	LoadFlags(fs)
	return cmd
}

func deregisterCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "deregister --id <id> [--drain]",
		Short: "Removes a node from the registry, or drains it",
		Long: `
Removes the node --id from the registry: every ai-lb replica stops routing
to it at once.

With --drain the node stays registered but gets no new requests, so the
streams it serves finish; its agent keeps it registered as draining. Stop
the agent (or deregister without --drain) once they are done. A new agent
for the node ends the drain.
`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			id, _ := fs.GetString("id")
			if id == "" {
				return fmt.Errorf("--id is required")
			}
			client, err := openRegistry(fs)
			if err != nil {
				return err
			}
			defer client.Close()
			remove, done := client.Deregister, "deregistered"
			if drain, _ := fs.GetBool("drain"); drain {
				remove, done = client.Drain, "draining"
			}
			found, err := remove(cmd.Context(), id)
			if err != nil {
				return err
			}
			if !found {
				return fmt.Errorf("no node %q is registered", id)
			}
			fmt.Printf("%s %s\n", done, id)
			return nil
		},
	}
	fs := cmd.Flags()
	RegistryFlags(fs)
	fs.String("id", "", "node ID (required)")
	fs.Bool("drain", false, "stop new requests to the node but keep it registered while its streams finish")
	return cmd
}

func nodesCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "nodes [--json]",
		Short: "Lists the registered nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fs := cmd.Flags()
			client, err := openRegistry(fs)
			if err != nil {
				return err
			}
			defer client.Close()
			entries, err := client.List(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON, _ := fs.GetBool("json"); asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(jsonEntries(entries))
			}
			printTable(entries)
			return nil
		},
	}
	RegistryFlags(cmd.Flags())
	cmd.Flags().Bool("json", false, "print JSON for scripts")
	return cmd
}

// jsonEntry is one node in `nodes --json`.
type jsonEntry struct {
	ID            string         `json:"id"`
	Node          *registry.Node `json:"node,omitempty"`
	Error         string         `json:"error,omitempty"`
	Live          bool           `json:"live"`
	State         string         `json:"state"`
	HeartbeatAgeS float64        `json:"heartbeat_age_s"`
	// Load is the engine load its agent published last, and LoadAgeS
	// its age.
	Load     *registry.LoadFigures `json:"load,omitempty"`
	LoadAgeS *float64              `json:"load_age_s,omitempty"`
}

// state names what ai-lb does with a registered node: live (routed),
// draining or unhealthy (live, not routed), expired, or malformed.
func state(e registry.Entry) string {
	switch {
	case e.Err != nil:
		return "malformed"
	case !e.Live:
		return "expired"
	case e.Node.Draining:
		return "draining"
	case e.Node.Unhealthy:
		return "unhealthy"
	}
	return "live"
}

func jsonEntries(entries []registry.Entry) []jsonEntry {
	out := make([]jsonEntry, 0, len(entries))
	for _, e := range entries {
		j := jsonEntry{ID: e.ID, Node: e.Node, Live: e.Live, State: state(e), HeartbeatAgeS: e.Age.Seconds()}
		if e.Err != nil {
			j.Error = e.Err.Error()
		}
		if e.Load != nil {
			age := e.LoadAge.Seconds()
			j.Load, j.LoadAgeS = e.Load, &age
		}
		out = append(out, j)
	}
	return out
}

func printTable(entries []registry.Entry) {
	tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ID\tSTATE\tURL\tMODELS\tMAX\tWEIGHT\tHEARTBEAT\tLOAD")
	for _, e := range entries {
		if e.Err != nil {
			fmt.Fprintf(tw, "%s\t%s\t%v\t\t\t\t\t\n", e.ID, state(e), e.Err)
			continue
		}
		maxConc := "-"
		if e.Node.MaxConcurrency > 0 {
			maxConc = fmt.Sprint(e.Node.MaxConcurrency)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%g\t%s ago\t%s\n", e.ID, state(e), e.Node.URL,
			strings.Join(e.Node.Models, ","), maxConc, e.Node.EffectiveWeight(), e.Age.Round(time.Millisecond), loadColumn(e))
	}
	tw.Flush()
}

// loadColumn shows the engine load of an entry: "3 running, 1 waiting,
// kv 42% (0.4s ago)", or "-".
func loadColumn(e registry.Entry) string {
	if e.Load == nil {
		return "-"
	}
	return fmt.Sprintf("%g running, %g waiting, kv %.0f%% (%s ago)", e.Load.Running, e.Load.Waiting,
		e.Load.KVCacheUsage*100, e.LoadAge.Round(time.Millisecond))
}
