//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	digest "github.com/opencontainers/go-digest"
	imagespec "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"

	"github.com/switchyard-dev/switchyard/conman"
)

// maxJSON bounds an image layout's index, manifest and config.
const maxJSON = 4 << 20

// rootfs returns the image root of spec: Spec.Rootfs, Spec.Image unpacked, or the Config's.
func (r *Runtime) rootfs(ctx context.Context, spec conman.Spec) (string, error) {
	dir, image := spec.Rootfs, spec.Image
	if dir == "" && image == "" {
		dir, image = r.cfg.Rootfs, r.cfg.Image
	}
	if dir == "" && image == "" {
		return "", fmt.Errorf("%w: no Rootfs or Image (in the Spec or the Config)", conman.ErrInvalid)
	}
	if dir != "" {
		if fi, err := os.Stat(dir); err != nil || !fi.IsDir() {
			return "", fmt.Errorf("%w: Rootfs %q is not a directory", conman.ErrInvalid, dir)
		}
		return dir, nil
	}
	return r.unpacked(ctx, image)
}

// unpacked returns the root file system of image ("<layout dir>[@<tag or digest>]"),
// unpacking it under StateDir/images once per manifest digest.
func (r *Runtime) unpacked(ctx context.Context, image string) (string, error) {
	layout, ref := image, ""
	if i := strings.LastIndexByte(image, '@'); i >= 0 && !strings.Contains(image[i:], "/") {
		layout, ref = image[:i], image[i+1:]
	}
	if !filepath.IsAbs(layout) {
		return "", fmt.Errorf("%w: Image %q: the layout path must be absolute", conman.ErrInvalid, image)
	}
	m, md, err := readManifest(layout, ref)
	if err != nil {
		return "", fmt.Errorf("%w: Image %q: %w", conman.ErrInvalid, image, err)
	}
	dest := filepath.Join(r.cfg.StateDir, "images", md.Encoded(), "rootfs")
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	r.imageMu.Lock()
	defer r.imageMu.Unlock()
	if _, err := os.Stat(dest); err == nil {
		return dest, nil
	}
	tmp, err := os.MkdirTemp(filepath.Join(r.cfg.StateDir, "images"), "unpack-")
	if err != nil {
		return "", fmt.Errorf("oci: unpack image: %w", err)
	}
	defer os.RemoveAll(tmp)
	if err := os.Chmod(tmp, 0o711); err != nil {
		return "", err
	}
	root := filepath.Join(tmp, "rootfs")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	for _, l := range m.Layers {
		if err := ctx.Err(); err != nil {
			return "", err
		}
		if err := applyLayer(layout, l, root); err != nil {
			return "", fmt.Errorf("oci: unpack image %q layer %s: %w", image, l.Digest, err)
		}
	}
	if err := os.Rename(tmp, filepath.Dir(dest)); err != nil {
		if _, serr := os.Stat(dest); serr == nil {
			return dest, nil // another Runtime over this StateDir unpacked it meanwhile
		}
		return "", fmt.Errorf("oci: unpack image: %w", err)
	}
	return dest, nil
}

// blobPath returns the path of a blob in a layout, refusing digests that are not sha256 hex.
func blobPath(layout string, d digest.Digest) (string, error) {
	if err := d.Validate(); err != nil || d.Algorithm() != digest.SHA256 {
		return "", fmt.Errorf("unsupported digest %q", d)
	}
	return filepath.Join(layout, "blobs", "sha256", d.Encoded()), nil
}

// readBlob reads a small blob and checks its digest.
func readBlob(layout string, d v1.Descriptor) ([]byte, error) {
	p, err := blobPath(layout, d.Digest)
	if err != nil {
		return nil, err
	}
	f, err := os.Open(p)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	b, err := io.ReadAll(io.LimitReader(f, maxJSON+1))
	if err != nil {
		return nil, err
	}
	if len(b) > maxJSON {
		return nil, fmt.Errorf("blob %s larger than %d bytes", d.Digest, maxJSON)
	}
	if digest.FromBytes(b) != d.Digest {
		return nil, fmt.Errorf("blob %s does not match its digest", d.Digest)
	}
	return b, nil
}

