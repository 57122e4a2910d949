// Package hosting is the hosting proxy: an http.Handler that routes web traffic by Host to the
// repl that serves it.
//
// A Proxy maps a request's Host — <slug>.<owner>.<zone>, <id>.id.<zone>, or a verified custom
// domain — to the repl through a Directory (lore), asks a Placer (placement) for its VM, and
// reverse-proxies to the repl's web port through that VM's conman: WebSocket upgrades,
// streaming bodies and trailers included. Failures answer clearly: 404 for a host no repl
// serves, 502 with a request id (also in the log line) when the repl cannot start, 503 when the
// directory or placement is down.
//
// A Proxy is an http.Handler and can be served by any http.Server. Server serves it faster:
// it takes the common HTTP/1.1 requests on a fast path of its own (internal/h1: a strict
// parser, cached routes, pooled conman connections, spliced large bodies) and hands every other
// connection to net/http serving the same Proxy, so both paths behave alike. On Linux, between
// requests a keep-alive connection leaves its goroutine for one of the Server's event loops:
// epoll sets of their own, read only when a socket has bytes (Go's netpoller must try a read
// before it waits, and most of those tries fail), which also serve the commonest requests
// themselves and hand the rest back to a goroutine (ServerConfig.EventLoops). Connections idle
// longer are parked as bare descriptors (ServerConfig.ParkIdleAfter).
//
// A Proxy never binds a port. Put tombstone's Forwarder in front of it (Forwarder.Wrap) so that
// requests for repls that moved to another cluster are forwarded there, and call Proxy.Shutdown
// with http.Server.Shutdown: the server's does not wait for upgraded connections.
//
// HTTPS is the listener's business: serve the same handler on a TLS listener whose config comes
// from package autotls (owners' wildcards and verified custom domains, obtained on demand), and
// optionally answer plain HTTP with autotls.Redirect. The repl sees X-Forwarded-Proto: https,
// also when another cluster's tombstone forwarded the request over the internal plane.
package hosting
