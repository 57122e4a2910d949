//go:build !linux

package proxy

// spliceLoops is Linux-only (epoll); elsewhere SessionsConfig.EventLoops has no effect.
type spliceLoops struct{}

func newSpliceLoops(int, *sessionsMetrics) *spliceLoops { return nil }
func (*spliceLoops) relay(*sessionsSplice)              {}
func (*spliceLoops) wait()                              {}
