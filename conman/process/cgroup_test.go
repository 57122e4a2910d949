package process

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/stretchr/testify/require"

	"github.com/switchyard-dev/switchyard/conman"
)

// TestCgroupV2Layout drives the v2 code on a directory laid out like a cgroup2 mount (this
// machine has v1): which files are written with what, and what usage is read from.
func TestCgroupV2Layout(t *testing.T) {
	root := t.TempDir()
	write := func(rel, v string) {
		t.Helper()
		require.NoError(t, os.MkdirAll(filepath.Dir(filepath.Join(root, rel)), 0o755))
		require.NoError(t, os.WriteFile(filepath.Join(root, rel), []byte(v), 0o644))
	}
	read := func(rel string) string {
		t.Helper()
		b, err := os.ReadFile(filepath.Join(root, rel))
		require.NoError(t, err)
		return string(b)
	}
	write("cgroup.controllers", "cpuset cpu io memory pids")
	cgs, err := detectCgroups(root, "switchyard/vm1")
	require.NoError(t, err)
	require.True(t, cgs.V2)
	require.Equal(t, "cgroup v2 memory,cpu,pids", cgs.describe())
	for _, dir := range []string{"", "switchyard", "switchyard/vm1"} {
		require.Equal(t, "+memory +cpu +pids", read(filepath.Join(dir, "cgroup.subtree_control")))
	}
	g, err := cgs.create("r1", conman.Limits{MemoryBytes: 64 << 20, CPUMilli: 1500, Pids: 100})
	require.NoError(t, err)
	dir := "switchyard/vm1/r1"
	require.Equal(t, "67108864", read(dir+"/memory.max"))
	require.Equal(t, "0", read(dir+"/memory.swap.max"))
	require.Equal(t, "150000 100000", read(dir+"/cpu.max"))
	require.Equal(t, "112", read(dir+"/pids.max"), "the limit plus the init's headroom")
	require.NoError(t, g.add(4242))
	require.Equal(t, "4242", read(dir+"/cgroup.procs"))

	write(dir+"/memory.current", "1048576\n")
	write(dir+"/cpu.stat", "usage_usec 2500000\nuser_usec 2000000\n")
	write(dir+"/pids.current", "7\n")
	write(dir+"/memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n")
	u := g.usage()
	require.Equal(t, conman.Usage{CPU: 2500 * time.Millisecond, MemoryBytes: 1 << 20, Pids: 7}, u)
	require.Equal(t, int64(1), g.oomKills())
}

// TestCgroupV1Limits checks the limits written into this machine's v1 controllers.
func TestCgroupV1Limits(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root")
	}
	cgs, err := detectCgroups("/sys/fs/cgroup", "switchyard-test-process-v1")
	if err != nil || cgs.V2 {
		t.Skip("no cgroup v1 here")
	}
	g, err := cgs.create("lim1", conman.Limits{MemoryBytes: 48 << 20, CPUMilli: 250, Pids: 30})
	require.NoError(t, err)
	defer g.remove()
	read := func(ctl, file string) string {
		b, err := os.ReadFile(filepath.Join(g.dirs[ctl], file))
		require.NoError(t, err)
		return strings.TrimSpace(string(b))
	}
	require.Equal(t, "50331648", read("memory", "memory.limit_in_bytes"))
	require.Equal(t, "25000", read("cpu", "cpu.cfs_quota_us"))
	require.Equal(t, "100000", read("cpu", "cpu.cfs_period_us"))
	require.Equal(t, "42", read("pids", "pids.max"))
	require.Contains(t, cgs.describe(), "cgroup v1 memory,cpu")
}
