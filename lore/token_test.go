package lore_test

import (
	"context"
	"crypto/ed25519"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/switchyard-dev/switchyard/lore"
)

func newKey(t testing.TB) ed25519.PrivateKey {
	t.Helper()
	_, k, err := ed25519.GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

func newIssuer(t testing.TB, key ed25519.PrivateKey, kid string, now func() time.Time) *lore.Issuer {
	t.Helper()
	iss, err := lore.NewIssuer(lore.IssuerConfig{Key: key, KeyID: kid, Now: now})
	if err != nil {
		t.Fatal(err)
	}
	return iss
}

func b64(v any) string {
	var raw []byte
	switch v := v.(type) {
	case string:
		raw = []byte(v)
	default:
		raw, _ = json.Marshal(v)
	}
	return base64.RawURLEncoding.EncodeToString(raw)
}

// signRaw builds a token from any header and payload, signed with Ed25519.
func signRaw(key ed25519.PrivateKey, header, payload any) string {
	in := b64(header) + "." + b64(payload)
	return in + "." + base64.RawURLEncoding.EncodeToString(ed25519.Sign(key, []byte(in)))
}

func TestIssueVerify(t *testing.T) {
	key := newKey(t)
	iss := newIssuer(t, key, "", nil)
	tok, c, err := iss.Issue("a", "r1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Cluster != "a" || c.Repl != "r1" || c.ID == "" || c.ExpiresAt.Sub(c.IssuedAt) != lore.DefaultTokenTTL {
		t.Fatalf("claims %+v", c)
	}
	pk := iss.PublicKey()
	if pk.KeyID != lore.KeyID(key.Public().(ed25519.PublicKey)) {
		t.Fatalf("kid %q", pk.KeyID)
	}
	got, err := lore.NewKeySet(pk).Verify(context.Background(), tok, "a")
	if err != nil {
		t.Fatal(err)
	}
	if got != c {
		t.Fatalf("verified %+v, issued %+v", got, c)
	}
	// The header carries kid and alg EdDSA; the payload has a single-string aud.
	parts := strings.Split(tok, ".")
	hdr, _ := base64.RawURLEncoding.DecodeString(parts[0])
	pl, _ := base64.RawURLEncoding.DecodeString(parts[1])
	if !strings.Contains(string(hdr), `"kid":"`+pk.KeyID+`"`) || !strings.Contains(string(hdr), `"alg":"EdDSA"`) ||
		!strings.Contains(string(pl), `"aud":"a"`) {
		t.Fatalf("header %s payload %s", hdr, pl)
	}
	_, c2, _ := iss.Issue("a", "r1")
	if c2.ID == c.ID {
		t.Fatal("jti repeated")
	}
	if _, _, err := iss.Issue("", "r1"); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("empty cluster: %v", err)
	}
	if _, err := lore.NewIssuer(lore.IssuerConfig{}); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("no key: %v", err)
	}
}

