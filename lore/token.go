package lore

import (
	"context"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"
)

// DefaultTokenTTL is how long a connect token is valid when IssuerConfig.TTL is zero.
const DefaultTokenTTL = 2 * time.Minute

// TokenLeeway is the clock skew Verify tolerates between lore and the verifier, both for expiry
// and for a token issued in the future.
const TokenLeeway = 10 * time.Second

// maxTokenLength bounds what Verify will parse; real tokens are about 300 bytes.
const maxTokenLength = 4096

// Token errors. Every error from Verify wraps exactly one of them; any of them means "reject".
var (
	ErrTokenMalformed   = errors.New("lore: token malformed")
	ErrTokenAlgorithm   = errors.New("lore: token algorithm not accepted")
	ErrTokenUnknownKey  = errors.New("lore: token signed by an unknown key")
	ErrTokenSignature   = errors.New("lore: token signature invalid")
	ErrTokenExpired     = errors.New("lore: token expired")
	ErrTokenNotYetValid = errors.New("lore: token not yet valid")
	ErrTokenAudience    = errors.New("lore: token for another audience")
)

// PublicKey is one Ed25519 verification key and its key ID (the JWT "kid" header).
type PublicKey struct {
	KeyID string
	Key   ed25519.PublicKey
}

// KeyID returns the RFC 7638 JWK thumbprint of an Ed25519 public key (base64url SHA-256 of its
// canonical JWK), a stable key ID when none is configured.
func KeyID(pub ed25519.PublicKey) string {
	canon := `{"crv":"Ed25519","kty":"OKP","x":"` + base64.RawURLEncoding.EncodeToString(pub) + `"}`
	sum := sha256.Sum256([]byte(canon))
	return base64.RawURLEncoding.EncodeToString(sum[:])
}

// IssuerConfig configures NewIssuer.
type IssuerConfig struct {
	// Key signs tokens. Required.
	Key ed25519.PrivateKey
	// KeyID is the "kid" header of every token. Empty means KeyID(Key.Public()).
	KeyID string
	// TTL is how long tokens are valid. Zero means DefaultTokenTTL.
	TTL time.Duration
	// Now is the clock. Nil means time.Now.
	Now func() time.Time
}

// Issuer signs connect tokens: EdDSA (Ed25519) JWTs with a "kid" header and the claims
// aud (the cluster), sub (the repl), iat, exp and a random jti.
type Issuer struct {
	key ed25519.PrivateKey
	kid string
	ttl time.Duration
	now func() time.Time
}

// NewIssuer returns an Issuer for cfg.
func NewIssuer(cfg IssuerConfig) (*Issuer, error) {
	if len(cfg.Key) != ed25519.PrivateKeySize {
		return nil, fmt.Errorf("%w: issuer key is %d bytes, want an ed25519 private key of %d", ErrInvalid, len(cfg.Key), ed25519.PrivateKeySize)
	}
	if cfg.TTL < 0 {
		return nil, fmt.Errorf("%w: negative token TTL", ErrInvalid)
	}
	if cfg.TTL == 0 {
		cfg.TTL = DefaultTokenTTL
	}
	if cfg.KeyID == "" {
		cfg.KeyID = KeyID(cfg.Key.Public().(ed25519.PublicKey))
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	return &Issuer{key: cfg.Key, kid: cfg.KeyID, ttl: cfg.TTL, now: cfg.Now}, nil
}

// PublicKey returns the key that verifies this issuer's tokens.
func (i *Issuer) PublicKey() PublicKey {
	return PublicKey{KeyID: i.kid, Key: slices.Clone(i.key.Public().(ed25519.PublicKey))}
}

// TTL returns how long the issuer's tokens are valid.
func (i *Issuer) TTL() time.Duration { return i.ttl }

// Tokens are JWTs (RFC 7519) signed with Ed25519 (RFC 8037's "EdDSA"), made and checked with
// crypto/ed25519 directly: one algorithm, one claim set, so a JWT library would add only an
// interface to satisfy and a second parser.

// algEdDSA is the only "alg" a token may name.
const algEdDSA = "EdDSA"

// signedHeader is the JOSE header as signed.
type signedHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ"`
}

