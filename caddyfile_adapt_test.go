package ailb

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/caddyserver/caddy/v2/caddyconfig"
	// Caddy's own modules, as cmd/ai-lb builds in, so that cases can place
	// ai-lb's directives among Caddy's (e.g. `ai_lb` after `metrics`).
	_ "github.com/caddyserver/caddy/v2/modules/standard"
)

// update rewrites the golden files from the adapter's output:
//
//	go test -run TestCaddyfileAdapt -update .
var update = flag.Bool("update", false, "rewrite the Caddyfile adapt golden files")

// adaptDir holds the Caddyfile adapt cases, as in Caddy's
// caddytest/integration/caddyfile_adapt: a Caddyfile, a line of ten
// dashes, and the JSON it adapts to, or else a part of the error that
// adapting it must fail with.
const adaptDir = "testdata/caddyfile_adapt"

const adaptSeparator = "----------"

// TestCaddyfileAdapt adapts every case in adaptDir. Adapting only parses
// (nothing is provisioned), so no Redis or network is needed.
func TestCaddyfileAdapt(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(adaptDir, "*.caddyfiletest"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no cases in %s: %v", adaptDir, err)
	}
	for _, file := range files {
		t.Run(filepath.Base(file), func(t *testing.T) {
			data, err := os.ReadFile(file)
			if err != nil {
				t.Fatal(err)
			}
			input, expected, ok := strings.Cut(strings.ReplaceAll(string(data), "\r\n", "\n"), adaptSeparator)
			if !ok {
				t.Fatalf("no %s line", adaptSeparator)
			}
			input, expected = strings.TrimSpace(input)+"\n", strings.TrimSpace(expected)
			if strings.HasPrefix(expected, "{") || *update && !strings.HasPrefix(expected, "error:") {
				got := checkAdapt(t, input, expected)
				if *update {
					writeGolden(t, file, input+adaptSeparator+"\n"+got)
				}
				return
			}
			// A case that must fail: its expected part is "error: <part>".
			want := strings.TrimSpace(strings.TrimPrefix(expected, "error:"))
			if _, _, err := adapt(input); err == nil {
				t.Fatalf("adapted without error; want one containing %q", want)
			} else if !strings.Contains(err.Error(), want) {
				t.Fatalf("error %q does not contain %q", err, want)
			}
		})
	}
}

// TestCaddyfileExampleAdapt adapts Caddyfile.example, as shipped.
func TestCaddyfileExampleAdapt(t *testing.T) {
	input, err := os.ReadFile("Caddyfile.example")
	if err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join(adaptDir, "Caddyfile.example.json")
	expected, err := os.ReadFile(golden)
	if err != nil && !*update {
		t.Fatal(err)
	}
	got := checkAdapt(t, string(input), string(expected))
	if *update {
		writeGolden(t, golden, got)
	}
}

// adapt adapts a Caddyfile to JSON.
func adapt(input string) ([]byte, []caddyconfig.Warning, error) {
	return caddyconfig.GetAdapter("caddyfile").Adapt([]byte(input), nil)
}

// checkAdapt adapts input and compares the result with the expected JSON,
// both indented alike, unless -update is given. It returns the indented
// result.
func checkAdapt(t *testing.T, input, expected string) string {
	t.Helper()
	result, warnings, err := adapt(input)
	if err != nil {
		t.Fatalf("adapting: %v", err)
	}
	for _, w := range warnings {
		t.Logf("warning: line %d: %s: %s", w.Line, w.Directive, w.Message)
	}
	got := indentJSON(t, result)
	if *update {
		return got
	}
	if want := indentJSON(t, []byte(expected)); got != want {
		t.Errorf("adapted JSON differs from the golden file (go test -update rewrites it)\n--- want\n%s\n--- got\n%s", want, got)
	}
	return got
}

func indentJSON(t *testing.T, data []byte) string {
	t.Helper()
	var buf bytes.Buffer
	if err := json.Indent(&buf, bytes.TrimSpace(data), "", "\t"); err != nil {
		t.Fatalf("invalid JSON: %v\n%s", err, data)
	}
	return buf.String()
}

func writeGolden(t *testing.T, file, content string) {
	t.Helper()
	if err := os.WriteFile(file, []byte(strings.TrimSpace(content)+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
}
