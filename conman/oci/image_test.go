//go:build linux

package oci

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	digest "github.com/opencontainers/go-digest"
	imagespec "github.com/opencontainers/image-spec/specs-go"
	v1 "github.com/opencontainers/image-spec/specs-go/v1"
	"github.com/stretchr/testify/require"
)

type entry struct {
	name, body, link string
	typ              byte
}

// writeLayer writes a gzip'd tar of entries as a blob of layout.
func writeLayer(t *testing.T, layout string, entries []entry) v1.Descriptor {
	t.Helper()
	var buf bytes.Buffer
	gz := gzip.NewWriter(&buf)
	tw := tar.NewWriter(gz)
	for _, e := range entries {
		hdr := &tar.Header{Name: e.name, Typeflag: e.typ, Mode: 0o755, Linkname: e.link, Size: int64(len(e.body))}
		if e.typ == 0 {
			hdr.Typeflag = tar.TypeReg
		}
		if hdr.Typeflag != tar.TypeReg {
			hdr.Size = 0
		}
		require.NoError(t, tw.WriteHeader(hdr))
		if hdr.Typeflag == tar.TypeReg {
			_, err := tw.Write([]byte(e.body))
			require.NoError(t, err)
		}
	}
	require.NoError(t, tw.Close())
	require.NoError(t, gz.Close())
	d := digest.FromBytes(buf.Bytes())
	blobs := filepath.Join(layout, "blobs", "sha256")
	require.NoError(t, os.MkdirAll(blobs, 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(blobs, d.Encoded()), buf.Bytes(), 0o644))
	return v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: d, Size: int64(buf.Len())}
}

// writeManifest records an image of layers under name in layout's index.
func writeManifest(t *testing.T, layout, name string, layers ...v1.Descriptor) {
	t.Helper()
	blobs := filepath.Join(layout, "blobs", "sha256")
	require.NoError(t, os.MkdirAll(blobs, 0o755))
	cfg, err := writeJSONBlob(blobs, v1.MediaTypeImageConfig, v1.Image{Platform: v1.Platform{OS: "linux", Architecture: goarch()}})
	require.NoError(t, err)
	man, err := writeJSONBlob(blobs, v1.MediaTypeImageManifest, v1.Manifest{
		Versioned: imagespec.Versioned{SchemaVersion: 2}, MediaType: v1.MediaTypeImageManifest, Config: cfg, Layers: layers})
	require.NoError(t, err)
	man.Annotations = map[string]string{v1.AnnotationRefName: name}
	idx := v1.Index{Versioned: imagespec.Versioned{SchemaVersion: 2}, Manifests: []v1.Descriptor{man}}
	b, err := json.Marshal(idx)
	require.NoError(t, err)
	require.NoError(t, os.WriteFile(filepath.Join(layout, "index.json"), b, 0o644))
}

func unpackTo(t *testing.T, layout, ref string) (string, error) {
	t.Helper()
	m, _, err := readManifest(layout, ref)
	if err != nil {
		return "", err
	}
	root := t.TempDir()
	for _, l := range m.Layers {
		if err := applyLayer(layout, l, root); err != nil {
			return root, err
		}
	}
	return root, nil
}

func TestImageRoundTrip(t *testing.T) {
	src := t.TempDir()
	require.NoError(t, os.MkdirAll(filepath.Join(src, "bin"), 0o755))
	require.NoError(t, os.WriteFile(filepath.Join(src, "bin", "tool"), []byte("#!/bin/sh\n"), 0o755))
	require.NoError(t, os.Link(filepath.Join(src, "bin", "tool"), filepath.Join(src, "bin", "alias")))
	require.NoError(t, os.Symlink("tool", filepath.Join(src, "bin", "link")))
	require.NoError(t, os.Symlink("/bin/tool", filepath.Join(src, "abs")))
	layout := t.TempDir()
	d1, err := WriteImage(layout, "v1", src)
	require.NoError(t, err)
	d2, err := WriteImage(layout, "v1", src) // same tree, same image: replaced, not duplicated
	require.NoError(t, err)
	require.Equal(t, d1, d2)
	require.NoError(t, os.WriteFile(filepath.Join(src, "v2"), nil, 0o644))
	_, err = WriteImage(layout, "v2", src)
	require.NoError(t, err)

	root, err := unpackTo(t, layout, "v1")
	require.NoError(t, err)
	b, err := os.ReadFile(filepath.Join(root, "bin", "alias"))
	require.NoError(t, err)
	require.Equal(t, "#!/bin/sh\n", string(b))
	fi, err := os.Stat(filepath.Join(root, "bin", "tool"))
	require.NoError(t, err)
	require.Equal(t, os.FileMode(0o755), fi.Mode().Perm())
	l, err := os.Readlink(filepath.Join(root, "abs"))
	require.NoError(t, err)
	require.Equal(t, "/bin/tool", l)
	_, _, err = readManifest(layout, d1) // by digest
	require.NoError(t, err)
	_, _, err = readManifest(layout, "") // two images: the reference is needed
	require.ErrorContains(t, err, "name one")
	_, _, err = readManifest(layout, "v9")
	require.ErrorContains(t, err, "no image manifest")
}

