// Package h1 is the HTTP/1.1 fast path of the hosting proxy: a strict parser of request and
// response heads, a connection reader that can hand a connection to net/http at a request
// boundary, a pool of keep-alive connections to backends, and the body copiers (Content-Length,
// chunked, read-to-close; splice(2) for large bodies through net.TCPConn.ReadFrom).
//
// The parser accepts a strict subset of what net/http accepts and parses it the same way; for
// anything outside that subset it answers Handoff, and the caller gives the connection, with the
// bytes it has read, to net/http, which then serves or refuses it by its own rules. So a request
// the fast path serves is one net/http would have served identically, and a request net/http
// would refuse is never served by the fast path (FuzzParseRequest checks this).
package h1