// readManifest finds the image manifest of ref (a tag in org.opencontainers.image.ref.name, a
// manifest digest, or empty for a layout holding one image) and returns it with its digest.
func readManifest(layout, ref string) (v1.Manifest, digest.Digest, error) {
	var m v1.Manifest
	b, err := os.ReadFile(filepath.Join(layout, "index.json"))
	if err != nil {
		return m, "", fmt.Errorf("not an OCI image layout: %w", err)
	}
	var idx v1.Index
	if err := json.Unmarshal(b, &idx); err != nil {
		return m, "", fmt.Errorf("index.json: %w", err)
	}
	var found []v1.Descriptor
	for _, d := range idx.Manifests {
		if d.MediaType != v1.MediaTypeImageManifest {
			continue
		}
		if ref == "" || string(d.Digest) == ref || d.Annotations[v1.AnnotationRefName] == ref {
			if !slices.ContainsFunc(found, func(f v1.Descriptor) bool { return f.Digest == d.Digest }) {
				found = append(found, d)
			}
		}
	}
	switch {
	case len(found) == 0:
		return m, "", fmt.Errorf("no image manifest %q in the layout", ref)
	case len(found) > 1:
		return m, "", fmt.Errorf("%d image manifests match %q: name one", len(found), ref)
	}
	b, err = readBlob(layout, found[0])
	if err != nil {
		return m, "", err
	}
	if err := json.Unmarshal(b, &m); err != nil {
		return m, "", fmt.Errorf("manifest: %w", err)
	}
	return m, found[0].Digest, nil
}

// applyLayer extracts one layer (tar, optionally gzip) onto root, applying whiteouts. Every
// path stays inside root (os.Root), device nodes are skipped, and the blob's digest is checked
// once read.
func applyLayer(layout string, d v1.Descriptor, root string) error {
	p, err := blobPath(layout, d.Digest)
	if err != nil {
		return err
	}
	f, err := os.Open(p)
	if err != nil {
		return err
	}
	defer f.Close()
	h := sha256.New()
	var in io.Reader = io.TeeReader(f, h)
	switch d.MediaType {
	case v1.MediaTypeImageLayerGzip, "application/vnd.docker.image.rootfs.diff.tar.gzip":
		gz, err := gzip.NewReader(in)
		if err != nil {
			return err
		}
		defer gz.Close()
		in = gz
	case v1.MediaTypeImageLayer:
	default:
		return fmt.Errorf("unsupported layer media type %q", d.MediaType)
	}
	rt, err := os.OpenRoot(root)
	if err != nil {
		return err
	}
	defer rt.Close()
	if err := extract(rt, tar.NewReader(in)); err != nil {
		return err
	}
	if _, err := io.Copy(io.Discard, f); err != nil { // the rest of the blob, for the digest
		return err
	}
	if hex.EncodeToString(h.Sum(nil)) != d.Digest.Encoded() {
		return errors.New("layer does not match its digest")
	}
	return nil
}

