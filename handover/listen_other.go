//go:build !linux

package handover

import (
	"context"
	"errors"
	"net"
)

// ListenReusePort is only supported on Linux; elsewhere it returns an error.
func ListenReusePort(ctx context.Context, network, addr string) (net.Listener, error) {
	return nil, errors.New("handover: ListenReusePort needs Linux (SO_REUSEPORT with load balancing)")
}

// ReusePortMigration is Linux-only (net.ipv4.tcp_migrate_req); elsewhere it returns an error.
func ReusePortMigration() (bool, error) {
	return false, errors.New("handover: ReusePortMigration needs Linux (net.ipv4.tcp_migrate_req)")
}
