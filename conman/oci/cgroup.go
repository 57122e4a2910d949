//go:build linux

package oci

import (
	"bufio"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
)

// cgroups holds each container's limits in <parent>/<id>, a cgroup of ours: the runtime binary
// puts the container in <parent>/<id>/ctr below it. Limits, usage and the OOM-kill count live
// in ours, which outlives the runtime's cleanup, so an exit's OOM kill is still readable.
type cgroups struct {
	v2     bool
	root   string
	parent string
	v1     map[string]string // controller → its mount directory
}

func detectCgroups(root, parent string) (*cgroups, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		c := &cgroups{v2: true, root: root, parent: parent}
		dir := root
		for _, part := range append([]string{""}, strings.Split(parent, "/")...) {
			if part != "" {
				dir = filepath.Join(dir, part)
				if err := os.MkdirAll(dir, 0o755); err != nil {
					return nil, err
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "cgroup.subtree_control"), []byte("+memory +cpu +pids"), 0); err != nil {
				return nil, fmt.Errorf("enable controllers in %s: %w", dir, err)
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
			return nil, fmt.Errorf("v1 %s: %w", ctl, err)
		}
		c.v1[ctl] = dir
	}
	if c.v1["memory"] == "" || c.v1["pids"] == "" {
		return nil, errors.New("no cgroup v2, nor v1 memory and pids controllers, under " + root)
	}
	return c, nil
}

func (c *cgroups) version() string {
	if c.v2 {
		return "v2"
	}
	return "v1"
}

// dirs returns the container's cgroup directories by controller ("" for v2).
func (c *cgroups) dirs(id string) map[string]string {
	if c.v2 {
		return map[string]string{"": filepath.Join(c.root, c.parent, id)}
	}
	m := make(map[string]string, len(c.v1))
	for ctl, dir := range c.v1 {
		m[ctl] = filepath.Join(dir, c.parent, id)
	}
	return m
}

// create makes the container's cgroup with its limits (zero: unlimited).
func (c *cgroups) create(id string, l conman.Limits) error {
	type setting struct{ ctl, file, value string }
	var set []setting
	if c.v2 {
		set = append(set, setting{"", "cgroup.subtree_control", "+memory +cpu +pids"})
		if l.MemoryBytes > 0 {
			set = append(set, setting{"", "memory.max", strconv.FormatInt(l.MemoryBytes, 10)}, setting{"", "memory.swap.max", "0"})
		}
		if l.CPUMilli > 0 {
			set = append(set, setting{"", "cpu.max", strconv.FormatInt(l.CPUMilli*100, 10) + " 100000"})
		}
		if l.Pids > 0 {
			set = append(set, setting{"", "pids.max", strconv.FormatInt(l.Pids, 10)})
		}
	} else {
		if l.MemoryBytes > 0 {
			set = append(set, setting{"memory", "memory.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)})
			if _, err := os.Stat(filepath.Join(c.v1["memory"], "memory.memsw.limit_in_bytes")); err == nil {
				set = append(set, setting{"memory", "memory.memsw.limit_in_bytes", strconv.FormatInt(l.MemoryBytes, 10)})
			}
		}
		if l.CPUMilli > 0 && c.v1["cpu"] != "" {
			set = append(set, setting{"cpu", "cpu.cfs_period_us", "100000"}, setting{"cpu", "cpu.cfs_quota_us", strconv.FormatInt(l.CPUMilli*100, 10)})
		}
		if l.Pids > 0 {
			set = append(set, setting{"pids", "pids.max", strconv.FormatInt(l.Pids, 10)})
		}
	}
	dirs := c.dirs(id)
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("oci: cgroup: %w", err)
		}
	}
	for _, s := range set {
		if err := os.WriteFile(filepath.Join(dirs[s.ctl], s.file), []byte(s.value), 0); err != nil {
			return fmt.Errorf("oci: cgroup %s: %w", s.file, err)
		}
	}
	return nil
}

// usage reads the container's resource use and whether the memory limit killed a process.
func (c *cgroups) usage(id string) (conman.Usage, bool, error) {
	var u conman.Usage
	dirs := c.dirs(id)
	if c.v2 {
		d := dirs[""]
		if _, err := os.Stat(d); err != nil {
			return u, false, err
		}
		u.MemoryBytes = readInt(filepath.Join(d, "memory.current"))
		u.Pids = readInt(filepath.Join(d, "pids.current"))
		u.CPU = time.Duration(keyed(filepath.Join(d, "cpu.stat"), "usage_usec")) * time.Microsecond
		return u, keyed(filepath.Join(d, "memory.events"), "oom_kill")+keyed(filepath.Join(d, "ctr", "memory.events"), "oom_kill") > 0, nil
	}
	if _, err := os.Stat(dirs["memory"]); err != nil {
		return u, false, err
	}
	u.MemoryBytes = readInt(filepath.Join(dirs["memory"], "memory.usage_in_bytes"))
	u.Pids = readInt(filepath.Join(dirs["pids"], "pids.current"))
	if d, ok := dirs["cpuacct"]; ok {
		u.CPU = time.Duration(readInt(filepath.Join(d, "cpuacct.usage")))
	}
	// v1 counts a kill in the victim's cgroup: the runtime's, inside ours.
	oom := keyed(filepath.Join(dirs["memory"], "memory.oom_control"), "oom_kill") + keyed(filepath.Join(dirs["memory"], "ctr", "memory.oom_control"), "oom_kill")
	return u, oom > 0, nil
}

// remove deletes the container's cgroups (the runtime's, inside, first).
func (c *cgroups) remove(id string) error {
	var errs []error
	for _, d := range c.dirs(id) {
		for _, dir := range []string{filepath.Join(d, "ctr"), d} {
			if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func readInt(name string) int64 {
	b, err := os.ReadFile(name)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

func keyed(name, key string) int64 {
	f, err := os.Open(name)
	if err != nil {
		return 0
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		k, v, ok := strings.Cut(s.Text(), " ")
		if ok && k == key {
			n, _ := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}