func TestVerifyRejects(t *testing.T) {
	key, other := newKey(t), newKey(t)
	now := time.Now()
	at := func(d time.Duration) func() time.Time { return func() time.Time { return now.Add(d) } }
	iss := newIssuer(t, key, "k1", nil)
	ks := lore.NewKeySet(iss.PublicKey(), newIssuer(t, newKey(t), "k0", nil).PublicKey())
	good, _, _ := iss.Issue("a", "r1")
	parts := strings.Split(good, ".")
	pub := key.Public().(ed25519.PublicKey)
	claims := map[string]any{"aud": "a", "sub": "r1", "iat": now.Unix(), "exp": now.Add(time.Minute).Unix(), "jti": "x"}
	hdr := map[string]any{"alg": "EdDSA", "typ": "JWT", "kid": "k1"}
	with := func(m map[string]any, k string, v any) map[string]any {
		out := map[string]any{}
		for kk, vv := range m {
			out[kk] = vv
		}
		if v == nil {
			delete(out, k)
		} else {
			out[k] = v
		}
		return out
	}
	issue := func(i *lore.Issuer, aud string) string {
		tok, _, err := i.Issue(aud, "r1")
		if err != nil {
			t.Fatal(err)
		}
		return tok
	}
	hs256 := func() string { // the classic confusion: HMAC keyed with the public key
		h, _ := json.Marshal(map[string]any{"alg": "HS256", "typ": "JWT", "kid": "k1"})
		c, _ := json.Marshal(claims)
		signed := base64.RawURLEncoding.EncodeToString(h) + "." + base64.RawURLEncoding.EncodeToString(c)
		m := hmac.New(sha256.New, []byte(pub))
		m.Write([]byte(signed))
		return signed + "." + base64.RawURLEncoding.EncodeToString(m.Sum(nil))
	}
	flip := func(s string, i int) string {
		b := []byte(s)
		if b[i] == 'A' {
			b[i] = 'B'
		} else {
			b[i] = 'A'
		}
		return string(b)
	}
	tests := []struct {
		name  string
		token string
		aud   string
		want  error
	}{
		{"valid", good, "a", nil},
		{"valid raw", signRaw(key, hdr, claims), "a", nil},
		{"aud as array", signRaw(key, hdr, with(claims, "aud", []string{"a"})), "a", nil},
		{"wrong audience", good, "b", lore.ErrTokenAudience},
		{"empty audience", good, "", lore.ErrTokenAudience},
		{"two audiences", signRaw(key, hdr, with(claims, "aud", []string{"a", "b"})), "a", lore.ErrTokenAudience},
		{"expired", issue(newIssuer(t, key, "k1", at(-3*time.Minute)), "a"), "a", lore.ErrTokenExpired},
		{"expired within leeway", signRaw(key, hdr, with(claims, "exp", now.Add(-lore.TokenLeeway/2).Unix())), "a", nil},
		{"expired beyond leeway", signRaw(key, hdr, with(claims, "exp", now.Add(-lore.TokenLeeway-time.Second).Unix())), "a", lore.ErrTokenExpired},
		{"issued in the future", issue(newIssuer(t, key, "k1", at(time.Hour)), "a"), "a", lore.ErrTokenNotYetValid},
		{"iat within leeway", signRaw(key, hdr, with(claims, "iat", now.Add(lore.TokenLeeway/2).Unix())), "a", nil},
		{"nbf in the future", signRaw(key, hdr, with(claims, "nbf", now.Add(time.Hour).Unix())), "a", lore.ErrTokenNotYetValid},
		{"unknown kid", signRaw(key, with(hdr, "kid", "k9"), claims), "a", lore.ErrTokenUnknownKey},
		{"no kid", signRaw(key, with(hdr, "kid", nil), claims), "a", lore.ErrTokenUnknownKey},
		{"other key same kid", issue(newIssuer(t, other, "k1", nil), "a"), "a", lore.ErrTokenSignature},
		{"other key rotated kid", issue(newIssuer(t, key, "k0", nil), "a"), "a", lore.ErrTokenSignature},
		{"alg none", b64(with(hdr, "alg", "none")) + "." + b64(claims) + ".", "a", lore.ErrTokenAlgorithm},
		{"alg None", b64(with(hdr, "alg", "None")) + "." + b64(claims) + ".", "a", lore.ErrTokenAlgorithm},
		{"alg HS256 with public key", hs256(), "a", lore.ErrTokenAlgorithm},
		{"alg RS256", signRaw(key, with(hdr, "alg", "RS256"), claims), "a", lore.ErrTokenAlgorithm},
		{"alg Ed25519", signRaw(key, with(hdr, "alg", "Ed25519"), claims), "a", lore.ErrTokenAlgorithm},
		{"alg missing", signRaw(key, with(hdr, "alg", nil), claims), "a", lore.ErrTokenAlgorithm},
		{"tampered payload", parts[0] + "." + b64(with(claims, "sub", "r2")) + "." + parts[2], "a", lore.ErrTokenSignature},
		{"tampered audience", parts[0] + "." + b64(with(claims, "aud", "b")) + "." + parts[2], "b", lore.ErrTokenSignature},
		{"tampered signature", parts[0] + "." + parts[1] + "." + flip(parts[2], 5), "a", lore.ErrTokenSignature},
		{"truncated signature", parts[0] + "." + parts[1] + "." + parts[2][:40], "a", lore.ErrTokenSignature},
		{"empty signature", parts[0] + "." + parts[1] + ".", "a", lore.ErrTokenSignature},
		{"tampered header", b64(with(hdr, "typ", "XX")) + "." + parts[1] + "." + parts[2], "a", lore.ErrTokenSignature},
		{"empty", "", "a", lore.ErrTokenMalformed},
		{"one segment", "abc", "a", lore.ErrTokenMalformed},
		{"two segments", parts[0] + "." + parts[1], "a", lore.ErrTokenMalformed},
		{"four segments", good + ".x", "a", lore.ErrTokenMalformed},
		{"header not base64", "!!!." + parts[1] + "." + parts[2], "a", lore.ErrTokenMalformed},
		{"header padded", parts[0] + "=." + parts[1] + "." + parts[2], "a", lore.ErrTokenMalformed},
		{"header not JSON", b64("nope") + "." + parts[1] + "." + parts[2], "a", lore.ErrTokenMalformed},
		{"payload not JSON", signRaw(key, hdr, "nope"), "a", lore.ErrTokenMalformed},
		{"payload not base64", parts[0] + ".!!!." + parts[2], "a", lore.ErrTokenMalformed},
		{"signature not base64", parts[0] + "." + parts[1] + ".!!!", "a", lore.ErrTokenMalformed},
		{"exp a string", signRaw(key, hdr, with(claims, "exp", "tomorrow")), "a", lore.ErrTokenMalformed},
		{"no exp", signRaw(key, hdr, with(claims, "exp", nil)), "a", lore.ErrTokenMalformed},
		{"no sub", signRaw(key, hdr, with(claims, "sub", nil)), "a", lore.ErrTokenMalformed},
		{"no jti", signRaw(key, hdr, with(claims, "jti", nil)), "a", lore.ErrTokenMalformed},
		{"no iat", signRaw(key, hdr, with(claims, "iat", nil)), "a", lore.ErrTokenMalformed},
		{"aud a number", signRaw(key, hdr, with(claims, "aud", 7)), "a", lore.ErrTokenMalformed},
		{"aud empty array", signRaw(key, hdr, with(claims, "aud", []string{})), "a", lore.ErrTokenAudience},
		{"sub a number", signRaw(key, hdr, with(claims, "sub", 7)), "a", lore.ErrTokenMalformed},
		{"exp huge", signRaw(key, hdr, with(claims, "exp", 1e300)), "a", lore.ErrTokenMalformed},
		{"exp negative", signRaw(key, hdr, with(claims, "exp", -5)), "a", lore.ErrTokenMalformed},
		{"nbf a string", signRaw(key, hdr, with(claims, "nbf", "soon")), "a", lore.ErrTokenMalformed},
		{"fractional times", signRaw(key, hdr, with(claims, "exp", float64(now.Add(time.Minute).Unix())+0.5)), "a", nil},
		{"huge", strings.Repeat("a", 5000) + "." + parts[1] + "." + parts[2], "a", lore.ErrTokenMalformed},
	}
	sentinels := []error{lore.ErrTokenMalformed, lore.ErrTokenAlgorithm, lore.ErrTokenUnknownKey, lore.ErrTokenSignature,
		lore.ErrTokenExpired, lore.ErrTokenNotYetValid, lore.ErrTokenAudience}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ks.Verify(context.Background(), tt.token, tt.aud)
			if tt.want == nil {
				if err != nil {
					t.Fatalf("Verify: %v", err)
				}
				if c.Repl != "r1" || c.Cluster != "a" {
					t.Fatalf("claims %+v", c)
				}
				return
			}
			if !errors.Is(err, tt.want) {
				t.Fatalf("Verify = %+v, %v; want %v", c, err, tt.want)
			}
			n := 0
			for _, s := range sentinels {
				if errors.Is(err, s) {
					n++
				}
			}
			if n != 1 {
				t.Fatalf("error %v matches %d sentinels, want exactly 1", err, n)
			}
		})
	}
}