// tokenClaims is the JWT payload as signed: aud is a single string.
type tokenClaims struct {
	Audience  string `json:"aud"`
	Subject   string `json:"sub"`
	IssuedAt  int64  `json:"iat"`
	ExpiresAt int64  `json:"exp"`
	ID        string `json:"jti"`
}

// Issue signs a token that lets its holder connect to repl through cluster's sessions proxy.
func (i *Issuer) Issue(cluster, repl string) (string, Claims, error) {
	if cluster == "" || repl == "" {
		return "", Claims{}, fmt.Errorf("%w: token needs a cluster and a repl", ErrInvalid)
	}
	return i.issue(cluster, repl, i.ttl)
}

// issue signs a token for audience and subject (Claims.Cluster and Claims.Repl) valid for ttl.
func (i *Issuer) issue(cluster, repl string, ttl time.Duration) (string, Claims, error) {
	var jti [16]byte
	if _, err := rand.Read(jti[:]); err != nil {
		return "", Claims{}, fmt.Errorf("lore: token id: %w", err)
	}
	now := i.now().Truncate(time.Second)
	c := Claims{
		ID:        base64.RawURLEncoding.EncodeToString(jti[:]),
		Repl:      repl,
		Cluster:   cluster,
		IssuedAt:  now,
		ExpiresAt: now.Add(ttl),
	}
	head, err := json.Marshal(signedHeader{Alg: algEdDSA, Kid: i.kid, Typ: "JWT"})
	if err != nil {
		return "", Claims{}, fmt.Errorf("lore: token header: %w", err)
	}
	payload, err := json.Marshal(tokenClaims{
		Audience: cluster, Subject: repl, IssuedAt: now.Unix(), ExpiresAt: c.ExpiresAt.Unix(), ID: c.ID,
	})
	if err != nil {
		return "", Claims{}, fmt.Errorf("lore: token claims: %w", err)
	}
	signed := base64.RawURLEncoding.EncodeToString(head) + "." + base64.RawURLEncoding.EncodeToString(payload)
	sig := ed25519.Sign(i.key, []byte(signed))
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig), c, nil
}

// KeySet verifies connect tokens against a set of public keys, so keys can rotate with an
// overlap: publish the new key, start issuing with it, retire the old one after the token TTL.
// It is safe for concurrent use; Add and Remove change the set while Verify runs.
type KeySet struct {
	mu   sync.RWMutex
	keys map[string]ed25519.PublicKey
	now  func() time.Time
}

// NewKeySet returns a key set holding keys.
func NewKeySet(keys ...PublicKey) *KeySet {
	ks := &KeySet{keys: make(map[string]ed25519.PublicKey), now: time.Now}
	for _, k := range keys {
		ks.Add(k)
	}
	return ks
}

// Add adds (or replaces) a key. A key of the wrong size is ignored by Verify (it verifies
// nothing), so Add never fails.
func (ks *KeySet) Add(k PublicKey) {
	ks.mu.Lock()
	ks.keys[k.KeyID] = slices.Clone(k.Key)
	ks.mu.Unlock()
}

// Remove removes the key with the given ID.
func (ks *KeySet) Remove(keyID string) {
	ks.mu.Lock()
	delete(ks.keys, keyID)
	ks.mu.Unlock()
}

// Keys returns the keys, ordered by key ID.
func (ks *KeySet) Keys() []PublicKey {
	ks.mu.RLock()
	out := make([]PublicKey, 0, len(ks.keys))
	for id, k := range ks.keys {
		out = append(out, PublicKey{KeyID: id, Key: slices.Clone(k)})
	}
	ks.mu.RUnlock()
	slices.SortFunc(out, func(a, b PublicKey) int { return compareStrings(a.KeyID, b.KeyID) })
	return out
}

func (ks *KeySet) key(kid string) (ed25519.PublicKey, bool) {
	ks.mu.RLock()
	k, ok := ks.keys[kid]
	ks.mu.RUnlock()
	return k, ok
}

