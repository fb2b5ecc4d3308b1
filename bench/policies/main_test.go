package main

import (
	"bytes"
	"context"
	"encoding/csv"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestQuick runs the whole benchmark in its -quick mode: redis-server,
// four simulated node processes and one ai-lb process per policy and
// scenario, the load, and the three output files. It checks that the
// pipeline works, not the numbers.
func TestQuick(t *testing.T) {
	if testing.Short() {
		t.Skip("starts redis-server, ai-lb and simulated node processes (and may build ai-lb): skipped under -short")
	}
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found (apt-get install redis-server): %v", err)
	}
	out := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	var log bytes.Buffer
	if err := run(ctx, []string{"-quick", "-out", out}, &log); err != nil {
		t.Fatalf("run: %v\n%s", err, log.String())
	}

	raw, err := os.ReadFile(filepath.Join(out, "policies.csv"))
	if err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(raw)).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	type key struct{ scenario, policy string }
	sent, ok := map[key]int{}, map[key]int{}
	nodes := map[string]bool{}
	for _, r := range rows[1:] {
		k := key{r[0], r[1]}
		sent[k]++
		if r[10] == "" && r[7] == "200" {
			ok[k]++
			nodes[r[8]] = true
		}
	}
	for _, sc := range []string{"hetero", "slowdown"} {
		for _, p := range knownPolicies {
			k := key{sc, p.name}
			if sent[k] < 20 || ok[k] < sent[k]*9/10 {
				t.Errorf("%s / %s: %d of %d requests answered in full\n%s", sc, p.name, ok[k], sent[k], log.String())
			}
		}
	}
	if len(nodes) != 4 {
		t.Errorf("answers came from nodes %v, want all four", nodes)
	}

	md, err := os.ReadFile(filepath.Join(out, "policies.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"## (a) Heterogeneous nodes", "## (b) One node slows down mid-run",
		"lb_policy POLICY", "Goal: `p2c` p99 TTFT", "go run ./bench/policies -quick"} {
		if !strings.Contains(string(md), want) {
			t.Errorf("policies.md lacks %q", want)
		}
	}
	svg, err := os.ReadFile(filepath.Join(out, "policies-ttft.svg"))
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(svg, []byte("<svg")) || !bytes.HasSuffix(svg, []byte("</svg>\n")) || !bytes.Contains(svg, []byte("<polyline")) {
		t.Errorf("policies-ttft.svg is not a whole plot:\n%.300s", svg)
	}
}

func TestArrivals(t *testing.T) {
	a := arrivals(50, 20*time.Second, 7)
	if got := float64(len(a)) / 20; got < 45 || got > 55 {
		t.Errorf("rate %.1f/s, want about 50", got)
	}
	for i := 1; i < len(a); i++ {
		if a[i] < a[i-1] || a[i] >= 20*time.Second {
			t.Fatalf("arrival %d at %v after %v", i, a[i], a[i-1])
		}
	}
	b := arrivals(50, 20*time.Second, 7)
	if len(a) != len(b) || a[len(a)/2] != b[len(b)/2] {
		t.Error("the same seed gave other arrivals")
	}
}

func TestDropTime(t *testing.T) {
	secs := func(shares ...int) []second {
		out := make([]second, len(shares))
		for i, s := range shares {
			out[i] = second{all: 100, slowed: s}
		}
		return out
	}
	for _, c := range []struct {
		secs []second
		want float64
	}{
		{secs(5, 5, 5, 5, 30), 1},            // at once (the last, partial second is left out)
		{secs(25, 20, 10, 12, 11, 9, 40), 3}, // from the third second on
		{secs(10, 25, 10, 10, 10, 10), 3},    // a relapse restarts the count
		{secs(25, 25, 25, 25), -1},
		{secs(20, 10), -1}, // only the partial second is below
	} {
		if got := dropTime(c.secs, 12.5/100); got != c.want {
			t.Errorf("dropTime(%v) = %v, want %v", c.secs, got, c.want)
		}
	}
}

func TestQuantile(t *testing.T) {
	v := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for q, want := range map[float64]float64{0: 1, .5: 5, .9: 9, .99: 10, 1: 10} {
		if got := quantile(v, q); got != want {
			t.Errorf("quantile(%v) = %v, want %v", q, got, want)
		}
	}
}
