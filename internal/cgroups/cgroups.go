// Package cgroups is what conman/process and conman/oci share of Linux cgroups: finding the
// hierarchy (v2, or the v1 memory, cpu, cpuacct and pids controllers), each container's
// directories under a parent of the runtime's, its limits, and its usage.
package cgroups

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

// v1Controllers are the v1 controllers the runtimes use.
var v1Controllers = []string{"memory", "cpu", "cpuacct", "pids"}

// Hierarchy is where a runtime's containers' cgroups live: <Root>/<Parent>/<id> on v2,
// <controller mount>/<Parent>/<id> for each v1 controller.
type Hierarchy struct {
	V2     bool
	Root   string            // e.g. /sys/fs/cgroup
	Parent string            // relative to each hierarchy
	V1     map[string]string // v1: controller → its mount directory (co-mounted ones kept apart)
}

// Detect finds the hierarchy under root (v2 when root/cgroup.controllers exists) and makes
// parent in it: on v2 with the memory, cpu and pids controllers enabled down to it, on v1 in each
// controller found. It fails when it finds no hierarchy.
func Detect(root, parent string) (*Hierarchy, error) {
	if _, err := os.Stat(filepath.Join(root, "cgroup.controllers")); err == nil {
		h := &Hierarchy{V2: true, Root: root, Parent: parent}
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
		return h, nil
	}
	h := &Hierarchy{Root: root, Parent: parent, V1: make(map[string]string)}
	for _, ctl := range v1Controllers {
		dir := filepath.Join(root, ctl)
		if _, err := os.Stat(filepath.Join(dir, "cgroup.procs")); err != nil {
			continue
		}
		if err := os.MkdirAll(filepath.Join(dir, parent), 0o755); err != nil {
			return nil, fmt.Errorf("cgroup v1 %s: %w", ctl, err)
		}
		h.V1[ctl] = dir
	}
	if len(h.V1) == 0 {
		return nil, errors.New("no cgroup v1 or v2 hierarchy found under " + root)
	}
	return h, nil
}

// Describe names the hierarchy and its controllers: "cgroup v2 memory,cpu,pids" or
// "cgroup v1 memory,cpu,cpuacct,pids".
func (h *Hierarchy) Describe() string {
	if h.V2 {
		return "cgroup v2 memory,cpu,pids"
	}
	var names []string
	for _, ctl := range v1Controllers {
		if _, ok := h.V1[ctl]; ok {
			names = append(names, ctl)
		}
	}
	return "cgroup v1 " + strings.Join(names, ",")
}

// Dirs returns container id's cgroup directories by controller ("" on v2).
func (h *Hierarchy) Dirs(id string) map[string]string {
	if h.V2 {
		return map[string]string{"": filepath.Join(h.Root, h.Parent, id)}
	}
	m := make(map[string]string, len(h.V1))
	for ctl, dir := range h.V1 {
		m[ctl] = filepath.Join(dir, h.Parent, id)
	}
	return m
}

// SetLimits makes dirs (from Dirs) and writes l into them; zero fields are unlimited. pids.max
// is l.Pids plus pidsHeadroom (the runtime's own processes in the cgroup). Swap is capped with
// memory where the kernel accounts it (a failed write there is ignored). A controller the
// hierarchy lacks is skipped.
func SetLimits(v2 bool, dirs map[string]string, l conman.Limits, pidsHeadroom int64) error {
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("cgroup: %w", err)
		}
	}
	var errs []error
	w := func(ctl, file, v string, optional bool) {
		dir, ok := dirs[ctl]
		if !ok {
			return
		}
		if err := os.WriteFile(filepath.Join(dir, file), []byte(v), 0); err != nil && !optional {
			errs = append(errs, fmt.Errorf("cgroup %s: %w", file, err))
		}
	}
	mem, pids := strconv.FormatInt(l.MemoryBytes, 10), strconv.FormatInt(l.Pids+pidsHeadroom, 10)
	quota := strconv.FormatInt(l.CPUMilli*100, 10) // of a 100 ms period
	if v2 {
		if l.MemoryBytes > 0 {
			w("", "memory.max", mem, false)
			w("", "memory.swap.max", "0", true)
		}
		if l.CPUMilli > 0 {
			w("", "cpu.max", quota+" 100000", false)
		}
		if l.Pids > 0 {
			w("", "pids.max", pids, false)
		}
		return errors.Join(errs...)
	}
	if l.MemoryBytes > 0 {
		w("memory", "memory.limit_in_bytes", mem, false)
		w("memory", "memory.memsw.limit_in_bytes", mem, true)
	}
	if l.CPUMilli > 0 {
		w("cpu", "cpu.cfs_period_us", "100000", false)
		w("cpu", "cpu.cfs_quota_us", quota, false)
	}
	if l.Pids > 0 {
		w("pids", "pids.max", pids, false)
	}
	return errors.Join(errs...)
}

// Usage reads the resource use recorded in dirs (from Dirs); a controller the hierarchy lacks
// reads as zero.
func Usage(v2 bool, dirs map[string]string) conman.Usage {
	if v2 {
		d := dirs[""]
		return conman.Usage{
			CPU:         time.Duration(Keyed(filepath.Join(d, "cpu.stat"), "usage_usec")) * time.Microsecond,
			MemoryBytes: ReadInt(filepath.Join(d, "memory.current")),
			Pids:        ReadInt(filepath.Join(d, "pids.current")),
		}
	}
	var u conman.Usage
	if d, ok := dirs["cpuacct"]; ok {
		u.CPU = time.Duration(ReadInt(filepath.Join(d, "cpuacct.usage")))
	}
	if d, ok := dirs["memory"]; ok {
		u.MemoryBytes = ReadInt(filepath.Join(d, "memory.usage_in_bytes"))
	}
	if d, ok := dirs["pids"]; ok {
		u.Pids = ReadInt(filepath.Join(d, "pids.current"))
	}
	return u
}

// OOMKills is the number of processes the memory limit killed in the cgroup at dir (the v2
// directory, or the v1 memory controller's).
func OOMKills(v2 bool, dir string) int64 {
	if v2 {
		return Keyed(filepath.Join(dir, "memory.events"), "oom_kill")
	}
	return Keyed(filepath.Join(dir, "memory.oom_control"), "oom_kill")
}

// ReadInt reads a file holding one integer; 0 if it cannot.
func ReadInt(path string) int64 {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0
	}
	n, _ := strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
	return n
}

// Keyed reads key's value from a file of "key value" lines (memory.events, cpu.stat,
// memory.oom_control); 0 if it cannot.
func Keyed(path, key string) int64 {
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
