package lore_test

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/switchyard-dev/switchyard/lore"
)

// FuzzParseHost: ParseHost never panics, fails only with ErrInvalid, and what it accepts
// round-trips: the parsed labels are valid lowercase labels and rebuild the input host.
func FuzzParseHost(f *testing.F) {
	for _, s := range []string{"blog.replbot.repl.test", "ABC.id.repl.test.", "a.b.repl.test:65535", "x.repl.test",
		"_acme-challenge.a.repl.test", "a..repl.test", "xn--a.b.repl.test", "[::1]:80", "a.b.repl.test:0"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, host string) {
		h, err := lore.ParseHost(host, "repl.test")
		if err != nil {
			if !errors.Is(err, lore.ErrInvalid) {
				t.Fatalf("ParseHost(%q) error %v does not wrap ErrInvalid", host, err)
			}
			return
		}
		name := host
		if i := strings.IndexByte(name, ':'); i >= 0 {
			name = name[:i]
		}
		name = strings.ToLower(strings.TrimSuffix(name, "."))
		var rebuilt string
		switch {
		case h.ID != "" && h.Owner == "" && h.Slug == "":
			rebuilt = h.ID + ".id.repl.test"
		case h.ID == "" && h.Owner != "" && h.Slug != "":
			if lore.Reserved(h.Owner) || lore.Reserved(h.Slug) {
				t.Fatalf("ParseHost(%q) accepted a reserved label: %+v", host, h)
			}
			if _, err := lore.NormalizeName("owner", h.Owner); err != nil {
				t.Fatalf("ParseHost(%q) owner %q: %v", host, h.Owner, err)
			}
			if _, err := lore.NormalizeName("slug", h.Slug); err != nil {
				t.Fatalf("ParseHost(%q) slug %q: %v", host, h.Slug, err)
			}
			rebuilt = h.Slug + "." + h.Owner + ".repl.test"
		default:
			t.Fatalf("ParseHost(%q) = %+v: want either an ID or an owner and slug", host, h)
		}
		if rebuilt != name {
			t.Fatalf("ParseHost(%q) = %+v, which rebuilds %q", host, h, rebuilt)
		}
	})
}

// FuzzNormalizeName: accepted names are lowercase LDH labels of 1-63 octets, not reserved, and
// normalizing is idempotent.
func FuzzNormalizeName(f *testing.F) {
	for _, s := range []string{"bob", "Bob-2", "-x", "x-", "_x", "id", "xn--x", strings.Repeat("a", 64), "a.b", "ä"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := lore.NormalizeName("owner", s)
		if err != nil {
			if !errors.Is(err, lore.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if n != strings.ToLower(s) || len(n) == 0 || len(n) > 63 || lore.Reserved(n) ||
			strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-") != "" || n[0] == '-' || n[len(n)-1] == '-' {
			t.Fatalf("NormalizeName(%q) = %q", s, n)
		}
		if again, err := lore.NormalizeName("owner", n); err != nil || again != n {
			t.Fatalf("not idempotent: %q → %q, %v", n, again, err)
		}
	})
}

// FuzzNormalizeDomain: accepted domains are lowercase, dotted LDH labels, ≤ 253 octets, and
// normalizing is idempotent.
func FuzzNormalizeDomain(f *testing.F) {
	for _, s := range []string{"example.com", "WWW.Example.COM.", "1.2.3.4", "a..b", "com", "x.123", "::1"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := lore.NormalizeDomain(s)
		if err != nil {
			if !errors.Is(err, lore.ErrInvalid) {
				t.Fatalf("error %v does not wrap ErrInvalid", err)
			}
			return
		}
		if len(n) > 253 || strings.Trim(n, "abcdefghijklmnopqrstuvwxyz0123456789-.") != "" || !strings.Contains(n, ".") {
			t.Fatalf("NormalizeDomain(%q) = %q", s, n)
		}
		if again, err := lore.NormalizeDomain(n); err != nil || again != n {
			t.Fatalf("not idempotent: %q → %q, %v", n, again, err)
		}
	})
}

// FuzzVerify: arbitrary tokens never verify (the fuzzer cannot forge Ed25519) and every
// rejection carries one of the token sentinels.
func FuzzVerify(f *testing.F) {
	key := newKey(f)
	iss := newIssuer(f, key, "k1", nil)
	ks := lore.NewKeySet(iss.PublicKey())
	good, _, _ := iss.Issue("a", "r1")
	f.Add(good)
	f.Add(good[:len(good)-2])
	f.Add("eyJhbGciOiJub25lIn0.e30.")
	f.Add("..")
	f.Add("a.b.c")
	f.Fuzz(func(t *testing.T, tok string) {
		c, err := ks.Verify(context.Background(), tok, "a")
		if err == nil {
			if tok != good {
				// Only re-encodings of the genuine token could pass; strict decoding refuses
				// them, so anything else verifying is a forgery.
				t.Fatalf("forged token verified: %q → %+v", tok, c)
			}
			return
		}
		for _, s := range []error{lore.ErrTokenMalformed, lore.ErrTokenAlgorithm, lore.ErrTokenUnknownKey,
			lore.ErrTokenSignature, lore.ErrTokenExpired, lore.ErrTokenNotYetValid, lore.ErrTokenAudience} {
			if errors.Is(err, s) {
				return
			}
		}
		t.Fatalf("Verify(%q) error %v carries no token sentinel", tok, err)
	})
}
