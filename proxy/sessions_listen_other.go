//go:build !linux

package proxy

import (
	"context"
	"errors"
	"net"
)

// ListenReusePort is only supported on Linux; elsewhere it returns an error.
func ListenReusePort(ctx context.Context, network, addr string) (net.Listener, error) {
	return nil, errors.New("proxy: ListenReusePort needs Linux (SO_REUSEPORT with load balancing)")
}

// ReusePortMigration is Linux-only (net.ipv4.tcp_migrate_req); elsewhere it returns an error.
func ReusePortMigration() (bool, error) {
	return false, errors.New("proxy: ReusePortMigration needs Linux (net.ipv4.tcp_migrate_req)")
}

func sessionsFileLimit() (uint64, bool) { return 0, false }
