//go:build linux

package oci_test

import (
	"context"
	"log"
	"path/filepath"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/oci"
)

// A VM without a registry makes its base image once, from Debian's busybox-static, and runs
// repls on gVisor. With runc: Binary "runc" and no Args.
func Example() {
	state := "/var/lib/conman-oci"
	root, layout := filepath.Join(state, "base-rootfs"), filepath.Join(state, "layout")
	if err := oci.BusyboxRootfs(root, "/bin/busybox"); err != nil {
		log.Fatal(err)
	}
	if _, err := oci.WriteImage(layout, "base", root); err != nil {
		log.Fatal(err)
	}
	rt, err := oci.New(oci.Config{
		Binary:   "runsc",
		Args:     []string{"--platform=systrap"},
		StateDir: state,
		Image:    layout + "@base",
	})
	if err != nil {
		log.Fatal(err)
	}
	defer rt.Close() // the containers keep running; a new Runtime recovers them
	ctx := context.Background()
	spec := conman.Spec{Command: []string{"httpd", "-f", "-p", "127.0.0.1:8080"}, Port: 8080, Dir: "/home/repls/r1"}
	if err := rt.Create(ctx, "r1", spec); err != nil {
		log.Fatal(err)
	}
	if err := rt.Start(ctx, "r1"); err != nil {
		log.Fatal(err)
	}
	conn, err := rt.DialContainer(ctx, "r1", 8080) // the web port, inside the repl's network
	if err != nil {
		log.Fatal(err)
	}
	conn.Close()
}
