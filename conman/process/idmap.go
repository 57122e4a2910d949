package process

import (
	"io/fs"
	"os"
	"path/filepath"
	"syscall"

	"github.com/switchyard-dev/switchyard/internal/idslots"
)

// The user-namespace layer: every sandboxed container of a root runtime maps its uids and gids
// 0-65535 to a range of the VM's own, a different range for each container on the host
// (Config.UIDBase + slot×65536, reserved host-wide by internal/idslots in Config.SlotDir), so a
// process that reaches the VM owns nothing of the VM's or of another repl's. An unprivileged
// runtime maps its own uid alone (bubblewrap's way).

const idRange = idslots.Range

// shiftOwner gives the tree at dir to the id range starting at base, keeping each file's id
// within its range (uid u becomes base + u mod 65536: a file of the VM's root becomes the
// container root's, one of another range keeps its place in the range). Symlinks are not
// followed. It runs only while the container is stopped, when its range changed.
func shiftOwner(dir string, base uint32) error {
	return filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		st, ok := fi.Sys().(*syscall.Stat_t)
		if !ok {
			return nil
		}
		uid, gid := base+st.Uid%idRange, base+st.Gid%idRange
		if st.Uid == uid && st.Gid == gid {
			return nil
		}
		return os.Lchown(path, int(uid), int(gid))
	})
}
