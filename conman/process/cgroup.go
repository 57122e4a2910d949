package process

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	cgroupfs "github.com/switchyard-dev/switchyard/internal/cgroups"
)

// cgroups is the cgroup hierarchy the runtime puts containers in: v2 (one unified tree) when
// <root>/cgroup.controllers exists, else the v1 memory, cpu, cpuacct and pids controllers.
type cgroups struct {
	*cgroupfs.Hierarchy
}

func detectCgroups(root, parent string) (*cgroups, error) {
	h, err := cgroupfs.Detect(root, parent)
	if err != nil {
		return nil, err
	}
	return &cgroups{h}, nil
}

func (c *cgroups) describe() string { return c.Describe() }

// cgroup is one container's cgroup: one directory (v2) or one per v1 controller.
type cgroup struct {
	v2   bool
	dirs map[string]string // v1 controller → dir; v2: "" → dir
}

func (c *cgroups) open(id string) *cgroup {
	return &cgroup{v2: c.V2, dirs: c.Dirs(id)}
}

// create makes the container's cgroup with its limits.
func (c *cgroups) create(id string, l conman.Limits) (*cgroup, error) {
	g := c.open(id)
	if err := cgroupfs.SetLimits(g.v2, g.dirs, l, initPidsHeadroom); err != nil {
		g.remove()
		return nil, err
	}
	return g, nil
}

func (g *cgroup) add(pid int) error {
	for _, dir := range g.dirs {
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
			return fmt.Errorf("join cgroup %s: %w", dir, err)
		}
	}
	return nil
}

func (g *cgroup) usage() conman.Usage { return cgroupfs.Usage(g.v2, g.dirs) }

func (g *cgroup) oomKills() int64 {
	if g.v2 {
		return cgroupfs.OOMKills(true, g.dirs[""])
	}
	if d, ok := g.dirs["memory"]; ok {
		return cgroupfs.OOMKills(false, d)
	}
	return 0
}

func (g *cgroup) procsDir() string {
	if g.v2 {
		return g.dirs[""]
	}
	for _, ctl := range []string{"pids", "memory", "cpu", "cpuacct"} {
		if d, ok := g.dirs[ctl]; ok {
			return d
		}
	}
	return ""
}

// kill SIGKILLs every process left in the cgroup.
func (g *cgroup) kill() {
	d := g.procsDir()
	if d == "" {
		return
	}
	if g.v2 {
		if os.WriteFile(filepath.Join(d, "cgroup.kill"), []byte("1"), 0) == nil {
			return
		}
	}
	for range 10 {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil || len(strings.TrimSpace(string(b))) == 0 {
			return
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				_ = syscall.Kill(pid, syscall.SIGKILL)
			}
		}
	}
}

// remove deletes the cgroup directories, retrying briefly while exiting processes leave.
func (g *cgroup) remove() {
	for _, dir := range g.dirs {
		for i := 0; i < 50; i++ {
			err := os.Remove(dir)
			if err == nil || errors.Is(err, os.ErrNotExist) {
				break
			}
			time.Sleep(2 * time.Millisecond)
		}
	}
}