func TestKeySetRotation(t *testing.T) {
	oldIss := newIssuer(t, newKey(t), "old", nil)
	newIss := newIssuer(t, newKey(t), "new", nil)
	ks := lore.NewKeySet(oldIss.PublicKey())
	oldTok, _, _ := oldIss.Issue("a", "r")
	newTok, _, _ := newIss.Issue("a", "r")
	ctx := context.Background()
	if _, err := ks.Verify(ctx, newTok, "a"); !errors.Is(err, lore.ErrTokenUnknownKey) {
		t.Fatalf("before publish: %v", err)
	}
	ks.Add(newIss.PublicKey()) // overlap: both verify
	for _, tok := range []string{oldTok, newTok} {
		if _, err := ks.Verify(ctx, tok, "a"); err != nil {
			t.Fatalf("overlap: %v", err)
		}
	}
	ks.Remove("old")
	if _, err := ks.Verify(ctx, oldTok, "a"); !errors.Is(err, lore.ErrTokenUnknownKey) {
		t.Fatalf("after retire: %v", err)
	}
	if keys := ks.Keys(); len(keys) != 1 || keys[0].KeyID != "new" {
		t.Fatalf("keys %+v", keys)
	}
}

func TestJWKSRoundTrip(t *testing.T) {
	iss := newIssuer(t, newKey(t), "k1", nil)
	set := lore.NewJWKS([]lore.PublicKey{iss.PublicKey()})
	raw, _ := json.Marshal(set)
	var back lore.JWKS
	if err := json.Unmarshal(raw, &back); err != nil {
		t.Fatal(err)
	}
	back.Keys = append(back.Keys, lore.JWK{KeyType: "RSA", KeyID: "rsa"})
	keys, err := back.PublicKeys()
	if err != nil || len(keys) != 1 || keys[0].KeyID != "k1" || !keys[0].Key.Equal(iss.PublicKey().Key) {
		t.Fatalf("keys %+v %v", keys, err)
	}
	back.Keys = append(back.Keys, lore.JWK{KeyType: "OKP", Curve: "Ed25519", X: "short", KeyID: "bad"})
	if _, err := back.PublicKeys(); !errors.Is(err, lore.ErrInvalid) {
		t.Fatalf("bad key: %v", err)
	}
}