// Verify checks token's signature against the set and its claims against audience (the
// verifying cluster's ID) and the clock, and returns its claims. Every error wraps one of the
// ErrToken... sentinels. ctx is unused (KeySet never does I/O); it is there so KeySet and
// RemoteKeySet satisfy the same interface.
func (ks *KeySet) Verify(_ context.Context, token, audience string) (Claims, error) {
	h, err := parseHeader(token)
	if err != nil {
		return Claims{}, err
	}
	key, ok := ks.key(h.Kid)
	if !ok {
		return Claims{}, fmt.Errorf("%w: kid %q", ErrTokenUnknownKey, h.Kid)
	}
	return verifyWithKey(token, key, audience, ks.now())
}

// tokenHeader is the part of a JWT header Verify looks at before the signature.
type tokenHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
}

// parseHeader decodes and checks a token's header: three segments, a JSON header, alg EdDSA
// exactly, a kid present.
func parseHeader(token string) (tokenHeader, error) {
	var h tokenHeader
	if len(token) > maxTokenLength {
		return h, fmt.Errorf("%w: longer than %d bytes", ErrTokenMalformed, maxTokenLength)
	}
	head, rest, ok := strings.Cut(token, ".")
	if !ok || strings.Count(rest, ".") != 1 {
		return h, fmt.Errorf("%w: want three dot-separated segments", ErrTokenMalformed)
	}
	raw, err := base64.RawURLEncoding.Strict().DecodeString(head)
	if err != nil {
		return h, fmt.Errorf("%w: header: %w", ErrTokenMalformed, err)
	}
	if err := json.Unmarshal(raw, &h); err != nil {
		return h, fmt.Errorf("%w: header: %w", ErrTokenMalformed, err)
	}
	if h.Alg != algEdDSA {
		return h, fmt.Errorf("%w: %q (only EdDSA)", ErrTokenAlgorithm, h.Alg)
	}
	if h.Kid == "" {
		return h, fmt.Errorf("%w: no kid header", ErrTokenUnknownKey)
	}
	return h, nil
}

// wireClaims is the JWT payload as Verify decodes it. aud may be a string or an array (RFC 7519);
// times are NumericDates (seconds, possibly fractional).
type wireClaims struct {
	Aud json.RawMessage `json:"aud"`
	Sub string          `json:"sub"`
	Jti string          `json:"jti"`
	Iat *float64        `json:"iat"`
	Exp *float64        `json:"exp"`
	Nbf *float64        `json:"nbf"`
}

// maxNumericDate bounds accepted NumericDates (year ~33658), so conversions cannot overflow.
const maxNumericDate = 1e12

func numericDate(f float64) (time.Time, bool) {
	if f < 0 || f > maxNumericDate {
		return time.Time{}, false
	}
	return time.Unix(int64(f), 0), true // whole seconds
}

func audiences(raw json.RawMessage) ([]string, error) {
	var one string
	if err := json.Unmarshal(raw, &one); err == nil {
		return []string{one}, nil
	}
	var many []string
	if err := json.Unmarshal(raw, &many); err != nil {
		return nil, err
	}
	return many, nil
}

var strictB64 = base64.RawURLEncoding.Strict()

