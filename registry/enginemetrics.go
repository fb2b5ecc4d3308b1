package registry

import (
	"bufio"
	"io"
	"math"
	"strconv"
	"strings"
)

// EngineMetrics are the load figures an inference engine's Prometheus
// /metrics states about itself.
type EngineMetrics struct {
	// Running is the requests in the engine's batch, summed over the
	// label sets (models, data-parallel engines).
	Running float64
	// Waiting is the requests queued for the batch, summed likewise.
	Waiting float64
	// KVCacheUsage is the KV-cache occupancy, 0-1: the largest over the
	// label sets (each engine has its own cache, so a sum would mean
	// nothing).
	KVCacheUsage float64
	// MaxRunning is how many requests the engine runs at once, when it
	// says; 0 when unknown (see ParseEngineMetrics).
	MaxRunning float64
}

// Metric names read by ParseEngineMetrics.
const (
	vllmRunning     = "vllm:num_requests_running"
	vllmWaiting     = "vllm:num_requests_waiting"
	vllmKVCache     = "vllm:kv_cache_usage_perc"
	vllmGPUCache    = "vllm:gpu_cache_usage_perc" // before vLLM 0.9; both are exported since
	sglangRunning   = "sglang:num_running_reqs"
	sglangWaiting   = "sglang:num_queue_reqs"
	sglangKVCache   = "sglang:token_usage"
	configInfo      = "_config_info"
	maxNumSeqsLabel = "max_num_seqs"
)

// maxMetricsLine bounds one line of a /metrics body.
const maxMetricsLine = 1 << 20

// ParseEngineMetrics reads the load figures from a Prometheus text
// exposition body: vLLM's vllm:num_requests_running,
// vllm:num_requests_waiting and vllm:kv_cache_usage_perc (or the older
// vllm:gpu_cache_usage_perc), and SGLang's sglang:num_running_reqs,
// sglang:num_queue_reqs and sglang:token_usage.
//
// Capacity: neither engine exports its limit of concurrent sequences
// (vLLM's max_num_seqs is scheduler configuration, and its only info gauge,
// vllm:cache_config_info, carries the cache configuration; SGLang has none
// either). A max_num_seqs label on any *_config_info gauge is read as the
// capacity, summed over label sets like Running: the form vLLM would give
// it, and the one the simulated node uses.
//
// found reports whether any running or waiting figure was there; a body
// without (Ollama's 404 page, llama.cpp without --metrics) has no load to
// publish. Lines that do not parse, and NaN or infinite values, are
// skipped; err is only a read error.
func ParseEngineMetrics(r io.Reader) (m EngineMetrics, found bool, err error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxMetricsLine)
	var vllmKV, legacyKV, sglangKV float64
	var haveVLLMKV bool
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "vllm:") && !strings.HasPrefix(line, "sglang:") && !strings.Contains(line, configInfo) {
			continue // the fast path: most lines are other metrics
		}
		name, labels, value, ok := parseSample(line)
		if !ok {
			continue
		}
		switch name {
		case vllmRunning, sglangRunning:
			m.Running += value
			found = true
		case vllmWaiting, sglangWaiting:
			m.Waiting += value
			found = true
		case vllmKVCache:
			vllmKV, haveVLLMKV = max(vllmKV, value), true
		case vllmGPUCache:
			legacyKV = max(legacyKV, value)
		case sglangKVCache:
			sglangKV = max(sglangKV, value)
		default:
			if strings.HasSuffix(name, configInfo) {
				if v, err := strconv.ParseFloat(labelValue(labels, maxNumSeqsLabel), 64); err == nil && v > 0 && !math.IsInf(v, 0) {
					m.MaxRunning += v
				}
			}
		}
	}
	if !haveVLLMKV {
		vllmKV = legacyKV
	}
	m.KVCacheUsage = min(max(vllmKV, sglangKV), 1)
	return m, found, sc.Err()
}

// parseSample splits a sample line, `name{labels} value [timestamp]`, into
// its name, the text between its braces, and its value.
func parseSample(line string) (name, labels string, value float64, ok bool) {
	i := strings.IndexAny(line, "{ \t")
	if i < 0 {
		return "", "", 0, false
	}
	name, rest := line[:i], line[i:]
	if strings.HasPrefix(rest, "{") {
		end := labelsEnd(rest)
		if end < 0 {
			return "", "", 0, false
		}
		labels, rest = rest[1:end], rest[end+1:]
	}
	fields := strings.Fields(rest)
	if name == "" || len(fields) == 0 || len(fields) > 2 {
		return "", "", 0, false
	}
	value, err := strconv.ParseFloat(fields[0], 64)
	if err != nil || math.IsNaN(value) || math.IsInf(value, 0) {
		return "", "", 0, false
	}
	return name, labels, value, true
}

// labelsEnd returns the index of the brace that closes the label set s
// starts with, skipping quoted values; -1 if there is none.
func labelsEnd(s string) int {
	quoted := false
	for i := 1; i < len(s); i++ {
		switch c := s[i]; {
		case quoted && c == '\\':
			i++
		case c == '"':
			quoted = !quoted
		case !quoted && c == '}':
			return i
		}
	}
	return -1
}

// labelValue returns the unescaped value of label name in a label set's
// text, or "".
func labelValue(labels, name string) string {
	for rest := labels; rest != ""; {
		eq := strings.IndexByte(rest, '=')
		if eq < 0 || eq+1 >= len(rest) || rest[eq+1] != '"' {
			return ""
		}
		key := strings.TrimSpace(strings.TrimLeft(rest[:eq], ", \t"))
		var val strings.Builder
		i := eq + 2
		for ; i < len(rest) && rest[i] != '"'; i++ {
			c := rest[i]
			if c == '\\' && i+1 < len(rest) {
				i++
				if c = rest[i]; c == 'n' {
					c = '\n'
				}
			}
			val.WriteByte(c)
		}
		if key == name {
			return val.String()
		}
		if i >= len(rest) {
			return ""
		}
		rest = rest[i+1:]
	}
	return ""
}