func extract(rt *os.Root, tr *tar.Reader) error {
	created := map[string]bool{} // paths this layer made, kept by an opaque whiteout
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		if slices.Contains(strings.Split(hdr.Name, "/"), "..") {
			return fmt.Errorf("entry %q leaves the root", hdr.Name)
		}
		name := path.Clean("/" + hdr.Name)
		rel := strings.TrimPrefix(name, "/")
		if rel == "" {
			continue
		}
		dir, base := path.Split(rel)
		if base == ".wh..wh..opq" {
			if err := clearDir(rt, strings.TrimSuffix(dir, "/"), created); err != nil {
				return err
			}
			continue
		}
		if victim, ok := strings.CutPrefix(base, ".wh."); ok {
			if err := rt.RemoveAll(path.Join(dir, victim)); err != nil {
				return err
			}
			continue
		}
		if dir != "" {
			if err := rt.MkdirAll(strings.TrimSuffix(dir, "/"), 0o755); err != nil {
				return err
			}
		}
		if hdr.Typeflag != tar.TypeDir {
			if err := rt.RemoveAll(rel); err != nil {
				return err
			}
		}
		mode := fs.FileMode(hdr.Mode).Perm() | fs.FileMode(hdr.Mode)&(fs.ModeSetuid|fs.ModeSetgid|fs.ModeSticky)
		switch hdr.Typeflag {
		case tar.TypeDir:
			if err := rt.MkdirAll(rel, 0o755); err != nil {
				return err
			}
		case tar.TypeReg:
			w, err := rt.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
			if err != nil {
				return err
			}
			_, err = io.Copy(w, tr)
			if cerr := w.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				return err
			}
		case tar.TypeSymlink:
			if err := rt.Symlink(hdr.Linkname, rel); err != nil {
				return err
			}
		case tar.TypeLink:
			target := strings.TrimPrefix(path.Clean("/"+hdr.Linkname), "/")
			if err := rt.Link(target, rel); err != nil {
				return err
			}
		default:
			continue // devices, fifos: the runtime provides /dev
		}
		created[rel] = true
		if hdr.Typeflag == tar.TypeLink {
			continue
		}
		if err := rt.Lchown(rel, hdr.Uid, hdr.Gid); err != nil {
			return err
		}
		if hdr.Typeflag != tar.TypeSymlink {
			if err := rt.Chmod(rel, mode); err != nil {
				return err
			}
		}
	}
}

// clearDir removes the entries of dir that earlier layers made (an opaque whiteout).
func clearDir(rt *os.Root, dir string, created map[string]bool) error {
	if dir == "" {
		dir = "."
	}
	d, err := rt.Open(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	for _, n := range names {
		p := path.Join(dir, n)
		if dir == "." {
			p = n
		}
		if !created[p] {
			if err := rt.RemoveAll(p); err != nil {
				return err
			}
		}
	}
	return nil
}

// WriteImage writes the directory rootfs as a one-layer image into the OCI image layout at
// layout (created if missing; an image already named name is replaced in index.json) and
// returns the manifest's digest. Spec.Image then names it as "<layout>@<name>". It is how a VM
// makes a base image without a registry; a platform with a registry pulls instead (see the
// package documentation).
func WriteImage(layout, name, rootfs string) (string, error) {
	if name == "" || strings.ContainsAny(name, "@/") {
		return "", fmt.Errorf("%w: image name %q", conman.ErrInvalid, name)
	}
	blobs := filepath.Join(layout, "blobs", "sha256")
	if err := os.MkdirAll(blobs, 0o755); err != nil {
		return "", err
	}
	// The layer: a gzip'd tar of rootfs, hashed compressed (digest) and not (diff ID).
	tmp, err := os.CreateTemp(blobs, "layer-")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name())
	defer tmp.Close()
	gzHash, tarHash := sha256.New(), sha256.New()
	gz := gzip.NewWriter(io.MultiWriter(tmp, gzHash))
	if err := writeTar(io.MultiWriter(gz, tarHash), rootfs); err != nil {
		return "", fmt.Errorf("oci: layer of %s: %w", rootfs, err)
	}
	if err := gz.Close(); err != nil {
		return "", err
	}
	size, err := tmp.Seek(0, io.SeekCurrent)
	if err != nil {
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	layerDigest := sumDigest(gzHash)
	if err := os.Rename(tmp.Name(), filepath.Join(blobs, layerDigest.Encoded())); err != nil {
		return "", err
	}
	cfg := v1.Image{
		Platform: v1.Platform{Architecture: goarch(), OS: "linux"},
		RootFS:   v1.RootFS{Type: "layers", DiffIDs: []digest.Digest{sumDigest(tarHash)}},
	}
	cfgDesc, err := writeJSONBlob(blobs, v1.MediaTypeImageConfig, cfg)
	if err != nil {
		return "", err
	}
	man := v1.Manifest{
		Versioned: imagespec.Versioned{SchemaVersion: 2},
		MediaType: v1.MediaTypeImageManifest,
		Config:    cfgDesc,
		Layers:    []v1.Descriptor{{MediaType: v1.MediaTypeImageLayerGzip, Digest: layerDigest, Size: size}},
	}
	manDesc, err := writeJSONBlob(blobs, v1.MediaTypeImageManifest, man)
	if err != nil {
		return "", err
	}
	manDesc.Annotations = map[string]string{v1.AnnotationRefName: name}
	idx := v1.Index{Versioned: imagespec.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageIndex}
	if b, err := os.ReadFile(filepath.Join(layout, "index.json")); err == nil {
		if err := json.Unmarshal(b, &idx); err != nil {
			return "", fmt.Errorf("oci: existing index.json: %w", err)
		}
	}
	kept := idx.Manifests[:0]
	for _, d := range idx.Manifests {
		if d.Annotations[v1.AnnotationRefName] != name {
			kept = append(kept, d)
		}
	}
	idx.Manifests = append(kept, manDesc)
	if err := writeFileAtomic(filepath.Join(layout, "oci-layout"), []byte(`{"imageLayoutVersion":"1.0.0"}`)); err != nil {
		return "", err
	}
	b, err := json.Marshal(idx)
	if err != nil {
		return "", err
	}
	if err := writeFileAtomic(filepath.Join(layout, "index.json"), b); err != nil {
		return "", err
	}
	return string(manDesc.Digest), nil
}

func sumDigest(h hash.Hash) digest.Digest {
	return digest.NewDigestFromEncoded(digest.SHA256, hex.EncodeToString(h.Sum(nil)))
}

func writeJSONBlob(blobs, mediaType string, v any) (v1.Descriptor, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return v1.Descriptor{}, err
	}
	d := digest.FromBytes(b)
	if err := writeFileAtomic(filepath.Join(blobs, d.Encoded()), b); err != nil {
		return v1.Descriptor{}, err
	}
	return v1.Descriptor{MediaType: mediaType, Digest: d, Size: int64(len(b))}, nil
}

