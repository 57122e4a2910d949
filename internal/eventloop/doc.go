// Package eventloop relays established WebSocket sessions between two sockets on event loops
// that bypass the Go runtime's netpoller: each loop is one goroutine with an epoll set of its
// own, which it waits on and reads and writes the sockets in with raw system calls, so a small
// message costs one read and one write and wakes nothing else in the runtime.
//
// A loop handles only the steady state of a session: small writes from the client, whole frames
// of at most MaxFrame bytes from the backend. At anything else it hands the session back, for
// good, to its caller in a state the caller resumes from exactly (Handback): bulk data, a frame
// the Frames function stops at, EOF or an error, a write that would block, a hand-back request.
//
// A loop keeps its P (the Go scheduler's processor) while it waits, so that waking costs no
// scheduler hand-off. Two things keep that safe for the rest of the program:
//   - A Budget shared by every Group of a process lets a loop start only while it leaves at least
//     one P to everything else, and a loop gives its sessions back and stops when GOMAXPROCS falls
//     to the number of loops holding Ps.
//   - The wait is bounded (Config.Wait, 20 ms by default) and the loop yields to the scheduler at
//     least that often, so a stop-the-world (a garbage collection, a GOMAXPROCS change) never
//     waits longer than that for it, even with asynchronous preemption off.
//
// The package is Linux-only; elsewhere New returns nil and sessions stay with their goroutines.
package eventloop
