package dnsauth

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/lore"
)

// Directory is what the handler needs from lore. *lore.Directory (in-process) and *lore.Client
// (HTTP) satisfy it, and so does *Cache wrapped around either.
//
// Errors: an error matching lore.ErrNotFound means the name does not exist (NXDOMAIN); any other
// error is a directory failure and the handler answers SERVFAIL, never NXDOMAIN.
type Directory interface {
	// Repl returns the repl with the given ID (<id>.id.<zone>).
	Repl(ctx context.Context, id string) (lore.Repl, error)
	// ReplByName returns the repl named <slug>.<owner>.<zone>.
	ReplByName(ctx context.Context, owner, slug string) (lore.Repl, error)
	// Cluster returns a cluster, whose Hosting4 and Hosting6 addresses are the A and AAAA answers
	// for every repl that lives in it.
	Cluster(ctx context.Context, id string) (lore.Cluster, error)
}

// HostingDirectory is an optional interface of a Directory: one that has it answers A and AAAA
// by appending a cluster's Hosting4 and Hosting6 addresses to the handler's pooled buffers
// instead of returning a copied lore.Cluster, so the answer path does not allocate.
// *lore.Directory has it; the handler falls back to Cluster for a Directory without it.
type HostingDirectory interface {
	// AppendHosting appends the cluster's Hosting4 addresses to v4 and its Hosting6 addresses to
	// v6 and returns the extended slices. Errors as Directory.Cluster.
	AppendHosting(ctx context.Context, cluster string, v4, v6 []netip.Addr) ([]netip.Addr, []netip.Addr, error)
}

// Challenges is the store of ACME DNS-01 challenge values the handler serves as TXT records.
// *acmedns.MemStore satisfies it.
type Challenges interface {
	// TXT returns the unexpired values published at name (lowercase, without the trailing dot),
	// newest first. A name without values returns no values and no error.
	TXT(ctx context.Context, name string) ([]string, error)
}

// ErrConfig is wrapped by every error New returns for an invalid Config.
var ErrConfig = errors.New("dnsauth: invalid config")

// Config configures a Handler. Zones and Directory are required; every other zero value has the
// default its comment states.
type Config struct {
	// Zones are the zones the handler is authoritative for. Names outside all of them are
	// REFUSED. When zones nest, the longest match wins.
	Zones []Zone
	// Directory resolves repl names to clusters. Required.
	Directory Directory
	// Challenges serves ACME DNS-01 TXT values: for _acme-challenge.<name>.<zone> in zones without
	// an ACME delegation, and for every name of a zone marked ChallengeZone. Nil: no values are
	// served (those names answer NOERROR with no data).
	Challenges Challenges
	// TTL of A and AAAA answers for repl names. Zero: 60 s.
	TTL time.Duration
	// ChallengeTTL of TXT challenge answers and ACME delegation CNAMEs. Zero: 1 s (as acme-dns).
	ChallengeTTL time.Duration
	// Timeout bounds each directory and challenge lookup of a query. Zero: 2 s. The query context
	// allocates its timer only if the directory waits on Done, so an in-process directory costs
	// nothing.
	Timeout time.Duration
	// UDPSize is the EDNS0 UDP payload size the handler advertises and the largest UDP response
	// it sends (never more than the client's). Zero: 1232 (RFC 8906 / DNS flag day 2020).
	UDPSize uint16
	// Logger receives directory failures (the query answers SERVFAIL), at most one line a second
	// with the count of failures not logged. Nil: slog.Default().
	Logger *slog.Logger
	// Registerer receives the handler's metrics (see the package doc). Nil: no metrics. If it
	// holds them already (another Handler registered them, or the one a reload replaces), this
	// Handler counts into the same series.
	Registerer prometheus.Registerer
	// RRL limits the rate of UDP answers per client prefix and kind of answer (see RRL).
	// Nil: no limit.
	RRL *RRL
	// Cookies answers DNS cookies (RFC 7873 with RFC 9018 server cookies); a client that
	// returns a valid one is spared by RRL. Nil: cookie options are ignored.
	Cookies *Cookies
	// Write says how answers reach the ResponseWriter. The zero value, WriteAuto, packs the
	// answer in the handler's own buffer and writes the bytes to miekg/dns's own writers (no
	// allocation), and hands the *dns.Msg to WriteMsg of any other writer: a middleware that
	// wraps the writer (logging, metrics, CoreDNS) sees every answer.
	Write WriteMode
}

// WriteMode is how the Handler writes answers (Config.Write).
type WriteMode int

const (
	// WriteAuto writes bytes to miekg/dns's own ResponseWriter and messages to any other.
	WriteAuto WriteMode = iota
	// WriteBytes always packs the answer itself and calls Write.
	WriteBytes
	// WriteMessage always calls WriteMsg.
	WriteMessage
)