// verifyWithKey checks the signature with key, then the claims, so each failure has its own
// error. The header was checked by parseHeader. It decodes the token once: Verify's cost stays
// close to the Ed25519 check itself (see docs/benchmarks/lore.md).
func verifyWithKey(token string, key ed25519.PublicKey, audience string, now time.Time) (Claims, error) {
	if len(key) != ed25519.PublicKeySize {
		return Claims{}, fmt.Errorf("%w: key has the wrong size", ErrTokenUnknownKey)
	}
	dot := strings.LastIndexByte(token, '.')
	signed, sig64 := token[:dot], token[dot+1:]
	payload64 := signed[strings.IndexByte(signed, '.')+1:]
	payload, err := strictB64.DecodeString(payload64)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: payload: %w", ErrTokenMalformed, err)
	}
	sig, err := strictB64.DecodeString(sig64)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: signature: %w", ErrTokenMalformed, err)
	}
	if !ed25519.Verify(key, []byte(signed), sig) {
		return Claims{}, ErrTokenSignature
	}
	var wc wireClaims
	if err := json.Unmarshal(payload, &wc); err != nil {
		return Claims{}, fmt.Errorf("%w: claims: %w", ErrTokenMalformed, err)
	}
	if wc.Sub == "" || wc.Jti == "" || wc.Iat == nil || wc.Exp == nil || len(wc.Aud) == 0 {
		return Claims{}, fmt.Errorf("%w: missing one of sub, jti, iat, exp, aud", ErrTokenMalformed)
	}
	iat, ok1 := numericDate(*wc.Iat)
	exp, ok2 := numericDate(*wc.Exp)
	if !ok1 || !ok2 {
		return Claims{}, fmt.Errorf("%w: iat or exp out of range", ErrTokenMalformed)
	}
	aud, err := audiences(wc.Aud)
	if err != nil {
		return Claims{}, fmt.Errorf("%w: aud is neither a string nor an array of strings", ErrTokenMalformed)
	}
	if len(aud) != 1 || aud[0] != audience || audience == "" {
		return Claims{}, fmt.Errorf("%w: token is for %q, this is %q", ErrTokenAudience, strings.Join(aud, ","), audience)
	}
	c := Claims{ID: wc.Jti, Repl: wc.Sub, Cluster: aud[0], IssuedAt: iat, ExpiresAt: exp}
	if !now.Before(c.ExpiresAt.Add(TokenLeeway)) {
		return Claims{}, fmt.Errorf("%w: at %s", ErrTokenExpired, c.ExpiresAt.UTC().Format(time.RFC3339))
	}
	if c.IssuedAt.After(now.Add(TokenLeeway)) {
		return Claims{}, fmt.Errorf("%w: issued at %s, in the future", ErrTokenNotYetValid, c.IssuedAt.UTC().Format(time.RFC3339))
	}
	if wc.Nbf != nil {
		nbf, ok := numericDate(*wc.Nbf)
		if !ok {
			return Claims{}, fmt.Errorf("%w: nbf out of range", ErrTokenMalformed)
		}
		if nbf.After(now.Add(TokenLeeway)) {
			return Claims{}, fmt.Errorf("%w: not before %s", ErrTokenNotYetValid, nbf.UTC().Format(time.RFC3339))
		}
	}
	return c, nil
}

// JWK is one key of a JSON Web Key Set as lore publishes it (RFC 8037 OKP keys).
type JWK struct {
	KeyType string `json:"kty"`
	Curve   string `json:"crv"`
	X       string `json:"x"`
	KeyID   string `json:"kid"`
	Alg     string `json:"alg,omitempty"`
	Use     string `json:"use,omitempty"`
}

// JWKS is a JSON Web Key Set, the body of GET /v1/keys.
type JWKS struct {
	Keys []JWK `json:"keys"`
}

// NewJWKS returns the JWKS publishing keys.
func NewJWKS(keys []PublicKey) JWKS {
	out := JWKS{Keys: make([]JWK, 0, len(keys))}
	for _, k := range keys {
		out.Keys = append(out.Keys, JWK{KeyType: "OKP", Curve: "Ed25519", X: base64.RawURLEncoding.EncodeToString(k.Key),
			KeyID: k.KeyID, Alg: "EdDSA", Use: "sig"})
	}
	return out
}

// PublicKeys returns the Ed25519 signing keys of the set. Keys of other types or uses are
// skipped; a malformed Ed25519 key is an error wrapping ErrInvalid.
func (s JWKS) PublicKeys() ([]PublicKey, error) {
	var out []PublicKey
	for _, k := range s.Keys {
		if k.KeyType != "OKP" || k.Curve != "Ed25519" || (k.Use != "" && k.Use != "sig") || (k.Alg != "" && k.Alg != "EdDSA") {
			continue
		}
		x, err := base64.RawURLEncoding.DecodeString(k.X)
		if err != nil || len(x) != ed25519.PublicKeySize {
			return nil, fmt.Errorf("%w: JWK %q: bad Ed25519 x", ErrInvalid, k.KeyID)
		}
		if k.KeyID == "" {
			return nil, fmt.Errorf("%w: JWK without kid", ErrInvalid)
		}
		out = append(out, PublicKey{KeyID: k.KeyID, Key: x})
	}
	return out, nil
}
