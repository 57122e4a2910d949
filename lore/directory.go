package lore

import (
	"context"
	"crypto/rand"
	"encoding/base32"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// ErrUnavailable means the directory cannot do what was asked right now: no healthy cluster to
// place a repl in, no token issuer configured, the DNS resolver failing while verifying a
// domain, or a closed store. The HTTP API answers 503.
var ErrUnavailable = errors.New("lore: unavailable")

// ClusterPolicy chooses the cluster for a new repl whose create request names none. candidates
// holds every known cluster, healthy or not, with its repl count, ordered by ID. It returns the
// chosen cluster's ID, or an error (wrap ErrUnavailable when no cluster fits).
type ClusterPolicy func(ctx context.Context, r Repl, candidates []ClusterLoad) (string, error)

// LeastRepls is the default ClusterPolicy: the healthy cluster holding the fewest repls, the
// lowest ID on a tie.
func LeastRepls(_ context.Context, _ Repl, candidates []ClusterLoad) (string, error) {
	best := -1
	for i, c := range candidates {
		if c.Cluster.Healthy && (best < 0 || c.Repls < candidates[best].Repls) {
			best = i
		}
	}
	if best < 0 {
		return "", fmt.Errorf("%w: no healthy cluster", ErrUnavailable)
	}
	return candidates[best].Cluster.ID, nil
}

// TXTResolver looks up TXT records; *net.Resolver satisfies it.
type TXTResolver interface {
	LookupTXT(ctx context.Context, name string) ([]string, error)
}

// Config configures a Directory.
type Config struct {
	// Zone is the platform zone repls are named under, e.g. "repl.test". Required.
	Zone string
	// Store holds the state. Nil means a new MemStore with default settings.
	Store Store
	// Issuer signs connect tokens. Nil means Connect fails with ErrUnavailable.
	Issuer *Issuer
	// PublishedKeys are published in the JWKS besides the issuer's own key: the previous key
	// during a rotation, or the next one before it signs. Nil means only the issuer's key.
	PublishedKeys []PublicKey
	// ClusterPolicy picks the cluster of a repl created without one. Nil means LeastRepls.
	ClusterPolicy ClusterPolicy
	// Resolver checks custom-domain TXT records. Nil means net.DefaultResolver.
	Resolver TXTResolver
	// Rand is the source of repl IDs and domain challenges. Nil means crypto/rand.
	Rand io.Reader
	// Now is the clock for creation times. Nil means time.Now.
	Now func() time.Time
	// Logger receives the directory's log lines. Nil means slog.Default().
	Logger *slog.Logger
	// Registerer receives the directory's metrics (see the package documentation). Nil means
	// no metrics.
	Registerer prometheus.Registerer
}

// Directory is lore's directory in process: it validates and normalizes names, generates IDs,
// chooses clusters, verifies custom domains and issues connect tokens over a Store.
// *Directory and *Client have the same lookup and mutation methods. All methods are safe for
// concurrent use.
type Directory struct {
	zone      string
	store     Store
	ownStore  *MemStore
	issuer    *Issuer
	keys      []PublicKey
	ownerKeys *KeySet // keys, to verify owner tokens
	policy    ClusterPolicy
	resolver  TXTResolver
	rand      io.Reader
	now       func() time.Time
	log       *slog.Logger
	m         *dirMetrics
	version   atomic.Uint64 // successful writes through this Directory
}

// Version counts the writes made through this Directory: it changes, before the write
// returns, whenever an answer derived from the directory may have changed (a cache of answers,
// such as dnsauth.PacketServer.Version, drops what it holds). Writes made by another process
// to a shared store are not counted: follow those with the store's watch or a mirror's
// revision.
func (d *Directory) Version() uint64 { return d.version.Load() }

type dirMetrics struct {
	writes *prometheus.CounterVec
	tokens prometheus.Counter
}

// New returns a Directory for cfg.
func New(cfg Config) (*Directory, error) {
	zone := lower(strings.TrimSuffix(cfg.Zone, "."))
	if err := checkLabels(zone); err != nil {
		return nil, fmt.Errorf("zone: %w", err)
	}
	d := &Directory{
		zone: zone, store: cfg.Store, issuer: cfg.Issuer, policy: cfg.ClusterPolicy,
		resolver: cfg.Resolver, rand: cfg.Rand, now: cfg.Now, log: cfg.Logger,
	}
	if d.store == nil {
		ms, err := NewMemStore(MemStoreConfig{})
		if err != nil {
			return nil, err
		}
		d.store, d.ownStore = ms, ms
	}
	if d.policy == nil {
		d.policy = LeastRepls
	}
	if d.resolver == nil {
		d.resolver = net.DefaultResolver
	}
	if d.rand == nil {
		d.rand = rand.Reader
	}
	if d.now == nil {
		d.now = time.Now
	}
	if d.log == nil {
		d.log = slog.Default()
	}
	if d.issuer != nil {
		d.keys = append(d.keys, d.issuer.PublicKey())
	}
	for _, k := range cfg.PublishedKeys {
		if len(k.Key) != 32 || k.KeyID == "" {
			return nil, fmt.Errorf("%w: published key %q is not an Ed25519 public key with an ID", ErrInvalid, k.KeyID)
		}
		d.keys = append(d.keys, k)
	}
	d.ownerKeys = NewKeySet(d.keys...)
	if cfg.Registerer != nil {
		m := &dirMetrics{
			writes: prometheus.NewCounterVec(prometheus.CounterOpts{
				Namespace: "lore", Name: "writes_total",
				Help: "Directory writes by operation and result (ok, invalid, not_found, exists, error).",
			}, []string{"op", "result"}),
			tokens: prometheus.NewCounter(prometheus.CounterOpts{
				Namespace: "lore", Name: "tokens_issued_total", Help: "Connect tokens issued.",
			}),
		}
		for _, c := range []prometheus.Collector{m.writes, m.tokens} {
			if err := cfg.Registerer.Register(c); err != nil {
				return nil, fmt.Errorf("lore: registering metrics: %w", err)
			}
		}
		d.m = m
	}
	return d, nil
}

// checkLabels checks every label of a dotted name.
func checkLabels(name string) error {
	if name == "" {
		return fmt.Errorf("%w: empty name", ErrInvalid)
	}
	for _, l := range strings.Split(name, ".") {
		if err := checkLabel(l); err != nil {
			return err
		}
	}
	return nil
}

// Close closes the store if the Directory created it (Config.Store nil), which closes every
// watch channel. A store passed in Config is the caller's to close.
func (d *Directory) Close() error {
	if d.ownStore != nil {
		return d.ownStore.Close()
	}
	return nil
}

// Zone returns the platform zone, lowercase, without a trailing dot.
func (d *Directory) Zone() string { return d.zone }

// Store returns the directory's store.
func (d *Directory) Store() Store { return d.store }

// Keys returns the public keys the directory publishes (GET /v1/keys): the issuer's first.
func (d *Directory) Keys() []PublicKey { return append([]PublicKey(nil), d.keys...) }

func (d *Directory) count(op string, err error) {
	if err == nil {
		d.version.Add(1)
	}
	if d.m == nil {
		return
	}
	res := "ok"
	switch {
	case err == nil:
	case errors.Is(err, ErrInvalid):
		res = "invalid"
	case errors.Is(err, ErrNotFound):
		res = "not_found"
	case errors.Is(err, ErrExists):
		res = "exists"
	default:
		res = "error"
	}
	d.m.writes.WithLabelValues(op, res).Inc()
}

// Repl returns the repl with the given ID (any case).
func (d *Directory) Repl(ctx context.Context, id string) (Repl, error) {
	if err := checkLabel(id); err != nil {
		return Repl{}, fmt.Errorf("repl id: %w", err)
	}
	return d.store.Repl(ctx, lower(id))
}

// ReplByName returns the repl named <slug>.<owner> (any case). It does not allocate when the
// names are lowercase and the repl exists.
func (d *Directory) ReplByName(ctx context.Context, owner, slug string) (Repl, error) {
	if err := checkLabel(owner); err != nil {
		return Repl{}, fmt.Errorf("owner: %w", err)
	}
	if err := checkLabel(slug); err != nil {
		return Repl{}, fmt.Errorf("slug: %w", err)
	}
	return d.store.ReplByName(ctx, lower(owner), lower(slug))
}

// ReplByHost returns the repl a platform hostname names (see ParseHost), by ID or by name.
func (d *Directory) ReplByHost(ctx context.Context, host string) (Repl, error) {
	h, err := ParseHost(host, d.zone)
	if err != nil {
		return Repl{}, err
	}
	if h.ID != "" {
		return d.store.Repl(ctx, h.ID)
	}
	return d.store.ReplByName(ctx, h.Owner, h.Slug)
}

// ReplByDomain returns the repl a verified custom domain points at. An unknown or unverified
// domain is ErrNotFound.
func (d *Directory) ReplByDomain(ctx context.Context, domain string) (Repl, error) {
	name, err := NormalizeDomain(domain)
	if err != nil {
		return Repl{}, err
	}
	return d.store.ReplByDomain(ctx, name)
}

// Repls lists one page of repls ordered by owner then slug: those of q.Owner (every owner when
// empty), after the cursor q.After, at most q.Limit (zero: DefaultListLimit; above
// MaxListLimit: ErrInvalid). Pass the page's Next as the following query's After.
func (d *Directory) Repls(ctx context.Context, q ReplQuery) (ReplPage, error) {
	var err error
	if q, err = normalizeQuery(q); err != nil {
		return ReplPage{}, err
	}
	want := q.Limit
	q.Limit++ // one more tells whether there is a next page
	list, err := d.store.Repls(ctx, q)
	if err != nil {
		return ReplPage{}, err
	}
	page := ReplPage{Repls: list}
	if len(list) > want {
		page.Repls = list[:want]
		last := list[want-1]
		page.Next = last.Owner + "/" + last.Slug
	}
	return page, nil
}

func normalizeQuery(q ReplQuery) (ReplQuery, error) {
	if q.Owner != "" {
		if err := checkLabel(q.Owner); err != nil {
			return q, fmt.Errorf("owner: %w", err)
		}
		q.Owner = lower(q.Owner)
	}
	if q.After != "" {
		o, s, ok := strings.Cut(q.After, "/")
		if !ok || checkLabel(o) != nil || checkLabel(s) != nil {
			return q, fmt.Errorf("%w: cursor %q is not <owner>/<slug>", ErrInvalid, q.After)
		}
		q.After = lower(o) + "/" + lower(s)
	}
	switch {
	case q.Limit < 0 || q.Limit > MaxListLimit:
		return q, fmt.Errorf("%w: limit %d is not between 1 and %d", ErrInvalid, q.Limit, MaxListLimit)
	case q.Limit == 0:
		q.Limit = DefaultListLimit
	}
	return q, nil
}

// Cluster returns one cluster.
func (d *Directory) Cluster(ctx context.Context, id string) (Cluster, error) {
	if err := checkLabel(id); err != nil {
		return Cluster{}, fmt.Errorf("cluster id: %w", err)
	}
	return d.store.Cluster(ctx, lower(id))
}

// AppendHosting appends the hosting addresses of cluster id (any case) to v4 (Hosting4) and v6
// (Hosting6) and returns the extended slices: what a DNS server answers for a repl of that
// cluster, without copying the Cluster. It does not allocate when v4 and v6 have room and the
// store is a MemStore (other stores: a Cluster lookup).
func (d *Directory) AppendHosting(ctx context.Context, id string, v4, v6 []netip.Addr) ([]netip.Addr, []netip.Addr, error) {
	if err := checkLabel(id); err != nil {
		return v4, v6, fmt.Errorf("cluster id: %w", err)
	}
	if hs, ok := d.store.(hostingStore); ok {
		return hs.AppendHosting(ctx, lower(id), v4, v6)
	}
	c, err := d.store.Cluster(ctx, lower(id))
	if err != nil {
		return v4, v6, err
	}
	return append(v4, c.Hosting4...), append(v6, c.Hosting6...), nil
}

// Clusters returns every cluster, ordered by ID.
func (d *Directory) Clusters(ctx context.Context) ([]Cluster, error) { return d.store.Clusters(ctx) }

// Watch returns every change committed after the call, in commit order. The channel closes
// when ctx ends; if it closes while ctx is still live the watcher fell behind (or the store
// closed) and must re-read what it caches and call Watch again. See Store.Watch.
func (d *Directory) Watch(ctx context.Context) (<-chan Event, error) { return d.store.Watch(ctx) }

// Connect returns the Eval URL of the repl's cluster and a fresh token for it.
func (d *Directory) Connect(ctx context.Context, replID string) (ConnectInfo, error) {
	if d.issuer == nil {
		return ConnectInfo{}, fmt.Errorf("%w: no token issuer configured", ErrUnavailable)
	}
	r, err := d.Repl(ctx, replID)
	if err != nil {
		return ConnectInfo{}, err
	}
	c, err := d.store.Cluster(ctx, r.Cluster)
	if err != nil {
		return ConnectInfo{}, fmt.Errorf("repl %s: %w", r.ID, err)
	}
	tok, claims, err := d.issuer.Issue(c.ID, r.ID)
	if err != nil {
		return ConnectInfo{}, err
	}
	if d.m != nil {
		d.m.tokens.Inc()
	}
	return ConnectInfo{URL: c.EvalURL, Token: tok, ExpiresAt: claims.ExpiresAt}, nil
}

// maxIDAttempts bounds how often CreateRepl draws a new ID after a collision.
const maxIDAttempts = 5

// CreateRepl creates a repl. Owner and Slug are required DNS labels, not reserved (see
// Reserved), stored lowercase. An empty ID is generated; a given one must be a DNS label. An
// empty Cluster is chosen by the ClusterPolicy; a named one must exist. Created is set to now.
// The ID and the owner/slug pair are unique (ErrExists).
func (d *Directory) CreateRepl(ctx context.Context, r Repl) (out Repl, err error) {
	defer func() { d.count("create_repl", err) }()
	if r.Owner, err = NormalizeName("owner", r.Owner); err != nil {
		return Repl{}, err
	}
	if r.Slug, err = NormalizeName("slug", r.Slug); err != nil {
		return Repl{}, err
	}
	if r.Plan != "" {
		if err := checkLabel(r.Plan); err != nil {
			return Repl{}, fmt.Errorf("plan: %w", err)
		}
		r.Plan = lower(r.Plan)
	}
	if r.Cluster == "" {
		loads, err := d.store.ClusterLoads(ctx)
		if err != nil {
			return Repl{}, err
		}
		if r.Cluster, err = d.policy(ctx, r, loads); err != nil {
			return Repl{}, err
		}
		if checkLabel(r.Cluster) != nil {
			return Repl{}, fmt.Errorf("%w: the cluster policy chose %q, not a cluster ID", ErrUnavailable, r.Cluster)
		}
	} else if err := checkLabel(r.Cluster); err != nil {
		return Repl{}, fmt.Errorf("cluster: %w", err)
	}
	r.Cluster = lower(r.Cluster)
	r.Created = d.now().UTC().Truncate(time.Microsecond)
	if r.ID != "" {
		if err := checkLabel(r.ID); err != nil {
			return Repl{}, fmt.Errorf("repl id: %w", err)
		}
		r.ID = lower(r.ID)
		if Reserved(r.ID) {
			return Repl{}, fmt.Errorf("%w: repl id %q is a reserved label", ErrInvalid, r.ID)
		}
		return d.store.CreateRepl(ctx, r)
	}
	for attempt := 0; ; attempt++ {
		if r.ID, err = newID(d.rand); err != nil {
			return Repl{}, err
		}
		out, err = d.store.CreateRepl(ctx, r)
		if err == nil || !errors.Is(err, ErrExists) || attempt == maxIDAttempts {
			return out, err
		}
		// Distinguish an ID collision (draw again) from a taken name (report it).
		if _, nerr := d.store.ReplByName(ctx, r.Owner, r.Slug); nerr == nil {
			return Repl{}, err
		}
	}
}

// MoveRepl moves a repl to another cluster, which must exist, and publishes ReplMoved with the
// cluster it left (the tombstone of the old cluster is wired by its consumer). Moving a repl to
// its own cluster changes nothing.
func (d *Directory) MoveRepl(ctx context.Context, id, cluster string) (out Repl, err error) {
	defer func() { d.count("move_repl", err) }()
	if err := checkLabel(id); err != nil {
		return Repl{}, fmt.Errorf("repl id: %w", err)
	}
	if err := checkLabel(cluster); err != nil {
		return Repl{}, fmt.Errorf("cluster: %w", err)
	}
	out, _, err = d.store.MoveRepl(ctx, lower(id), lower(cluster))
	return out, err
}

// DeleteRepl deletes a repl and its custom domains.
func (d *Directory) DeleteRepl(ctx context.Context, id string) (err error) {
	defer func() { d.count("delete_repl", err) }()
	if err := checkLabel(id); err != nil {
		return fmt.Errorf("repl id: %w", err)
	}
	_, err = d.store.DeleteRepl(ctx, lower(id))
	return err
}

// PutCluster creates or replaces a cluster. ID must be a DNS label (stored lowercase); EvalURL
// an absolute ws, wss, http or https URL; HostingURL empty or an absolute http(s) URL; Hosting4
// only IPv4 and Hosting6 only IPv6 addresses, valid and unzoned.
func (d *Directory) PutCluster(ctx context.Context, c Cluster) (out Cluster, err error) {
	defer func() { d.count("put_cluster", err) }()
	if err := checkLabel(c.ID); err != nil {
		return Cluster{}, fmt.Errorf("cluster id: %w", err)
	}
	c.ID = lower(c.ID)
	if err := checkURL("eval_url", c.EvalURL, "ws", "wss", "http", "https"); err != nil {
		return Cluster{}, err
	}
	if c.HostingURL != "" {
		if err := checkURL("hosting_url", c.HostingURL, "http", "https"); err != nil {
			return Cluster{}, err
		}
	}
	for _, a := range c.Hosting4 {
		if !a.IsValid() || !a.Is4() {
			return Cluster{}, fmt.Errorf("%w: hosting_v4 %v is not an IPv4 address", ErrInvalid, a)
		}
	}
	for _, a := range c.Hosting6 {
		if !a.IsValid() || !a.Is6() || a.Is4In6() || a.Zone() != "" {
			return Cluster{}, fmt.Errorf("%w: hosting_v6 %v is not an unzoned IPv6 address", ErrInvalid, a)
		}
	}
	return d.store.PutCluster(ctx, c)
}

func checkURL(what, s string, schemes ...string) error {
	u, err := url.Parse(s)
	if err != nil || u.Host == "" {
		return fmt.Errorf("%w: %s %q is not an absolute URL", ErrInvalid, what, s)
	}
	for _, sc := range schemes {
		if u.Scheme == sc {
			return nil
		}
	}
	return fmt.Errorf("%w: %s %q: scheme must be one of %s", ErrInvalid, what, s, strings.Join(schemes, ", "))
}

// Domain returns a custom domain, verified or not.
func (d *Directory) Domain(ctx context.Context, name string) (Domain, error) {
	n, err := NormalizeDomain(name)
	if err != nil {
		return Domain{}, err
	}
	return d.store.Domain(ctx, n)
}

// challengeEncoding makes challenges TXT- and URL-safe.
var challengeEncoding = base32.NewEncoding("abcdefghijklmnopqrstuvwxyz234567").WithPadding(base32.NoPadding)

// AddDomain registers a custom domain for a repl, unverified, with a fresh random challenge the
// owner must publish as a TXT record at _switchyard-challenge.<domain> (see ChallengeName)
// before VerifyDomain. The domain must not be the platform zone or under it (ErrInvalid), nor
// taken (ErrExists); the repl must exist (ErrNotFound).
func (d *Directory) AddDomain(ctx context.Context, domain, repl string) (out Domain, err error) {
	defer func() { d.count("add_domain", err) }()
	name, err := NormalizeDomain(domain)
	if err != nil {
		return Domain{}, err
	}
	if name == d.zone || strings.HasSuffix(name, "."+d.zone) {
		return Domain{}, fmt.Errorf("%w: domain %q is inside the platform zone %q", ErrInvalid, name, d.zone)
	}
	if err := checkLabel(repl); err != nil {
		return Domain{}, fmt.Errorf("repl id: %w", err)
	}
	var b [20]byte
	if _, err := io.ReadFull(d.rand, b[:]); err != nil {
		return Domain{}, fmt.Errorf("lore: reading random challenge: %w", err)
	}
	return d.store.CreateDomain(ctx, Domain{
		Name: name, Repl: lower(repl), Challenge: "switchyard-verify=" + challengeEncoding.EncodeToString(b[:]),
		Created: d.now().UTC().Truncate(time.Microsecond),
	})
}

// ChallengeName returns the name of the TXT record that proves ownership of domain.
func ChallengeName(domain string) string {
	return ChallengeLabel + "." + strings.TrimSuffix(domain, ".")
}

// VerifyDomain looks up the TXT records at _switchyard-challenge.<domain> through the
// configured resolver and marks the domain verified if one of them is its challenge. If none is,
// the error wraps ErrInvalid and the domain stays unverified; a resolver failure other than "no
// such name" wraps ErrUnavailable. Verifying a verified domain checks again and succeeds if the
// record is still there.
func (d *Directory) VerifyDomain(ctx context.Context, domain string) (out Domain, err error) {
	defer func() { d.count("verify_domain", err) }()
	dom, err := d.Domain(ctx, domain)
	if err != nil {
		return Domain{}, err
	}
	qname := ChallengeName(dom.Name)
	txts, err := d.resolver.LookupTXT(ctx, qname)
	if err != nil {
		var dnsErr *net.DNSError
		if errors.As(err, &dnsErr) && dnsErr.IsNotFound {
			return Domain{}, fmt.Errorf("%w: no TXT record at %s; publish %q there", ErrInvalid, qname, dom.Challenge)
		}
		return Domain{}, fmt.Errorf("%w: looking up TXT %s: %w", ErrUnavailable, qname, err)
	}
	for _, t := range txts {
		if strings.TrimSpace(t) == dom.Challenge {
			return d.store.VerifyDomain(ctx, dom.Name, dom.Challenge)
		}
	}
	return Domain{}, fmt.Errorf("%w: no TXT record at %s matches; publish %q there", ErrInvalid, qname, dom.Challenge)
}

// DeleteDomain removes a custom domain.
func (d *Directory) DeleteDomain(ctx context.Context, domain string) (err error) {
	defer func() { d.count("delete_domain", err) }()
	name, err := NormalizeDomain(domain)
	if err != nil {
		return err
	}
	_, err = d.store.DeleteDomain(ctx, name)
	return err
}
