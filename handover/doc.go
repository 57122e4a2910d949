// Package handover replaces a server process with a new one on the same address without a
// refused or dropped connection. Every server of the platform can use it, not only the proxies.
//
// A deploy starts the new process beside the old one, never after it:
//
//  1. The new process listens with ListenReusePort (SO_REUSEPORT) and signals readiness once it
//     returns: from then on the kernel queues connections for it, Accept or not.
//  2. The old process stops accepting with Server.Shutdown. Its listener closes; with
//     net.ipv4.tcp_migrate_req = 1 (ReusePortMigration reports it) the connections queued on
//     it move to the new listener. Every connection it had already accepted still gets its
//     request answered, with keep-alives off.
//  3. The old process drains what it still carries — sessions.Proxy.Shutdown keeps WebSocket
//     sessions for hours or days — and exits.
//
// Calling http.Server.Shutdown directly in step 2 loses connections: net/http closes, without an
// answer, a connection whose request it reads after Shutdown began, including one it accepted a
// moment before its listener closed. Without tcp_migrate_req, step 2 resets the few connections
// that reach the old listener's queue in the instant it closes; set the sysctl (it needs
// CAP_NET_ADMIN, per network namespace).
package handover
