package process_test

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/switchyard-dev/switchyard/conman"
	"github.com/switchyard-dev/switchyard/conman/process"
)

// The runtime's life cycle: create, start, exec, stop, remove. (Isolation None so that the
// example runs anywhere; as root the default Auto gives the container its own namespaces.)
func Example() {
	ctx := context.Background()
	dir, _ := os.MkdirTemp("", "process-example")
	defer os.RemoveAll(dir)
	rt, err := process.New(process.Config{StateDir: dir, Isolation: process.None})
	if err != nil {
		fmt.Println(err)
		return
	}
	defer rt.Close()

	_ = rt.Create(ctx, "demo", conman.Spec{Port: 20080, Env: []string{"GREETING=hello"}})
	if err := rt.Start(ctx, "demo"); err != nil {
		fmt.Println(err)
		return
	}
	p, err := rt.Exec(ctx, "demo", conman.ExecOptions{Args: []string{"/bin/sh", "-c", "echo $GREETING on port $PORT"}})
	if err != nil {
		fmt.Println(err)
		return
	}
	out, _ := io.ReadAll(p.Stdout())
	code, _ := p.Wait(ctx)
	p.Close()
	fmt.Printf("%s exit %d\n", out[:len(out)-1], code)

	_ = rt.Stop(ctx, "demo", 5*time.Second)
	st, _ := rt.Inspect(ctx, "demo")
	fmt.Println(st.State, st.ExitCode, st.Isolated)
	_ = rt.Remove(ctx, "demo")
	// Output:
	// hello on port 20080 exit 0
	// exited 143 false
}