func writeFileAtomic(name string, b []byte) error {
	tmp := name + ".tmp"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, name)
}

// writeTar writes the tree at dir as a tar stream (names relative to dir, hard links kept,
// times zeroed so the same tree gives the same layer).
func writeTar(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	seen := map[[2]uint64]string{} // device, inode → first name (hard links)
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(dir, p)
		if err != nil || rel == "." {
			return err
		}
		fi, err := d.Info()
		if err != nil {
			return err
		}
		link := ""
		if fi.Mode()&fs.ModeSymlink != 0 {
			if link, err = os.Readlink(p); err != nil {
				return err
			}
		}
		hdr, err := tar.FileInfoHeader(fi, link)
		if err != nil {
			return err
		}
		hdr.Name = filepath.ToSlash(rel)
		if fi.IsDir() {
			hdr.Name += "/"
		}
		hdr.ModTime, hdr.AccessTime, hdr.ChangeTime = time.Unix(0, 0), time.Time{}, time.Time{}
		hdr.Uname, hdr.Gname = "", ""
		if st, ok := fi.Sys().(*syscall.Stat_t); ok && fi.Mode().IsRegular() && st.Nlink > 1 {
			key := [2]uint64{uint64(st.Dev), st.Ino}
			if first, ok := seen[key]; ok {
				hdr.Typeflag, hdr.Linkname, hdr.Size = tar.TypeLink, first, 0
			} else {
				seen[key] = hdr.Name
			}
		}
		if !fi.Mode().IsRegular() && !fi.IsDir() && fi.Mode()&fs.ModeSymlink == 0 {
			return nil // sockets, devices, fifos
		}
		if err := tw.WriteHeader(hdr); err != nil {
			return err
		}
		if hdr.Typeflag == tar.TypeReg {
			f, err := os.Open(p)
			if err != nil {
				return err
			}
			defer f.Close()
			if _, err := io.Copy(tw, f); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	return tw.Close()
}

// BusyboxRootfs makes a minimal root file system at dir from a static busybox binary (e.g.
// Debian's busybox-static, /bin/busybox): /bin/busybox with a symbolic link per applet, and
// empty /etc, /tmp, /proc, /dev, /sys, /home. It is the base image of the tests and of the
// reference deployment.
func BusyboxRootfs(dir, busybox string) error {
	b, err := os.ReadFile(busybox)
	if err != nil {
		return fmt.Errorf("oci: busybox: %w", err)
	}
	if !bytes.HasPrefix(b, []byte("\x7fELF")) {
		return fmt.Errorf("%w: %s is not an ELF binary", conman.ErrInvalid, busybox)
	}
	for _, d := range []string{"bin", "etc", "tmp", "proc", "dev", "sys", "home", "usr/bin", "sbin"} {
		if err := os.MkdirAll(filepath.Join(dir, d), 0o755); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(dir, "tmp"), 0o1777); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(dir, "bin", "busybox"), b, 0o755); err != nil {
		return err
	}
	out, err := execOutput(busybox, "--list")
	if err != nil {
		return fmt.Errorf("oci: busybox --list: %w", err)
	}
	for _, applet := range strings.Fields(out) {
		if applet == "busybox" || strings.ContainsAny(applet, "/.") {
			continue
		}
		l := filepath.Join(dir, "bin", applet)
		if err := os.Symlink("busybox", l); err != nil && !errors.Is(err, fs.ErrExist) {
			return err
		}
	}
	files := map[string]string{
		"etc/passwd":   "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
		"etc/group":    "root:x:0:\ntty:x:5:\nnogroup:x:65534:\n",
		"etc/hosts":    "127.0.0.1\tlocalhost\n",
		"etc/hostname": "repl\n",
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
			return err
		}
	}
	return nil
}

