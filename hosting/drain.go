package hosting

import "context"

// Upgraded returns the number of upgraded (WebSocket) connections Proxy is carrying.
func (h *Proxy) Upgraded() int { return h.drain.Upgraded() }

// Shutdown drains Proxy: new requests are answered 503 (with Connection: close), and it waits
// until every in-flight request and every upgraded connection has finished. http.Server.Shutdown
// does not wait for upgraded connections; call both (the server's first, so no request arrives
// unseen, or concurrently). When ctx ends first, Shutdown closes the remaining upgraded
// connections, waits (at most 5 s) for their handlers to return, and returns ctx.Err(); plain
// requests still running end with their server's Shutdown or Close. Calling Shutdown again
// waits again.
func (h *Proxy) Shutdown(ctx context.Context) error { return h.drain.Shutdown(ctx) }
