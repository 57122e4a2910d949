// Package runscbin finds the gVisor runsc the tests run: a pinned build of gVisor's Go branch
// that .ci/run makes from the Go module proxy (Debian's runsc, a 2022 gVisor, does not apply
// the OCI seccomp profile to processes exec'd into a sandbox, so the isolation suite fails on it).
package runscbin

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// Module is the gVisor module version .ci/run builds runsc from, and Name the file it installs
// in $(go env GOPATH)/bin. Change both here and in .ci/run together.
const (
	Module = "gvisor.dev/gvisor@v0.0.0-20260905035102-160fafc42237"
	Name   = "runsc-20260905"
)

// Path returns $RUNSC if set, else $(go env GOPATH)/bin/<Name>, else <Name> on the PATH.
func Path() (string, error) {
	if p := os.Getenv("RUNSC"); p != "" {
		return exec.LookPath(p)
	}
	if gopath, err := exec.Command("go", "env", "GOPATH").Output(); err == nil {
		if p, err := exec.LookPath(filepath.Join(strings.TrimSpace(string(gopath)), "bin", Name)); err == nil {
			return p, nil
		}
	}
	if p, err := exec.LookPath(Name); err == nil {
		return p, nil
	}
	return "", errors.New(Name + " is not installed: .ci/run builds it from " + Module)
}