// Zone is one zone the handler serves.
type Zone struct {
	// Name is the zone apex, e.g. "repl.test" (any case, trailing dot optional). Required.
	Name string
	// NS are the zone's name servers, answered at the apex; a name server inside the zone gets
	// its Addrs as glue and as authoritative A/AAAA answers. Empty: no NS records (fine behind a
	// stub-zone or a forwarder; a delegated zone needs them).
	NS []NameServer
	// Hostmaster is the SOA RNAME as a mailbox or domain name. Empty: "hostmaster.<zone>".
	Hostmaster string
	// Serial is the SOA serial. Zero: the Unix time at New.
	Serial uint32
	// NegativeTTL is the SOA MINIMUM and TTL, so resolvers cache NXDOMAIN and NODATA for it
	// (RFC 2308). Zero: 60 s.
	NegativeTTL time.Duration
	// ChallengeZone marks a zone that holds only ACME challenge records, acme-dns style: every
	// <label>.<zone> answers TXT from Config.Challenges; there are no repl names. Use it for the
	// zone acmedns.HandlerConfig.Zone names.
	ChallengeZone bool
	// ACMETarget delegates ACME DNS-01 validation: _acme-challenge.<name>.<zone> answers a CNAME
	// to ACMETarget (e.g. an acme-dns account's fulldomain), for every name in the zone. Empty:
	// no delegation unless ACMEDelegate is set.
	ACMETarget string
	// ACMEDelegate, when set, picks the CNAME target per name: it receives <name>.<zone>
	// (lowercase, no trailing dot) and returns the target, or "" to fall back to ACMETarget and
	// then to the challenge store. An error answers SERVFAIL.
	ACMEDelegate func(ctx context.Context, name string) (string, error)
}

// NameServer is one NS record of a zone.
type NameServer struct {
	// Name is the name server's host name.
	Name string
	// Addrs are its addresses, served as glue when Name is inside the zone.
	Addrs []netip.Addr
}

// Handler is an authoritative dns.Handler for the platform's zones. It is safe for concurrent use.
type Handler struct {
	dir        Directory
	hosting    HostingDirectory // dir, when it has AppendHosting
	challenges Challenges
	zones      []*zone // longest name first
	ttl        uint32
	acmeTTL    uint32
	timeout    time.Duration
	udpSize    uint16
	log        *slog.Logger
	m          *metrics
	rrl        *rrlLimiter
	cookies    *Cookies
	write      WriteMode
	pool       sync.Pool
	lastLog    atomic.Int64 // UnixNano of the last logged directory failure
	suppressed atomic.Int64 // failures not logged since
}

// zone is a Zone with its records built once.
type zone struct {
	Zone
	fqdn    string // lowercase with the trailing dot
	soa     *dns.SOA
	ns      []dns.RR
	glue    []dns.RR
	hosts   map[string][]dns.RR // in-zone name server names (relative, lowercase) → A/AAAA records
	acmeTgt string              // fqdn of ACMETarget
}

// New returns a Handler for cfg, or an error wrapping ErrConfig.
func New(cfg Config) (*Handler, error) {
	if cfg.Directory == nil {
		return nil, fmt.Errorf("%w: Directory is required", ErrConfig)
	}
	if len(cfg.Zones) == 0 {
		return nil, fmt.Errorf("%w: at least one zone is required", ErrConfig)
	}
	h := &Handler{
		dir:        cfg.Directory,
		challenges: cfg.Challenges,
		ttl:        seconds(cfg.TTL, 60*time.Second),
		acmeTTL:    seconds(cfg.ChallengeTTL, time.Second),
		timeout:    cfg.Timeout,
		udpSize:    cfg.UDPSize,
		log:        cfg.Logger,
		cookies:    cfg.Cookies,
		write:      cfg.Write,
	}
	if cfg.RRL != nil {
		h.rrl = newRRL(*cfg.RRL)
	}
	if cfg.Cookies != nil && cfg.Cookies.Secret == ([16]byte{}) {
		return nil, fmt.Errorf("%w: Cookies.Secret is required", ErrConfig)
	}
	h.hosting, _ = cfg.Directory.(HostingDirectory)
	if h.timeout <= 0 {
		h.timeout = 2 * time.Second
	}
	if h.udpSize == 0 {
		h.udpSize = 1232
	}
	if h.udpSize < dns.MinMsgSize {
		return nil, fmt.Errorf("%w: UDPSize %d is below %d", ErrConfig, h.udpSize, dns.MinMsgSize)
	}
	if h.log == nil {
		h.log = slog.Default()
	}
	seen := map[string]bool{}
	for _, zc := range cfg.Zones {
		z, err := newZone(zc)
		if err != nil {
			return nil, err
		}
		if seen[z.fqdn] {
			return nil, fmt.Errorf("%w: zone %q listed twice", ErrConfig, zc.Name)
		}
		seen[z.fqdn] = true
		h.zones = append(h.zones, z)
	}
	sort.SliceStable(h.zones, func(i, j int) bool { return len(h.zones[i].fqdn) > len(h.zones[j].fqdn) })
	if cfg.Registerer != nil {
		m, err := newMetrics(cfg.Registerer)
		if err != nil {
			return nil, err
		}
		h.m = m
	}
	h.pool.New = func() any { return newAnswer() }
	return h, nil
}

