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
//	    }
//	}
//
// The server block's zones are the zones served. Lookups go to lore on every query, through a
// dnsauth.Cache that rides out lore outages for the stale duration.
//
// # Metrics
//
// None of its own: answers pass through CoreDNS's ResponseWriter, so CoreDNS's prometheus
// plugin counts them.
//
// Building CoreDNS with this plugin: add "switchyard:github.com/switchyard-dev/switchyard/coredns"
// to CoreDNS's plugin.cfg, or build a main that imports this package and lists "switchyard" in
// dnsserver.Directives (see cmd/coredns).
package switchyard

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/coredns/caddy"
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/plugin"
	"github.com/miekg/dns"

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
			default:
				return o, c.Errf("unknown property %q", prop)
			}
		}
	}
	if o.lore == "" {
		return o, c.Err("switchyard: lore URL is required")
	}
	return o, nil
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
	h, err := dnsauth.New(dnsauth.Config{Zones: zones, Directory: cache, TTL: o.ttl})
	if err != nil {
		return plugin.Error(Name, fmt.Errorf("%w", err))
	}
	cfg.AddPlugin(func(next plugin.Handler) plugin.Handler { return &Plugin{Next: next, Handler: h} })
	return nil
}
