// Package lore is switchyard's global directory: clusters, repls and custom domains, and the
// signed connect tokens that tell a client where to connect.
package lore
