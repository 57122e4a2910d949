// Command coredns is CoreDNS with the switchyard plugin, built the way CoreDNS documents for
// external plugins: a main that imports the plugin and lists it in the directives. It carries
// only the plugins it lists (bind, errors, log, prometheus, cache, switchyard), not CoreDNS's full set.
package main

import (
	"github.com/coredns/coredns/core/dnsserver"
	"github.com/coredns/coredns/coremain"
	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/metrics"

	_ "github.com/switchyard-dev/switchyard/coredns"
)

func init() {
	// The order is the order a query passes the plugins.
	dnsserver.Directives = []string{"bind", "errors", "log", "prometheus", "cache", "switchyard"}
}

func main() { coremain.Run() }
