package main

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"sync"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/oci"
	"github.com/switchyard-dev/switchyard/conman/process"
	"github.com/switchyard-dev/switchyard/internal/runscbin"
)

// newRuntime makes one VM's container runtime: conman/process's sandbox, or conman/oci over
// runc or runsc with the platform's base image.
func newRuntime(kind, isolation, stateDir, platformState, cgroup string, log *slog.Logger) (conman.Runtime, error) {
	switch kind {
	case "", RuntimeProcess:
		return process.New(process.Config{
			StateDir: stateDir, Isolation: process.Isolation(isolation), CgroupParent: cgroup, Logger: log,
		})
	case RuntimeRunc, RuntimeRunsc:
		root, err := baseImage(platformState)
		if err != nil {
			return nil, err
		}
		cfg := oci.Config{Binary: kind, StateDir: stateDir, Rootfs: root, CgroupParent: cgroup, Logger: log}
		if kind == RuntimeRunsc {
			cfg.Binary = runscBinary()
		}
		return oci.New(cfg)
	}
	return nil, fmt.Errorf("unknown runtime %q", kind)
}

// runscBinary is the runsc the repls run on: $RUNSC, else the gVisor build .ci/run makes
// (internal/runscbin), else runsc on the PATH. conman/oci needs a gVisor from 2026 on: Debian
// 12's runsc is refused.
func runscBinary() string {
	if p, err := runscbin.Path(); err == nil {
		return p
	}
	return "runsc"
}

var baseImageMu sync.Mutex

// baseImage builds, once per state directory, the root file system repls run on with runc and
// runsc: busybox (the shell and its tools) and the libraries of this binary, which is the demo
// app (bound into every repl at demoAppPath). There is no registry to pull an image from here.
func baseImage(platformState string) (string, error) {
	baseImageMu.Lock()
	defer baseImageMu.Unlock()
	root := filepath.Join(platformState, "images", "base")
	if _, err := os.Stat(filepath.Join(root, "bin", "sh")); err == nil {
		return root, nil
	}
	busybox, err := exec.LookPath("busybox")
	if err != nil {
		return "", errors.New("runc and runsc need busybox for the repls' base image (apt-get install busybox-static)")
	}
	exe, err := os.Executable()
	if err != nil {
		return "", err
	}
	tmp := root + ".tmp"
	_ = os.RemoveAll(tmp)
	if err := oci.BusyboxRootfs(tmp, busybox); err != nil {
		return "", err
	}
	if err := oci.AddLibraries(tmp, exe); err != nil {
		return "", err
	}
	if err := os.MkdirAll(filepath.Dir(root), 0o755); err != nil {
		return "", err
	}
	if err := os.Rename(tmp, root); err != nil {
		return "", err
	}
	return root, nil
}
