package registry

import (
	"errors"
	"strings"
	"testing"
	"testing/iotest"

	"github.com/stretchr/testify/require"
)

// vllmSample is an excerpt of a vLLM 0.10 /metrics with two data-parallel
// engines, histograms and the info gauge of its cache config.
const vllmSample = `# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 3.0
vllm:num_requests_running{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 2.0
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 1.0
vllm:num_requests_waiting{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
# HELP vllm:gpu_cache_usage_perc GPU KV-cache usage. 1 means 100 percent usage.DEPRECATED: Use vllm:kv_cache_usage_perc instead.
# TYPE vllm:gpu_cache_usage_perc gauge
vllm:gpu_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
vllm:gpu_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.9
# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.4213
vllm:kv_cache_usage_perc{engine="1",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.25
# HELP vllm:time_to_first_token_seconds Histogram of time to first token in seconds.
# TYPE vllm:time_to_first_token_seconds histogram
vllm:time_to_first_token_seconds_bucket{engine="0",le="0.001",model_name="meta-llama/Llama-3.1-8B-Instruct"} 0.0
vllm:time_to_first_token_seconds_count{engine="0",model_name="meta-llama/Llama-3.1-8B-Instruct"} 140.0
# HELP vllm:cache_config_info Information of the LLMEngine CacheConfig
# TYPE vllm:cache_config_info gauge
vllm:cache_config_info{block_size="16",cache_dtype="auto",enable_prefix_caching="True",engine="0",gpu_memory_utilization="0.9",num_gpu_blocks="27000"} 1.0
# HELP process_cpu_seconds_total Total user and system CPU time spent in seconds.
# TYPE process_cpu_seconds_total counter
process_cpu_seconds_total 1234.5
`

// sglangSample is an excerpt of an SGLang /metrics.
const sglangSample = `# HELP sglang:num_running_reqs The number of running requests.
# TYPE sglang:num_running_reqs gauge
sglang:num_running_reqs{model_name="Qwen/Qwen3-8B",tp_rank="0"} 8.0
# HELP sglang:num_queue_reqs The number of requests in the waiting queue.
# TYPE sglang:num_queue_reqs gauge
sglang:num_queue_reqs{model_name="Qwen/Qwen3-8B",tp_rank="0"} 4.0
# HELP sglang:token_usage The token usage.
# TYPE sglang:token_usage gauge
sglang:token_usage{model_name="Qwen/Qwen3-8B",tp_rank="0"} 0.52
# HELP sglang:max_total_num_tokens Maximum total number of tokens in the KV cache pool.
# TYPE sglang:max_total_num_tokens gauge
sglang:max_total_num_tokens{model_name="Qwen/Qwen3-8B",tp_rank="0"} 500000.0
`

func TestParseEngineMetrics(t *testing.T) {
	tests := []struct {
		name  string
		body  string
		want  EngineMetrics
		found bool
	}{
		{"vllm: summed over engines, kv the largest, no capacity", vllmSample,
			EngineMetrics{Running: 5, Waiting: 1, KVCacheUsage: 0.4213}, true},
		{"sglang", sglangSample, EngineMetrics{Running: 8, Waiting: 4, KVCacheUsage: 0.52}, true},
		{"vllm before 0.9: gpu_cache_usage_perc",
			"vllm:num_requests_running{model_name=\"m\"} 1\nvllm:num_requests_waiting{model_name=\"m\"} 0\nvllm:gpu_cache_usage_perc{model_name=\"m\"} 0.3\n",
			EngineMetrics{Running: 1, KVCacheUsage: 0.3}, true},
		{"capacity from a max_num_seqs label of a config info gauge, per engine",
			`vllm:num_requests_running 0
vllm:scheduler_config_info{engine="0",max_model_len="8192",max_num_seqs="128"} 1
vllm:scheduler_config_info{engine="1",max_num_seqs="128",note="a \"quoted\", max_num_seqs=\"9\" }"} 1
`, EngineMetrics{MaxRunning: 256}, true},
		{"labels with escapes and spaces, timestamps",
			"vllm:num_requests_running{model_name=\"a \\\"b\\\" {c}\"} 2 1717171717171\nvllm:num_requests_waiting{ model_name = \"x\" } 3\n",
			EngineMetrics{Running: 2, Waiting: 3}, true},
		{"only waiting", "sglang:num_queue_reqs 7\n", EngineMetrics{Waiting: 7}, true},
		{"kv above 1 is clamped", "vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 1.5\n",
			EngineMetrics{Running: 1, KVCacheUsage: 1}, true},
		{"missing metrics: another server's /metrics", "# TYPE go_goroutines gauge\ngo_goroutines 12\nprocess_cpu_seconds_total 3\n",
			EngineMetrics{}, false},
		{"kv alone is no load", "vllm:kv_cache_usage_perc 0.5\n", EngineMetrics{KVCacheUsage: 0.5}, false},
		{"empty", "", EngineMetrics{}, false},
		{"garbage: an HTML page", "<html><body><h1>404 page not found</h1>\nvllm: is not here</body></html>\n",
			EngineMetrics{}, false},
		{"garbage lines are skipped, good ones kept",
			`vllm:num_requests_running{model_name="m"} lots
vllm:num_requests_running{model_name="m" 4
vllm:num_requests_running{model_name="m"}
vllm:num_requests_running{model_name="m"} NaN
vllm:num_requests_running{model_name="m"} +Inf
vllm:num_requests_running{model_name="m"} 1 2 3
vllm:num_requests_running
vllm:num_requests_waiting{model_name="m"} 2
vllm:scheduler_config_info{max_num_seqs="many"} 1
vllm:scheduler_config_info{max_num_seqs="-3"} 1
vllm:scheduler_config_info{max_num_seqs} 1
`, EngineMetrics{Waiting: 2}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, found, err := ParseEngineMetrics(strings.NewReader(tt.body))
			require.NoError(t, err)
			require.Equal(t, tt.found, found)
			require.InDelta(t, tt.want.Running, got.Running, 1e-9)
			require.InDelta(t, tt.want.Waiting, got.Waiting, 1e-9)
			require.InDelta(t, tt.want.KVCacheUsage, got.KVCacheUsage, 1e-9)
			require.InDelta(t, tt.want.MaxRunning, got.MaxRunning, 1e-9)
		})
	}
}

func TestParseEngineMetricsErrors(t *testing.T) {
	_, _, err := ParseEngineMetrics(iotest.ErrReader(errors.New("connection reset")))
	require.ErrorContains(t, err, "connection reset")

	long := "vllm:num_requests_running{model_name=\"" + strings.Repeat("x", maxMetricsLine) + "\"} 1\n"
	_, _, err = ParseEngineMetrics(strings.NewReader(long))
	require.Error(t, err, "a line longer than the bound")
}

func TestLabelValue(t *testing.T) {
	labels := `a="1",max_num_seqs="64", b="x\"y\\z\n"`
	require.Equal(t, "1", labelValue(labels, "a"))
	require.Equal(t, "64", labelValue(labels, "max_num_seqs"))
	require.Equal(t, "x\"y\\z\n", labelValue(labels, "b"))
	require.Equal(t, "", labelValue(labels, "c"))
	require.Equal(t, "", labelValue(`a=1`, "a"))
	require.Equal(t, "", labelValue(`a="unterminated`, "b"))
}
