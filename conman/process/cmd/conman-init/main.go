// Command conman-init is a standalone container init for conman/process, for deployments whose
// conman binary cannot call process.Init first thing in main: point process.Config.InitPath at
// it. It is also smaller than most embedding binaries, so containers start a little faster.
package main

import (
	"fmt"
	"os"

	"github.com/switchyard-dev/switchyard/conman/process"
)

func main() {
	process.Init() // does not return when started by the runtime
	fmt.Fprintln(os.Stderr, "conman-init: this program only runs as a container init of conman/process (Config.InitPath)")
	os.Exit(2)
}