// TestImageHostile: a layer cannot write outside the root, and blobs must match their digests.
func TestImageHostile(t *testing.T) {
	t.Run("dotdot", func(t *testing.T) {
		layout := t.TempDir()
		writeManifest(t, layout, "x", writeLayer(t, layout, []entry{{name: "../../evil", body: "x"}}))
		_, err := unpackTo(t, layout, "x")
		require.ErrorContains(t, err, "leaves the root")
	})
	t.Run("through a symlink", func(t *testing.T) {
		outside := t.TempDir()
		layout := t.TempDir()
		writeManifest(t, layout, "x", writeLayer(t, layout, []entry{
			{name: "esc", typ: tar.TypeSymlink, link: outside},
			{name: "esc/evil", body: "x"},
		}))
		_, err := unpackTo(t, layout, "x")
		require.Error(t, err)
		_, serr := os.Stat(filepath.Join(outside, "evil"))
		require.True(t, os.IsNotExist(serr), "a file was written outside the root")
	})
	t.Run("hard link out", func(t *testing.T) {
		layout := t.TempDir()
		writeManifest(t, layout, "x", writeLayer(t, layout, []entry{{name: "pw", typ: tar.TypeLink, link: "../../../../etc/passwd"}}))
		root, err := unpackTo(t, layout, "x")
		if err == nil {
			_, serr := os.Stat(filepath.Join(root, "pw"))
			require.True(t, os.IsNotExist(serr), "a hard link to a file outside the root")
		}
	})
	t.Run("tampered", func(t *testing.T) {
		layout := t.TempDir()
		l := writeLayer(t, layout, []entry{{name: "f", body: "good"}})
		writeManifest(t, layout, "x", l)
		p := filepath.Join(layout, "blobs", "sha256", l.Digest.Encoded())
		b, _ := os.ReadFile(p)
		var other bytes.Buffer
		gz := gzip.NewWriter(&other)
		tw := tar.NewWriter(gz)
		_ = tw.WriteHeader(&tar.Header{Name: "f", Typeflag: tar.TypeReg, Mode: 0o644, Size: 4})
		_, _ = tw.Write([]byte("evil"))
		tw.Close()
		gz.Close()
		require.NotEqual(t, b, other.Bytes())
		require.NoError(t, os.WriteFile(p, other.Bytes(), 0o644))
		_, err := unpackTo(t, layout, "x")
		require.ErrorContains(t, err, "does not match")
	})
	t.Run("bad digest", func(t *testing.T) {
		layout := t.TempDir()
		writeManifest(t, layout, "x", v1.Descriptor{MediaType: v1.MediaTypeImageLayerGzip, Digest: "sha256:../../etc"})
		_, err := unpackTo(t, layout, "x")
		require.ErrorContains(t, err, "unsupported digest")
	})
}

func TestImageWhiteouts(t *testing.T) {
	layout := t.TempDir()
	l1 := writeLayer(t, layout, []entry{
		{name: "a/old", body: "1"}, {name: "a/keep", body: "1"}, {name: "b/x", body: "1"}, {name: "b/y", body: "1"},
	})
	l2 := writeLayer(t, layout, []entry{
		{name: "a/.wh.old"}, {name: "b/new", body: "2"}, {name: "b/.wh..wh..opq"},
	})
	writeManifest(t, layout, "x", l1, l2)
	root, err := unpackTo(t, layout, "x")
	require.NoError(t, err)
	var got []string
	_ = filepath.WalkDir(root, func(p string, d os.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(root, p)
			got = append(got, rel)
		}
		return nil
	})
	require.Equal(t, "a/keep b/new", strings.Join(got, " "))
}
