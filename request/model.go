package request

import "strings"

// latestTag is the tag Ollama gives a model name that has none.
const latestTag = ":latest"

// ModelKey is how ai-lb matches model names: two names mean the same model
// exactly when their keys are equal. As Ollama reads names, a name without
// a tag is its ":latest" ("llama3.2" is "llama3.2:latest"); the key is the
// name without that tag, so that matching allocates nothing. Any other
// name, an OpenAI-style one included, is its own key.
func ModelKey(name string) string {
	if base, ok := strings.CutSuffix(name, latestTag); ok && base != "" && !hasTag(base) {
		return base
	}
	return name
}

// ModelName is a model's full name as Ollama lists it: a name without a tag
// gets ":latest". ModelName(a) == ModelName(b) exactly when ModelKey(a) ==
// ModelKey(b).
func ModelName(name string) string {
	if name == "" || hasTag(name) {
		return name
	}
	return name + latestTag
}

// hasTag reports whether an Ollama model name ([host[:port]/][namespace/]model[:tag])
// has a tag: a colon after its last slash.
func hasTag(name string) bool {
	return strings.LastIndexByte(name, ':') > strings.LastIndexByte(name, '/')
}
