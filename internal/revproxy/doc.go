// Package revproxy holds the reverse-proxy helpers the hosting proxy and the tombstone
// forwarder share: the transport and buffer pool, forwarding headers, the stripping of the
// platform's internal headers, and the error page.
package revproxy
