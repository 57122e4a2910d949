//go:build !linux

package sessions

// spliceLoops is Linux-only (epoll); elsewhere Config.EventLoops has no effect.
type spliceLoops struct{}

func newSpliceLoops(int, *LoopBudget, *proxyMetrics) *spliceLoops { return nil }
func (*spliceLoops) relay(*spliceRelay)                           {}
func (*spliceLoops) wait()                                        {}
