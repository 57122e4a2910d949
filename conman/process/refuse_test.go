package process

import (
	"context"
	"os"
	"strings"
	"syscall"
	"testing"

	"github.com/switchyard-dev/switchyard/conman"
)

// TestNoSilentFallback: where the kernel refuses the sandbox's namespaces (here: clone of a
// user namespace answers EPERM, as it does where unprivileged user namespaces are off), Start
// fails and says why; nothing runs unsandboxed unless Isolation None asked for it.
func TestNoSilentFallback(t *testing.T) {
	r, err := New(Config{StateDir: t.TempDir(), CgroupParent: "switchyard-test-process"})
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	var sawUserNS bool
	r.startProcess = func(name string, argv []string, attr *os.ProcAttr) (*os.Process, error) {
		if attr.Sys != nil && attr.Sys.Cloneflags&syscall.CLONE_NEWUSER != 0 {
			sawUserNS = true
			return nil, &os.SyscallError{Syscall: "clone", Err: syscall.EPERM}
		}
		return os.StartProcess(name, argv, attr)
	}
	ctx := context.Background()
	if err := r.Create(ctx, "refused", conman.Spec{}); err != nil {
		t.Fatal(err)
	}
	err = r.Start(ctx, "refused")
	if err == nil {
		t.Fatal("Start succeeded without the sandbox")
	}
	if !sawUserNS {
		t.Fatal("Start never asked for a user namespace")
	}
	for _, want := range []string{"sandbox", "operation not permitted", "Isolation None"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not say %q", err, want)
		}
	}
	st, err := r.Inspect(ctx, "refused")
	if err != nil {
		t.Fatal(err)
	}
	if st.State != conman.Created || st.Pid != 0 {
		t.Fatalf("after a refused start: %+v", st)
	}
	if err := r.Remove(ctx, "refused"); err != nil {
		t.Fatal(err)
	}
}
