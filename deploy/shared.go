// Package deploy checks the deployment files (xcaddy.Dockerfile, the
// compose files, the OpenClaw integration) without a Docker engine: every
// path they name exists, every command they run parses with ai-lb's own
// command line, every Caddyfile adapts, and test_connection.sh works
// against a fake balancer.
//
// The checks are its tests, one concern a file. This file holds the two
// helpers they share with the repository's docs test (docs_test.go in the
// module root): ParseCaddyCommand and CodeBlocks.
package deploy

import (
	"strings"
	"testing"

	caddycmd "github.com/caddyserver/caddy/v2/cmd"
	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"github.com/stretchr/testify/require"

	// `caddy ai-lb ...` (the cli package) and `caddy ai-lb simnode`.
	_ "github.com/ai-lb/ai-lb/simnode/simnodecmd"
)

// ParseCaddyCommand parses `caddy <command> [<subcommand>...] <flags>`
// with the command line of the binary the image ships (Caddy plus ai-lb),
// so a misspelt flag or subcommand fails here rather than in a container.
func ParseCaddyCommand(t testing.TB, args []string) *pflag.FlagSet {
	t.Helper()
	require.GreaterOrEqual(t, len(args), 2, "command %q", args)
	require.Equal(t, "caddy", args[0], "command %q", args)
	c, ok := caddycmd.Commands()[args[1]]
	require.True(t, ok, "command %q: caddy has no %q command", args, args[1])
	root := &cobra.Command{Use: c.Name}
	if c.CobraFunc != nil {
		c.CobraFunc(root)
	} else {
		root.Flags().AddGoFlagSet(c.Flags)
	}
	cmd, rest, err := root.Find(args[2:])
	require.NoError(t, err, "command %q", args)
	require.NoError(t, cmd.ParseFlags(rest), "command %q", args)
	require.NoError(t, cmd.ValidateArgs(cmd.Flags().Args()), "command %q", args)
	require.True(t, cmd.Runnable(), "command %q is not runnable", args)
	return cmd.Flags()
}

// CodeBlocks returns the fenced code blocks of a Markdown text in lang.
func CodeBlocks(md, lang string) []string {
	var blocks []string
	var cur []string
	in := false
	for _, line := range strings.Split(md, "\n") {
		switch {
		case !in && line == "```"+lang:
			in, cur = true, nil
		case in && line == "```":
			in = false
			blocks = append(blocks, strings.Join(cur, "\n")+"\n")
		case in:
			cur = append(cur, line)
		}
	}
	return blocks
}
