// Package placement is switchyard's control plane: the VM registry and the repl→VM assignments.
package placement
