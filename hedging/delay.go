package hedging

import (
	"slices"
	"sync"
	"time"
)

// ttftWindow keeps recent time-to-first-token samples of one model and
// derives the hedge delay from a percentile of them.
type ttftWindow struct {
	mu       sync.Mutex
	samples  []ttftSample // a ring of the most recent samples
	next     int
	cached   time.Duration
	cachedOK bool
	cachedAt time.Time
}

type ttftSample struct {
	at   time.Time
	ttft time.Duration
}

// maxSamples bounds the memory and sorting cost of one model's window.
const maxSamples = 2048

// refreshEvery is how often the percentile is recomputed.
const refreshEvery = time.Second

func (w *ttftWindow) add(now time.Time, ttft time.Duration) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if len(w.samples) < maxSamples {
		w.samples = append(w.samples, ttftSample{now, ttft})
		return
	}
	w.samples[w.next] = ttftSample{now, ttft}
	w.next = (w.next + 1) % maxSamples
}

// percentile returns the p-th percentile (0-100) of the samples younger
// than window, or false when fewer than minSamples exist.
func (w *ttftWindow) percentile(now time.Time, p float64, window time.Duration, minSamples int) (time.Duration, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.cachedAt.IsZero() && now.Sub(w.cachedAt) < refreshEvery {
		return w.cached, w.cachedOK
	}
	recent := make([]time.Duration, 0, len(w.samples))
	for _, s := range w.samples {
		if now.Sub(s.at) <= window {
			recent = append(recent, s.ttft)
		}
	}
	w.cachedAt = now
	w.cachedOK = len(recent) >= max(minSamples, 1)
	if !w.cachedOK {
		return 0, false
	}
	slices.Sort(recent)
	i := int(p / 100 * float64(len(recent)-1))
	w.cached = recent[min(max(i, 0), len(recent)-1)]
	return w.cached, true
}

// delays holds the TTFT windows of all models.
type delays struct {
	mu     sync.Mutex
	models map[string]*ttftWindow
}

// maxModels bounds the models tracked, so that clients cannot grow it
// without limit with invented model names (unknown models are refused by
// the ai_lb handler before they get here, but the hedge may run without it).
const maxModels = 1024

func (d *delays) window(model string) *ttftWindow {
	d.mu.Lock()
	defer d.mu.Unlock()
	if w, ok := d.models[model]; ok {
		return w
	}
	if d.models == nil {
		d.models = make(map[string]*ttftWindow)
	}
	if len(d.models) >= maxModels {
		return nil
	}
	w := new(ttftWindow)
	d.models[model] = w
	return w
}
