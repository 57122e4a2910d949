// Package proxy holds switchyard's two data-plane proxies: Sessions, the WebSocket session proxy
// (Eval), and Hosting, the HTTP reverse proxy that routes by Host name.
package proxy
