//go:build !linux

package idlepark

import (
	"net"
	"time"
)

// Set holds parked connections; on this system it holds none (New returns nil).
type Set[T any] struct{}

// New returns nil on this system: connections keep their goroutines.
func New[T any](wake func(c net.Conn, v T), coldAfter time.Duration) *Set[T] { return nil }

// Park returns ErrNotParkable on this system.
func (s *Set[T]) Park(c net.Conn, timeout time.Duration, v T) error { return ErrNotParkable }

// Len returns 0.
func (s *Set[T]) Len() int { return 0 }

// Stats returns 0, 0.
func (s *Set[T]) Stats() (warm, cold int) { return 0, 0 }

// Drain does nothing.
func (s *Set[T]) Drain(f func(c net.Conn, v T)) {}

// Close does nothing.
func (s *Set[T]) Close() error { return nil }

// Detach is Linux-only: elsewhere it returns ErrNotParkable.
func Detach(net.Conn) (int, Rewrapper, error) { return -1, nil, ErrNotParkable }

// Attach is Linux-only: elsewhere it returns ErrNotParkable.
func Attach(int, Rewrapper) (net.Conn, error) { return nil, ErrNotParkable }

// ParkFD parks nothing on this system.
func (s *Set[T]) ParkFD(int, Rewrapper, time.Duration, T) error { return ErrNotParkable }
