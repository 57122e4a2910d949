// Package switchyard is a CoreDNS plugin that serves a switchyard platform zone with
// dnsauth, from a lore directory reached over lore's HTTP API: <slug>.<owner>.<zone> and
// <replid>.id.<zone> answer the hosting addresses of the repl's cluster, exactly as
// examples/platform's own DNS server does.
//
// # Configuration
//
//	repl.test {
//	    switchyard {
//	        lore http://127.0.0.1:8400      # lore's API (required)
//	        read_key_file /etc/switchyard/lore-read-key   # a read or admin key, mode 0600
//	        ns ns1.repl.test 192.0.2.53     # name servers of the zone (repeatable)
//	        ttl 60s                         # TTL of A and AAAA answers
//	        stale 1h                        # answer from the last good data while lore is down
//	        rrl 100                         # response-rate limiting: UDP answers a second per client prefix
//	        rrl_slip 2                      # every 2nd limited answer truncated (0: drop all)
//	        rrl_prefix_len 24 56            # how clients are grouped (IPv4, IPv6)
//	        rrl_prefix 10.0.0.0/8 0         # another rate for a prefix, 0 exempts (repeatable)
//	        rrl_table_size 100000           # counters kept
//	        cookies /etc/switchyard/cookie-secret  # DNS cookies; the file: 32 hex digits
//	    }
//	}
//
// The server block's zones are the zones served. Lookups go to lore on every query, through a
// dnsauth.Cache that rides out lore outages for the stale duration.
//
// Response-rate limiting (dnsauth.RRL) is off unless rrl is given; the other rrl_ properties
// need it. cookies answers DNS cookies (RFC 7873, RFC 9018): a client that returns a valid
// one is spared by RRL. Servers behind one address must share the secret; a second file is the
// previous secret, still accepted during a rotation. cookies without a file makes a random
// secret at each start.
//
// # Metrics
//
// Answers pass through CoreDNS's ResponseWriter, so CoreDNS's prometheus plugin counts them;
// dnsauth's own (switchyard_dnsauth_*: RRL's drops and slips, cookies, latency) go to the same
// registry, summed over the server blocks that use the plugin.
//
// Building CoreDNS with this plugin: add "switchyard:github.com/switchyard-dev/switchyard/coredns"
// to CoreDNS's plugin.cfg, or build a main that imports this package and lists "switchyard" in
// dnsserver.Directives (see cmd/coredns).
package switchyard

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/switchyard-dev/switchyard/dnsauth"
	"github.com/switchyard-dev/switchyard/lore"
)

// Name is the plugin's name in a Corefile.
const Name = "switchyard"

// init registers the plugin with CoreDNS: that is CoreDNS's contract for plugins (importing
// the package is how a CoreDNS build includes it).
func init() { plugin.Register(Name, setup) }

// Plugin is the CoreDNS handler: dnsauth answers every query of the server block's zones.
type Plugin struct {
	Next    plugin.Handler
	Handler *dnsauth.Handler
}

// Name implements plugin.Handler.
func (p *Plugin) Name() string { return Name }

// ServeDNS implements plugin.Handler: dnsauth writes every answer itself (through WriteMsg,
// so CoreDNS's log, metrics and cache plugins see it).
func (p *Plugin) ServeDNS(ctx context.Context, w dns.ResponseWriter, r *dns.Msg) (int, error) {
	p.Handler.ServeDNS(w, r)
	return dns.RcodeSuccess, nil
}

type options struct {
	lore, keyFile string
	ns            []dnsauth.NameServer
	ttl, stale    time.Duration
	rrl           *dnsauth.RRL
	rrlProps      []string // the rrl_ properties given, which need rrl
	slip, v4, v6  int
	prefixes      []dnsauth.PrefixRate
	tableSize     int
	cookies       *dnsauth.Cookies
}

func parse(c *caddy.Controller) (options, error) {
	o := options{stale: time.Hour}
	for c.Next() {
		if len(c.RemainingArgs()) != 0 {
			return o, c.ArgErr()
		}
		for c.NextBlock() {
			prop := c.Val()
			args := c.RemainingArgs()
			switch prop {
			case "lore":
				if len(args) != 1 {
					return o, c.ArgErr()
				}
				o.lore = args[0]
			case "read_key_file":
				if len(args) != 1 {
					return o, c.ArgErr()
				}
				o.keyFile = args[0]
			case "ns":
				if len(args) < 1 {
					return o, c.ArgErr()
				}
				ns := dnsauth.NameServer{Name: args[0]}
				for _, a := range args[1:] {
					ip, err := netip.ParseAddr(a)
					if err != nil {
						return o, c.Errf("ns %s: %v", args[0], err)
					}
					ns.Addrs = append(ns.Addrs, ip)
				}
				o.ns = append(o.ns, ns)
			case "ttl", "stale":
				if len(args) != 1 {
					return o, c.ArgErr()
				}
				d, err := time.ParseDuration(args[0])
				if err != nil || d <= 0 {
					return o, c.Errf("%s %q: want a positive duration", prop, args[0])
				}
				if prop == "ttl" {
					o.ttl = d
				} else {
					o.stale = d
				}
			case "rrl":
				if len(args) != 1 {
					return o, c.ArgErr()
				}
				n, err := positive(args[0])
				if err != nil {
					return o, c.Errf("rrl %q: %v", args[0], err)
				}
				o.rrl = &dnsauth.RRL{ResponsesPerSecond: n}
			case "rrl_slip", "rrl_prefix_len", "rrl_prefix", "rrl_table_size":
				if err := o.parseRRL(prop, args); err != nil {
					return o, c.Errf("%s %s: %v", prop, strings.Join(args, " "), err)
				}
				o.rrlProps = append(o.rrlProps, prop)
			case "cookies":
				if len(args) > 2 {
					return o, c.ArgErr()
				}
				ck, err := cookieSecrets(args)
				if err != nil {
					return o, c.Errf("cookies: %v", err)
				}
				o.cookies = ck
			default:
				return o, c.Errf("unknown property %q", prop)
			}
		}
	}
	if o.lore == "" {
		return o, c.Err("switchyard: lore URL is required")
	}
	if o.rrl == nil && len(o.rrlProps) > 0 {
		return o, c.Errf("%s without rrl (the rate that turns response-rate limiting on)", o.rrlProps[0])
	}
	if o.rrl != nil {
		o.rrl.Slip, o.rrl.IPv4PrefixLen, o.rrl.IPv6PrefixLen = o.slip, o.v4, o.v6
		o.rrl.Prefixes, o.rrl.MaxEntries = o.prefixes, o.tableSize
	}
	return o, nil
}

