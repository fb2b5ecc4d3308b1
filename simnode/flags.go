package simnode

import (
	"time"

	"github.com/spf13/pflag"
)

// BindFlags registers the simulator's command-line flags on fs and returns
// the Config they fill in when fs is parsed; pass it to New afterwards.
//
// Flags: --id --models (comma-separated) --ttft --ttft-jitter
// --slow-fraction --slow-factor --itl --tokens --slots --queue --fail-rate
// --fail-status --seed. Their defaults are the Config defaults. On the
// command line "--ttft 0" and "--itl 0" mean no delay (they are stored as
// NoDelay, since a zero in Config would mean "default").
func BindFlags(fs *pflag.FlagSet) *Config {
	c := &Config{
		TTFT:              DefaultTTFT,
		InterTokenLatency: DefaultInterTokenLatency,
	}
	fs.StringVar(&c.ID, "id", DefaultID, "node identity, reported in the X-Sim-Node header and the generated text")
	fs.StringSliceVar(&c.Models, "models", []string{DefaultModel}, "comma-separated list of served model IDs")
	fs.Var((*delayFlag)(&c.TTFT), "ttft", "time to first token (prefill time); 0 for none")
	fs.Float64Var(&c.TTFTJitter, "ttft-jitter", 0, "uniform ± jitter on the TTFT as a fraction (0.25 => TTFT*[0.75,1.25])")
	fs.Float64Var(&c.SlowFraction, "slow-fraction", 0, "fraction of requests whose TTFT is multiplied by --slow-factor")
	fs.Float64Var(&c.SlowFactor, "slow-factor", DefaultSlowFactor, "TTFT multiplier for slow requests")
	fs.Var((*delayFlag)(&c.InterTokenLatency), "itl", "inter-token latency; 0 for none")
	fs.IntVar(&c.Tokens, "tokens", DefaultTokens, "tokens per answer (capped by the request's max_tokens)")
	fs.IntVar(&c.Slots, "slots", 0, "concurrent generations; 0 = unlimited")
	fs.IntVar(&c.QueueSize, "queue", 0, "requests that may wait for a slot beyond --slots; more are rejected with 429")
	fs.Float64Var(&c.FailRate, "fail-rate", 0, "fraction of requests answered with --fail-status")
	fs.IntVar(&c.FailStatus, "fail-status", DefaultFailStatus, "HTTP status of injected failures")
	fs.Int64Var(&c.Seed, "seed", 0, "random seed; 0 = time-based")
	return c
}

// delayFlag is a duration flag where 0 means "no delay": it stores NoDelay
// so that New does not replace the zero with the default.
type delayFlag time.Duration

// Set implements pflag.Value.
func (d *delayFlag) Set(s string) error {
	v, err := time.ParseDuration(s)
	if err != nil {
		return err
	}
	if v == 0 {
		v = NoDelay
	}
	*d = delayFlag(v)
	return nil
}

// String implements pflag.Value; NoDelay shows as 0s.
func (d *delayFlag) String() string {
	if d == nil {
		return "0s"
	}
	return max(time.Duration(*d), 0).String()
}

// Type names the value in help output, like pflag's own duration flags.
func (d *delayFlag) Type() string { return "duration" }