func execOutput(name string, args ...string) (string, error) {
	out, err := exec.Command(name, args...).Output()
	return string(out), err
}

func goarch() string { return runtime.GOARCH }

// libDirs are where AddLibraries looks for shared libraries, in order.
var libDirs = []string{"/lib/x86_64-linux-gnu", "/usr/lib/x86_64-linux-gnu", "/lib/aarch64-linux-gnu",
	"/usr/lib/aarch64-linux-gnu", "/lib64", "/usr/lib64", "/lib", "/usr/lib"}

// AddLibraries copies into the root file system at rootfs what the VM's dynamically linked
// binaries need to run there: their ELF interpreter and shared libraries (transitively), each
// at its path on the VM. A platform binds a program of the VM into its repls (Spec.Mounts) and
// gives the image its libraries this way; static binaries need nothing.
func AddLibraries(rootfs string, binaries ...string) error {
	done := map[string]bool{}
	var add func(file string) error
	add = func(file string) error {
		if done[file] {
			return nil
		}
		done[file] = true
		f, err := elf.Open(file)
		if err != nil {
			return fmt.Errorf("oci: %s: %w", file, err)
		}
		defer f.Close()
		var need []string
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				b, err := io.ReadAll(io.LimitReader(p.Open(), 4096))
				if err != nil {
					return fmt.Errorf("oci: %s: interpreter: %w", file, err)
				}
				need = append(need, strings.TrimRight(string(b), "\x00"))
			}
		}
		libs, err := f.ImportedLibraries()
		if err != nil {
			return fmt.Errorf("oci: %s: %w", file, err)
		}
		for _, lib := range libs {
			found := ""
			for _, d := range libDirs {
				if _, err := os.Stat(filepath.Join(d, lib)); err == nil {
					found = filepath.Join(d, lib)
					break
				}
			}
			if found == "" {
				return fmt.Errorf("oci: %s needs %s, not found in %v", file, lib, libDirs)
			}
			need = append(need, found)
		}
		for _, n := range need {
			if done[n] {
				continue
			}
			if err := copyInto(rootfs, n); err != nil {
				return err
			}
			if err := add(n); err != nil {
				return err
			}
		}
		return nil
	}
	for _, b := range binaries {
		if err := add(b); err != nil {
			return err
		}
	}
	return nil
}

// copyInto copies the file at name (following symbolic links) to the same path below rootfs.
func copyInto(rootfs, name string) error {
	b, err := os.ReadFile(name)
	if err != nil {
		return fmt.Errorf("oci: %w", err)
	}
	rt, err := os.OpenRoot(rootfs)
	if err != nil {
		return err
	}
	defer rt.Close()
	rel := strings.TrimPrefix(filepath.Clean(name), "/")
	if err := rt.MkdirAll(filepath.Dir(rel), 0o755); err != nil {
		return err
	}
	f, err := rt.OpenFile(rel, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o755)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}
