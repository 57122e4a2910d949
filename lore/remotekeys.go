package lore

import (
	"context"
	"crypto/ed25519"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"time"
)

// RemoteKeySetConfig configures NewRemoteKeySet.
type RemoteKeySetConfig struct {
	// URL is lore's JWKS endpoint, e.g. "http://127.0.0.1:8400/v1/keys". Required.
	URL string
	// HTTPClient fetches the keys. Nil means a client with a 10s timeout.
	HTTPClient *http.Client
	// MinRefresh is the least time between two fetches caused by unknown key IDs, so a stream
	// of tokens with made-up kids cannot turn into a stream of requests to lore. Zero means 10s.
	MinRefresh time.Duration
	// MaxAge is how long fetched keys are used before they are fetched again (on the next
	// Verify), so a retired key stops verifying. If the refetch fails the old keys stay in use
	// and the failure is logged. Zero means 5 minutes.
	MaxAge time.Duration
	// Now is the clock for MinRefresh and MaxAge (not for token expiry). Nil means time.Now.
	Now func() time.Time
	// Logger receives refresh failures that Verify does not return. Nil means slog.Default().
	Logger *slog.Logger
}

// RemoteKeySet verifies connect tokens against the keys lore publishes at GET /v1/keys, so a
// sessions proxy verifies without calling lore per token. Keys are fetched on first use and
// cached; a token with an unknown kid triggers a refetch (at most once per MinRefresh), and keys
// older than MaxAge are refetched. Concurrent Verify calls share one fetch. It starts no
// goroutines; it is safe for concurrent use.
type RemoteKeySet struct {
	cfg    RemoteKeySetConfig
	cfgErr error

	fetchMu sync.Mutex // held while fetching: one fetch at a time

	mu        sync.RWMutex
	keys      map[string]ed25519.PublicKey
	fetched   time.Time // last successful fetch
	attempted time.Time // last fetch attempt
	lastErr   error     // of the last attempt
	now       func() time.Time
}

// NewRemoteKeySet returns a key set fetching from cfg.URL. A bad configuration is reported by
// every Verify (which then rejects).
func NewRemoteKeySet(cfg RemoteKeySetConfig) *RemoteKeySet {
	ks := &RemoteKeySet{cfg: cfg, now: cfg.Now}
	if ks.now == nil {
		ks.now = time.Now
	}
	if u, err := url.Parse(cfg.URL); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		ks.cfgErr = fmt.Errorf("%w: remote key set URL %q is not an absolute http(s) URL", ErrInvalid, cfg.URL)
	}
	if ks.cfg.HTTPClient == nil {
		ks.cfg.HTTPClient = &http.Client{Timeout: 10 * time.Second}
	}
	if ks.cfg.MinRefresh <= 0 {
		ks.cfg.MinRefresh = 10 * time.Second
	}
	if ks.cfg.MaxAge <= 0 {
		ks.cfg.MaxAge = 5 * time.Minute
	}
	if ks.cfg.Logger == nil {
		ks.cfg.Logger = slog.Default()
	}
	return ks
}

// Verify checks a token like KeySet.Verify, against the remote keys. Besides the ErrToken...
// errors it returns an error wrapping ErrUnavailable when no keys could ever be fetched.
func (ks *RemoteKeySet) Verify(ctx context.Context, token, audience string) (Claims, error) {
	if ks.cfgErr != nil {
		return Claims{}, ks.cfgErr
	}
	h, err := parseHeader(token)
	if err != nil {
		return Claims{}, err
	}
	key, ok, err := ks.key(ctx, h.Kid)
	if err != nil {
		return Claims{}, err
	}
	if !ok {
		return Claims{}, fmt.Errorf("%w: kid %q", ErrTokenUnknownKey, h.Kid)
	}
	return verifyWithKey(token, key, audience, time.Now())
}

// key returns the key for kid, fetching when the cache is empty or stale, or kid is unknown and
// the last attempt is older than MinRefresh.
func (ks *RemoteKeySet) key(ctx context.Context, kid string) (ed25519.PublicKey, bool, error) {
	ks.mu.RLock()
	k, ok := ks.keys[kid]
	fresh := !ks.fetched.IsZero() && ks.now().Sub(ks.fetched) < ks.cfg.MaxAge
	ks.mu.RUnlock()
	if ok && fresh {
		return k, true, nil
	}
	if err := ks.refresh(ctx, ok); err != nil {
		return nil, false, err
	}
	ks.mu.RLock()
	k, ok = ks.keys[kid]
	ks.mu.RUnlock()
	return k, ok, nil
}

// refresh fetches the keys unless another call just did. known says the caller's kid is already
// cached (so only staleness drives this fetch).
func (ks *RemoteKeySet) refresh(ctx context.Context, known bool) error {
	ks.fetchMu.Lock()
	defer ks.fetchMu.Unlock()
	ks.mu.RLock()
	have := ks.keys != nil
	stale := ks.now().Sub(ks.fetched) >= ks.cfg.MaxAge
	recent := ks.now().Sub(ks.attempted) < ks.cfg.MinRefresh
	ks.mu.RUnlock()
	switch {
	case known && !stale:
		return nil // someone refreshed while we waited
	case have && recent:
		return nil // rate limit: use what we have
	case recent:
		return fmt.Errorf("%w: fetching keys: %w (retrying after %s)", ErrUnavailable, ks.lastErr, ks.cfg.MinRefresh)
	}
	keys, err := ks.fetch(ctx)
	ks.mu.Lock()
	defer ks.mu.Unlock()
	ks.attempted = ks.now()
	ks.lastErr = err
	if err != nil {
		if have {
			ks.cfg.Logger.Warn("lore: refreshing remote keys failed; keeping cached keys", "url", ks.cfg.URL, "err", err)
			return nil
		}
		return fmt.Errorf("%w: fetching keys: %w", ErrUnavailable, err)
	}
	ks.keys = keys
	ks.fetched = ks.attempted
	return nil
}

func (ks *RemoteKeySet) fetch(ctx context.Context) (map[string]ed25519.PublicKey, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, ks.cfg.URL, nil)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Accept", "application/jwk-set+json, application/json")
	resp, err := ks.cfg.HTTPClient.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET %s: %s", ks.cfg.URL, resp.Status)
	}
	var set JWKS
	if err := json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&set); err != nil {
		return nil, fmt.Errorf("GET %s: decoding JWKS: %w", ks.cfg.URL, err)
	}
	pks, err := set.PublicKeys()
	if err != nil {
		return nil, err
	}
	keys := make(map[string]ed25519.PublicKey, len(pks))
	for _, k := range pks {
		keys[k.KeyID] = k.Key
	}
	return keys, nil
}
