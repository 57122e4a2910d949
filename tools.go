//go:build tools

// This file pins the module's dependency set while packages are being built in parallel;
// it is compiled only with the "tools" build tag.
package switchyard

import (
	_ "github.com/coder/websocket"
	_ "github.com/creack/pty"
	_ "github.com/golang-jwt/jwt/v5"
	_ "github.com/hashicorp/go-memdb"
	_ "github.com/miekg/dns"
	_ "github.com/prometheus/client_golang/prometheus"
	_ "github.com/stretchr/testify/require"
	_ "go.uber.org/goleak"
)
