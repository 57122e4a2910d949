package process

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
)

// cgroups is the cgroup hierarchy the runtime puts containers in: v2 (one unified tree) when
// <root>/cgroup.controllers exists, else the v1 memory, cpu, cpuacct and pids controllers.
type cgroups struct {
	v2     bool
	root   string // /sys/fs/cgroup
	parent string // switchyard
	// v1: controller name → mount directory (deduplicated when co-mounted, e.g. cpu,cpuacct)
	v1 map[string]string
}

func detectCgroups(root, parent string) (*cgroups, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		c := &cgroups{v2: true, root: root, parent: parent}
		// Enable the controllers we need down to our parent.
		dir := root
		for _, part := range append([]string{""}, strings.Split(parent, "/")...) {
			if part != "" {
				dir = filepath.Join(dir, part)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return nil, err
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +cpu +pids"), 0); err != nil {
				return nil, fmt.Errorf("enable cgroup v2 controllers in %s: %w", dir, err)
			}
		}
		return c, nil
	}
	c := &cgroups{root: root, parent: parent, v1: make(map[string]string)}
	for _, ctl := range []string{"memory", "cpu", "cpuacct", "pids"} {
		dir := filepath.Join(root, ctl)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, parent), 0o755); err != nil {
			return nil, fmt.Errorf("cgroup v1 %s: %w", ctl, err)
		}
		c.v1[ctl] = dir
	}
	if len(c.v1) == 0 {
		return nil, errors.New("no cgroup v1 or v2 hierarchy found under " + root)
	}
	return c, nil
}

func (c *cgroups) describe() string {
	if c.v2 {
		return "cgroup v2 memory,cpu,pids"
	}
	var names []string
	for _, ctl := range []string{"memory", "cpu", "cpuacct", "pids"} {
		if _, ok := c.v1[ctl]; ok {
			names = append(names, ctl)
		}
	}
	return "cgroup v1 " + strings.Join(names, ",")
}

// cgroup is one container's cgroup: one directory (v2) or one per v1 controller.
type cgroup struct {
	v2   bool
	dirs map[string]string // v1 controller → dir; v2: "" → dir
}

func (c *cgroups) open(id string) *cgroup {
	g := &cgroup{v2: c.v2, dirs: make(map[string]string)}
	if c.v2 {
		g.dirs[""] = filepath.Join(c.root, c.parent, id)
		return g
	}
	for ctl, dir := range c.v1 {
		g.dirs[ctl] = filepath.Join(dir, c.parent, id)
	}
	return g
}

// create makes the container's cgroup with its limits.
func (c *cgroups) create(id string, l conman.Limits) (*cgroup, error) {
	g := c.open(id)
	for _, dir := range g.dirs {
		if err := os.MkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	w := func(ctl, file, v string) error {
		dir, ok := g.dirs[ctl]
		if !ok {
			return nil
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil {
			return fmt.Errorf("cgroup %s: %w", file, err)
		}
		return nil
	}
	var errs []error
	if g.v2 {
		if l.MemoryBytes > 0 {
			errs = append(errs, w("", "memory.max", strconv.FormatInt(l.MemoryBytes, 10)))
			_ = w("", "memory.swap.max", "0")
		}
		if l.CPUMilli > 0 {
			errs = append(errs, w("", "cpu.max", strconv.FormatInt(l.CPUMilli*100, 10)+" 100000"))
		}
		if l.Pids > 0 {
			errs = append(errs, w("", "pids.max", strconv.FormatInt(l.Pids+initPidsHeadroom, 10)))
		}
	} else {
		if l.MemoryBytes > 0 {
			errs = append(errs, w("memory", "memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)))
			_ = w("memory", "memory.memsw.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10))
		}
		if l.CPUMilli > 0 {
			errs = append(errs, w("cpu", "cpu.cfs_period_us", "100000"))
			errs = append(errs, w("cpu", "cpu.cfs_quota_us", strconv.FormatInt(l.CPUMilli*100, 10)))
		}
		if l.Pids > 0 {
			errs = append(errs, w("pids", "pids.max", strconv.FormatInt(l.Pids+initPidsHeadroom, 10)))
		}
	}
	if err := errors.Join(errs...); err != nil {
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

func readInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// keyed reads "key value" lines (memory.events, cpu.stat, memory.oom_control).
func keyed(path, key string) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), " ")
		if ok && k == key {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

func (g *cgroup) usage() conman.Usage {
	if g.v2 {
		d := g.dirs[""]
		return conman.Usage{
			CPU:         time.Duration(keyed(filepath.Join(d, "cpu.stat"), "usage_usec")) * time.Microsecond,
			MemoryBytes: readInt(filepath.Join(d, "memory.current")),
			Pids:        readInt(filepath.Join(d, "pids.current")),
		}
	}
	var u conman.Usage
	if d, ok := g.dirs["cpuacct"]; ok {
		u.CPU = time.Duration(readInt(filepath.Join(d, "cpuacct.usage")))
	}
	if d, ok := g.dirs["memory"]; ok {
		u.MemoryBytes = readInt(filepath.Join(d, "memory.usage_in_bytes"))
	}
	if d, ok := g.dirs["pids"]; ok {
		u.Pids = readInt(filepath.Join(d, "pids.current"))
	}
	return u
}

func (g *cgroup) oomKills() int64 {
	if g.v2 {
		return keyed(filepath.Join(g.dirs[""], "memory.events"), "oom_kill")
	}
	if d, ok := g.dirs["memory"]; ok {
		return keyed(filepath.Join(d, "memory.oom_control"), "oom_kill")
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
