package tombstone

import (
	"bytes"
	"strings"
	"testing"
	"time"
)

var fuzzSecret = bytes.Repeat([]byte("s"), 32)

// FuzzParseHop: parseHop never panics, accepts only what was signed with the secret for that
// request, and round-trips what signHop writes.
func FuzzParseHop(f *testing.F) {
	now := time.Unix(1795316400, 0)
	f.Add(signHop(fuzzSecret, []string{"a"}, now, "blog.alice.repl.test", "GET", "/"), "blog.alice.repl.test", "/")
	f.Add(signHop(fuzzSecret, []string{"a", "b"}, now, "x.id.repl.test", "GET", "/p?q=1"), "x.id.repl.test", "/p?q=1")
	f.Add("v1; via=a; t=1795316400; sig=AAAA", "h", "/")
	f.Add("v1;via=;t=;sig=", "", "")
	f.Add("", "h", "/")
	f.Add(";;;", "h", "/")
	f.Fuzz(func(t *testing.T, value, host, target string) {
		h, err := parseHop(value, [][]byte{fuzzSecret}, now, time.Minute, host, "GET", target)
		if err != nil {
			return
		}
		if len(h.via) == 0 {
			t.Fatalf("accepted %q with no via", value)
		}
		// Whatever verifies must be exactly what signHop writes for that request.
		if again := signHop(fuzzSecret, h.via, h.at, host, "GET", target); again != value && !sameFields(again, value) {
			t.Fatalf("accepted %q, but signHop writes %q", value, again)
		}
	})
}

func sameFields(a, b string) bool {
	norm := func(s string) string { return strings.ReplaceAll(s, " ", "") }
	return norm(a) == norm(b)
}

func TestHopRoundTrip(t *testing.T) {
	now := time.Now()
	v := signHop(fuzzSecret, []string{"a", "b"}, now, "Blog.Alice.repl.test", "POST", "/x?y=1")
	h, err := parseHop(v, [][]byte{fuzzSecret}, now, time.Minute, "blog.alice.REPL.test", "POST", "/x?y=1")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(h.via, ",") != "a,b" {
		t.Fatalf("via = %v", h.via)
	}
	for _, tc := range []struct{ host, method, target string }{
		{"other.alice.repl.test", "POST", "/x?y=1"},
		{"blog.alice.repl.test", "GET", "/x?y=1"},
		{"blog.alice.repl.test", "POST", "/x?y=2"},
	} {
		if _, err := parseHop(v, [][]byte{fuzzSecret}, now, time.Minute, tc.host, tc.method, tc.target); err == nil {
			t.Errorf("a header signed for another request verified for %+v", tc)
		}
	}
}

func TestHopSignerMatchesSignHop(t *testing.T) {
	s := newHopSigner(fuzzSecret)
	now := time.Unix(1795316400, 0)
	for i := 0; i < 3; i++ { // reused HMAC states give the same answer
		if got, want := s.sign([]string{"a", "b"}, now, "h", "GET", "/"), signHop(fuzzSecret, []string{"a", "b"}, now, "h", "GET", "/"); got != want {
			t.Fatalf("pooled signer = %q, signHop = %q", got, want)
		}
	}
}