func seconds(d, def time.Duration) uint32 {
	if d <= 0 {
		d = def
	}
	return uint32(d / time.Second)
}

func newZone(zc Zone) (*zone, error) {
	if zc.Name == "" {
		return nil, fmt.Errorf("%w: zone without a name", ErrConfig)
	}
	fq := dns.Fqdn(strings.ToLower(zc.Name))
	if fq == "." {
		return nil, fmt.Errorf("%w: the root zone is not supported", ErrConfig)
	}
	if _, ok := dns.IsDomainName(fq); !ok {
		return nil, fmt.Errorf("%w: zone name %q", ErrConfig, zc.Name)
	}
	z := &zone{Zone: zc, fqdn: fq, hosts: map[string][]dns.RR{}}
	neg := seconds(zc.NegativeTTL, 60*time.Second)
	serial := zc.Serial
	if serial == 0 {
		serial = uint32(time.Now().Unix())
	}
	mbox := "hostmaster." + fq
	if zc.Hostmaster != "" {
		mbox = dns.Fqdn(strings.ToLower(strings.Replace(zc.Hostmaster, "@", ".", 1)))
	}
	mname := fq
	for i, ns := range zc.NS {
		name := dns.Fqdn(strings.ToLower(ns.Name))
		if _, ok := dns.IsDomainName(name); !ok || ns.Name == "" {
			return nil, fmt.Errorf("%w: zone %s: name server %q", ErrConfig, zc.Name, ns.Name)
		}
		if i == 0 {
			mname = name
		}
		z.ns = append(z.ns, &dns.NS{Hdr: hdr(fq, dns.TypeNS, 3600), Ns: name})
		rel, inZone := relative(name, fq)
		if !inZone {
			continue
		}
		if rel == "" {
			return nil, fmt.Errorf("%w: zone %s: name server at the apex is not supported", ErrConfig, zc.Name)
		}
		for _, a := range ns.Addrs {
			var rr dns.RR
			switch {
			case a.Is4() || a.Is4In6():
				rr = &dns.A{Hdr: hdr(name, dns.TypeA, 3600), A: a.Unmap().AsSlice()}
			case a.Is6():
				rr = &dns.AAAA{Hdr: hdr(name, dns.TypeAAAA, 3600), AAAA: a.AsSlice()}
			default:
				return nil, fmt.Errorf("%w: zone %s: name server %s has an invalid address", ErrConfig, zc.Name, ns.Name)
			}
			z.glue = append(z.glue, rr)
			z.hosts[rel] = append(z.hosts[rel], rr)
		}
	}
	z.soa = &dns.SOA{
		Hdr: hdr(fq, dns.TypeSOA, neg), Ns: mname, Mbox: mbox, Serial: serial,
		Refresh: 3600, Retry: 600, Expire: 604800, Minttl: neg,
	}
	if zc.ACMETarget != "" {
		z.acmeTgt = dns.Fqdn(strings.ToLower(zc.ACMETarget))
		if _, ok := dns.IsDomainName(z.acmeTgt); !ok {
			return nil, fmt.Errorf("%w: zone %s: ACMETarget %q", ErrConfig, zc.Name, zc.ACMETarget)
		}
	}
	return z, nil
}

func hdr(name string, t uint16, ttl uint32) dns.RR_Header {
	return dns.RR_Header{Name: name, Rrtype: t, Class: dns.ClassINET, Ttl: ttl}
}

// relative returns name (lowercase fqdn) relative to the zone apex fq: "" at the apex, "a.b" for
// a.b.<zone>, and false when name is outside the zone. It does not allocate.
func relative(name, fq string) (string, bool) {
	if len(name) < len(fq) || name[len(name)-len(fq):] != fq {
		return "", false
	}
	if len(name) == len(fq) {
		return "", true
	}
	if name[len(name)-len(fq)-1] != '.' {
		return "", false
	}
	return name[:len(name)-len(fq)-1], true
}

// findZone returns the most specific zone holding name and name relative to it.
func (h *Handler) findZone(name string) (*zone, string) {
	for _, z := range h.zones {
		if rel, ok := relative(name, z.fqdn); ok {
			return z, rel
		}
	}
	return nil, ""
}