// parseRRL reads one rrl_ property into o (applied to o.rrl once the block is read, since rrl
// may come after them).
func (o *options) parseRRL(prop string, args []string) error {
	var err error
	switch prop {
	case "rrl_slip":
		if len(args) != 1 {
			return errors.New("want one number")
		}
		n, err := strconv.Atoi(args[0])
		if err != nil || n < 0 {
			return errors.New("want 0 (drop every limited answer) or more")
		}
		if n == 0 {
			n = -1 // dnsauth's "drop every one"
		}
		o.slip = n
	case "rrl_prefix_len":
		if len(args) != 2 {
			return errors.New("want an IPv4 and an IPv6 prefix length")
		}
		o.v4, err = strconv.Atoi(args[0])
		if err != nil || o.v4 < 1 || o.v4 > 32 {
			return errors.New("the IPv4 length must be 1 to 32")
		}
		o.v6, err = strconv.Atoi(args[1])
		if err != nil || o.v6 < 1 || o.v6 > 128 {
			return errors.New("the IPv6 length must be 1 to 128")
		}
	case "rrl_prefix":
		if len(args) != 2 {
			return errors.New("want a prefix and a rate")
		}
		p, err := netip.ParsePrefix(args[0])
		if err != nil {
			return err
		}
		n, err := strconv.Atoi(args[1])
		if err != nil || n < 0 {
			return errors.New("the rate must be 0 (exempt) or more")
		}
		o.prefixes = append(o.prefixes, dnsauth.PrefixRate{Prefix: p.Masked(), ResponsesPerSecond: n})
	case "rrl_table_size":
		if len(args) != 1 {
			return errors.New("want one number")
		}
		if o.tableSize, err = positive(args[0]); err != nil {
			return err
		}
	}
	return nil
}

func positive(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n <= 0 {
		return 0, errors.New("want a positive number")
	}
	return n, nil
}

// cookieSecrets reads the cookie secret and the previous one from files of 32 hex digits, or
// makes a random secret when no file is given.
func cookieSecrets(files []string) (*dnsauth.Cookies, error) {
	ck := &dnsauth.Cookies{}
	if len(files) == 0 {
		if _, err := rand.Read(ck.Secret[:]); err != nil {
			return nil, err
		}
		return ck, nil
	}
	for i, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			return nil, err
		}
		k, err := hex.DecodeString(strings.TrimSpace(string(b)))
		if err != nil || len(k) != 16 {
			return nil, fmt.Errorf("%s: want 32 hex digits (16 bytes)", f)
		}
		if i == 0 {
			copy(ck.Secret[:], k)
		} else {
			ck.Previous = new([16]byte)
			copy(ck.Previous[:], k)
		}
	}
	return ck, nil
}

func setup(c *caddy.Controller) error {
	o, err := parse(c)
	if err != nil {
		return plugin.Error(Name, err)
	}
	key := ""
	if o.keyFile != "" {
		b, err := os.ReadFile(o.keyFile)
		if err != nil {
			return plugin.Error(Name, err)
		}
		key = strings.TrimSpace(string(b))
	}
	cache, err := dnsauth.NewCache(dnsauth.CacheConfig{Directory: lore.NewClient(o.lore, key, nil), Stale: o.stale})
	if err != nil {
		return plugin.Error(Name, err)
	}
	cfg := dnsserver.GetConfig(c)
	var zones []dnsauth.Zone
	for _, z := range plugin.OriginsFromArgsOrServerBlock(nil, c.ServerBlockKeys) {
		zones = append(zones, dnsauth.Zone{Name: z, NS: o.ns})
	}
	h, err := dnsauth.New(dnsauth.Config{Zones: zones, Directory: cache, TTL: o.ttl, RRL: o.rrl, Cookies: o.cookies,
		// CoreDNS's prometheus plugin serves the default registry (its plugins register there).
		Registerer: prometheus.DefaultRegisterer})
	if err != nil {
		return plugin.Error(Name, fmt.Errorf("%w", err))
	}
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler { return &Plugin{Next: next, Handler: h} })
	return nil
}
