package selection

import (
	"fmt"
	"testing"

	"github.com/caddyserver/caddy/v2/modules/caddyhttp/reverseproxy"
	"github.com/stretchr/testify/require"

	"github.com/ai-lb/ai-lb/registry"
	"github.com/ai-lb/ai-lb/request"
)

// testMembers returns n members at distinct addresses; member i has
// MaxConcurrency i.
func testMembers(n int) []*registry.Member {
	ms := make([]*registry.Member, n)
	for i := range ms {
		dial := fmt.Sprintf("10.0.%d.%d:8000", i/250, i%250)
		ms[i] = &registry.Member{
			Node: &registry.Node{ID: fmt.Sprintf("n%d", i), URL: "http://" + dial, MaxConcurrency: i},
			Dial: dial,
		}
	}
	return ms
}

// triedReq returns a request that has tried the members with the given
// indexes.
func triedReq(ms []*registry.Member, tried ...int) *request.Info {
	req := new(request.Info)
	for _, i := range tried {
		req.MarkTried(ms[i].Dial)
	}
	return req
}

// byTried classes members by whether req tried them, as GetUpstreams does
// for nodes with no health state.
func byTried(req *request.Info) func(*registry.Member) class {
	return func(m *registry.Member) class {
		if req.Tried(m.Dial) {
			return tried
		}
		return untried
	}
}

// byDial classes members by a table keyed by dial (untried when absent).
func byDial(classes map[string]class) func(*registry.Member) class {
	return func(m *registry.Member) class { return classes[m.Dial] }
}

func TestSampleClasses(t *testing.T) {
	for _, n := range []int{4, 40} { // every member fits, and the lazy shuffle
		ms := testMembers(n)
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			classes := map[string]class{}
			for i, m := range ms {
				classes[m.Dial] = []class{full, ejected}[i%2]
			}
			ups := sample(ms, 4, byDial(classes))
			require.NotEmpty(t, ups, "ejected nodes are offered when nothing else can be")
			for _, u := range ups {
				require.Equal(t, ejected, classes[u.Dial], "never a full node")
			}

			classes[ms[0].Dial] = tried
			ups = sample(ms, 4, byDial(classes))
			require.Equal(t, []string{ms[0].Dial}, dials(ups), "a tried node before any ejected one")

			for _, m := range ms {
				classes[m.Dial] = full
			}
			require.Empty(t, sample(ms, 4, byDial(classes)), "every node full: none offered")
		})
	}
}

func dials(ups []*reverseproxy.Upstream) []string {
	out := make([]string, len(ups))
	for i, u := range ups {
		out[i] = u.Dial
	}
	return out
}

func TestSampleAllFit(t *testing.T) {
	ms := testMembers(4)
	tests := []struct {
		name  string
		n, k  int
		tried []int
		want  []int // member indexes, in order
	}{
		{"empty", 0, 4, nil, []int{}},
		{"fewer than k", 3, 4, nil, []int{0, 1, 2}},
		{"exactly k", 4, 4, nil, []int{0, 1, 2, 3}},
		{"untried first", 4, 4, []int{0, 2}, []int{1, 3, 0, 2}},
		{"all tried", 3, 4, []int{0, 1, 2}, []int{0, 1, 2}},
		{"one member tried", 1, 4, []int{0}, []int{0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ups := sample(ms[:tt.n], tt.k, byTried(triedReq(ms, tt.tried...)))
			want := make([]string, len(tt.want))
			for i, m := range tt.want {
				want[i] = ms[m].Dial
			}
			require.Equal(t, want, dials(ups))
			for _, u := range ups {
				var m *registry.Member
				for _, c := range ms {
					if c.Dial == u.Dial {
						m = c
					}
				}
				require.Equal(t, m.MaxConcurrency, u.MaxRequests)
				require.Nil(t, u.Host, "fresh upstreams: reverse_proxy provisions them")
			}
		})
	}
}

func TestSampleMoreThanK(t *testing.T) {
	const draws = 5000
	tests := []struct {
		name  string
		n, k  int
		tried []int
	}{
		{"one more than k", 5, 4, nil},
		{"many", 1000, 4, nil},
		{"k of 2", 3, 2, nil},
		{"enough untried among few", 8, 4, []int{0, 1, 2}},
		{"exactly k untried", 8, 4, []int{0, 2, 4, 6}},
		{"fewer untried than k", 6, 4, []int{0, 1, 2, 3}},
		{"all tried", 6, 4, []int{0, 1, 2, 3, 4, 5}},
		{"enough untried among many", 1000, 4, []int{1, 10, 100, 500, 999}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ms := testMembers(tt.n)
			req := triedReq(ms, tt.tried...)
			untried := tt.n - len(tt.tried)
			for range draws {
				ups := sample(ms, tt.k, byTried(req))
				got := dials(ups)
				require.Len(t, got, tt.k)
				seen := map[string]bool{}
				fresh := 0
				for i, d := range got {
					require.False(t, seen[d], "duplicate %s in %v", d, got)
					seen[d] = true
					if !req.Tried(d) {
						fresh++
						require.Equal(t, fresh, i+1, "an untried member after a tried one: %v", got)
					}
				}
				require.Equal(t, min(untried, tt.k), fresh, "untried members left out: %v", got)
			}
		})
	}
}

func TestSampleFindsLastUntried(t *testing.T) {
	const draws = 1000
	for _, n := range []int{5, 20, 100} {
		t.Run(fmt.Sprint(n), func(t *testing.T) {
			ms := testMembers(n)
			tried := make([]int, 0, n-1)
			for i := range n - 1 {
				tried = append(tried, i)
			}
			req := triedReq(ms, tried...)
			last := ms[n-1].Dial
			found := 0
			for range draws {
				ups := sample(ms, 4, byTried(req))
				require.Len(t, ups, 4)
				if ups[0].Dial == last {
					found++
				}
			}
			require.GreaterOrEqual(t, found, draws*99/100, "the one untried member comes first in almost every sample")
		})
	}
}

func TestSampleUniform(t *testing.T) {
	tests := []struct {
		name  string
		n, k  int
		tried []int
	}{
		{"none tried", 10, 3, nil},
		{"some tried", 10, 3, []int{0, 5}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			const draws = 30000
			ms := testMembers(tt.n)
			req := triedReq(ms, tt.tried...)
			counts := map[string]int{}
			for range draws {
				for _, u := range sample(ms, tt.k, byTried(req)) {
					counts[u.Dial]++
				}
			}
			// Untried members share the draws evenly; tried ones are
			// never needed here.
			untried := tt.n - len(tt.tried)
			expect := float64(draws*tt.k) / float64(untried)
			for _, m := range ms {
				if req.Tried(m.Dial) {
					require.Zero(t, counts[m.Dial])
					continue
				}
				require.InEpsilon(t, expect, float64(counts[m.Dial]), 0.1, "member %s: %d draws, want about %.0f", m.ID, counts[m.Dial], expect)
			}
		})
	}
}

func BenchmarkSample(b *testing.B) {
	for _, n := range []int{3, 1000} {
		b.Run(fmt.Sprint(n), func(b *testing.B) {
			ms := testMembers(n)
			req := triedReq(ms, 0)
			b.ReportAllocs()
			for b.Loop() {
				if len(sample(ms, DefaultSample, byTried(req))) == 0 {
					b.Fatal("empty sample")
				}
			}
		})
	}
}
