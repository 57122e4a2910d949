//go:build linux

package oci

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/internal/cgroups"
)

// cgroupSet holds each container's limits in <parent>/<id>, a cgroup of ours: the runtime binary
// puts the container in <parent>/<id>/ctr below it. Limits, usage and the OOM-kill count live
// in ours, which outlives the runtime's cleanup, so an exit's OOM kill is still readable.
type cgroupSet struct {
	*cgroups.Hierarchy
	parent string
}

func detectCgroups(root, parent string) (*cgroupSet, error) {
	h, err := cgroups.Detect(root, parent)
	if err != nil {
		return nil, err
	}
	if !h.V2 && (h.V1["memory"] == "" || h.V1["pids"] == "") {
		return nil, errors.New("no cgroup v2, nor v1 memory and pids controllers, under " + root)
	}
	return &cgroupSet{Hierarchy: h, parent: parent}, nil
}

func (c *cgroupSet) version() string {
	if c.V2 {
		return "v2"
	}
	return "v1"
}

// create makes the container's cgroup with its limits (zero: unlimited).
func (c *cgroupSet) create(id string, l conman.Limits) error {
	dirs := c.Dirs(id)
	if err := cgroups.SetLimits(c.V2, dirs, l, 0); err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	if c.V2 {
		// The runtime's cgroup (ctr) goes inside ours.
		if err := os.WriteFile(filepath.Join(dirs[""], "cgroup.subtree_control"), []byte("+memory +cpu +pids"), 0); err != nil {
			return fmt.Errorf("oci: cgroup: %w", err)
		}
	}
	return nil
}

// usage reads the container's resource use and whether the memory limit killed a process.
func (c *cgroupSet) usage(id string) (conman.Usage, bool, error) {
	dirs := c.Dirs(id)
	d := dirs[""]
	if !c.V2 {
		d = dirs["memory"]
	}
	if _, err := os.Stat(d); err != nil {
		return conman.Usage{}, false, err
	}
	// v1 counts a kill in the victim's cgroup: the runtime's, inside ours.
	oom := cgroups.OOMKills(c.V2, d) + cgroups.OOMKills(c.V2, filepath.Join(d, "ctr"))
	return cgroups.Usage(c.V2, dirs), oom > 0, nil
}

// remove deletes the container's cgroups (the runtime's, inside, first).
func (c *cgroupSet) remove(id string) error {
	var errs []error
	for _, d := range c.Dirs(id) {
		for _, dir := range []string{filepath.Join(d, "ctr"), d} {
			if err := os.Remove(dir); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}
