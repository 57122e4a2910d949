package main

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha512"
	"embed"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path"
	"path/filepath"
	"strings"
	"time"
)

// The pages' third-party files come from npm and are not in the repository. package-lock.json
// pins each package's version and sha512 integrity; the binary gets the files from those same
// tarballs, in this order:
//
//  1. embedded: files `go generate` wrote to web/dist before the build (a self-contained binary);
//  2. the cache: a directory per lockfile integrity under the user's cache directory;
//  3. the npm registry: the tarball is downloaded, checked against the lockfile's integrity,
//     and the files it needs are written to the cache.
//
// No node or npm is needed for any of it; npm only edits the lockfile when a version changes.
// Nothing unverified is ever served: a tarball whose sha512 differs from the lockfile is refused.

//go:generate go run . web-assets -o web/dist

//go:embed web/package-lock.json
var webLockfile []byte

// webDist holds the files `go generate` wrote (only web/dist/.keep in a fresh clone).
//
//go:embed all:web/dist
var webDist embed.FS

// webAsset is one file the pages load from an npm package.
type webAsset struct {
	name        string // served at /assets/<name>
	pkg         string // npm package
	path        string // inside the package
	contentType string
}

var webAssets = []webAsset{
	{"xterm.js", "@xterm/xterm", "lib/xterm.js", "text/javascript; charset=utf-8"},
	{"xterm.css", "@xterm/xterm", "css/xterm.css", "text/css; charset=utf-8"},
	{"addon-fit.js", "@xterm/addon-fit", "lib/addon-fit.js", "text/javascript; charset=utf-8"},
}

// maxTarball bounds a downloaded package (xterm's is 1.4 MB).
const maxTarball = 32 << 20

// npmPackage is one locked package: what package-lock.json says about it.
type npmPackage struct {
	Name      string
	Version   string
	Integrity []byte // the sha512 digest
	Resolved  string // tarball URL; empty when the lockfile omits it
}

// lockedPackages reads the packages webAssets needs from a package-lock.json (version 2 or 3).
func lockedPackages(lockfile []byte) (map[string]npmPackage, error) {
	var lock struct {
		LockfileVersion int `json:"lockfileVersion"`
		Packages        map[string]struct {
			Version   string `json:"version"`
			Integrity string `json:"integrity"`
			Resolved  string `json:"resolved"`
		} `json:"packages"`
	}
	if err := json.Unmarshal(lockfile, &lock); err != nil {
		return nil, fmt.Errorf("package-lock.json: %w", err)
	}
	if lock.LockfileVersion < 2 {
		return nil, fmt.Errorf("package-lock.json: lockfileVersion %d, want 2 or 3", lock.LockfileVersion)
	}
	out := map[string]npmPackage{}
	for _, a := range webAssets {
		if _, ok := out[a.pkg]; ok {
			continue
		}
		e, ok := lock.Packages["node_modules/"+a.pkg]
		if !ok || e.Version == "" {
			return nil, fmt.Errorf("package-lock.json: no entry for %s", a.pkg)
		}
		var sum []byte
		for _, h := range strings.Fields(e.Integrity) {
			if b64, ok := strings.CutPrefix(h, "sha512-"); ok {
				d, err := base64.StdEncoding.DecodeString(b64)
				if err == nil && len(d) == sha512.Size {
					sum = d
				}
			}
		}
		if sum == nil {
			return nil, fmt.Errorf("package-lock.json: %s has no sha512 integrity", a.pkg)
		}
		out[a.pkg] = npmPackage{Name: a.pkg, Version: e.Version, Integrity: sum, Resolved: e.Resolved}
	}
	return out, nil
}

// tarballURL is where the registry serves pkg's tarball: the lockfile's resolved URL, else the
// registry's conventional path <registry>/<name>/-/<name without scope>-<version>.tgz.
func (pkg npmPackage) tarballURL(registry string) (string, error) {
	raw := pkg.Resolved
	if raw == "" {
		base := pkg.Name[strings.LastIndex(pkg.Name, "/")+1:]
		raw = strings.TrimRight(registry, "/") + "/" + pkg.Name + "/-/" + base + "-" + pkg.Version + ".tgz"
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return "", fmt.Errorf("%s: bad tarball URL %q", pkg.Name, raw)
	}
	return u.String(), nil
}

// npmRegistry is the registry tarballs come from: $npm_config_registry, as npm reads it, else
// the public registry.
func npmRegistry() string {
	if r := os.Getenv("npm_config_registry"); r != "" {
		return r
	}
	return "https://registry.npmjs.org/"
}

// webAssetSet is the loaded files by name, and where they came from.
type webAssetSet struct {
	files  map[string][]byte
	source string // "embedded", a cache directory, or a registry URL
}

// assetCacheDir is the directory holding the files of one lockfile: the lockfile's digest
// names it, so a changed lockfile never reads another version's files.
func assetCacheDir(root string) string {
	sum := sha512.Sum512(webLockfile)
	return filepath.Join(root, "web-"+hex.EncodeToString(sum[:8]))
}

// defaultAssetCache is the user's cache directory for the pages' files.
func defaultAssetCache() string {
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "switchyard")
	}
	return filepath.Join(os.TempDir(), "switchyard-cache")
}

// loadWebAssets finds the pages' files: embedded, else in cacheRoot's directory for this
// lockfile, else downloaded from registry (and cached when cacheRoot is not empty).
func loadWebAssets(ctx context.Context, cacheRoot, registry string, client *http.Client) (*webAssetSet, error) {
	if files, err := readAssets(webDist, "web/dist"); err == nil {
		return &webAssetSet{files: files, source: "embedded"}, nil
	}
	var dir string
	if cacheRoot != "" {
		dir = assetCacheDir(cacheRoot)
		if files, err := readAssets(os.DirFS(dir), "."); err == nil {
			return &webAssetSet{files: files, source: dir}, nil
		}
	}
	files, err := fetchWebAssets(ctx, registry, client)
	if err != nil {
		return nil, err
	}
	if dir != "" {
		if err := writeAssets(dir, files); err != nil {
			return nil, fmt.Errorf("cache the pages' files: %w", err)
		}
	}
	return &webAssetSet{files: files, source: registry}, nil
}

// readAssets reads every webAssets file from fsys's dir; it fails if one is missing.
func readAssets(fsys fs.FS, dir string) (map[string][]byte, error) {
	files := map[string][]byte{}
	for _, a := range webAssets {
		b, err := fs.ReadFile(fsys, path.Join(dir, a.name))
		if err != nil {
			return nil, err
		}
		files[a.name] = b
	}
	return files, nil
}

// writeAssets writes the files into dir, each by a rename so a reader never sees half a file.
func writeAssets(dir string, files map[string][]byte) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return err
	}
	for name, b := range files {
		tmp, err := os.CreateTemp(dir, "."+name+".*")
		if err != nil {
			return err
		}
		_, werr := tmp.Write(b)
		cerr := tmp.Close()
		if err := errors.Join(werr, cerr); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Chmod(tmp.Name(), 0o644); err != nil {
			os.Remove(tmp.Name())
			return err
		}
		if err := os.Rename(tmp.Name(), filepath.Join(dir, name)); err != nil {
			os.Remove(tmp.Name())
			return err
		}
	}
	return nil
}

// fetchWebAssets downloads each locked package from registry, checks its sha512 against the
// lockfile, and extracts the files webAssets names.
func fetchWebAssets(ctx context.Context, registry string, client *http.Client) (map[string][]byte, error) {
	pkgs, err := lockedPackages(webLockfile)
	if err != nil {
		return nil, err
	}
	if client == nil {
		// A transport of its own, closed after: nothing lingers once the files are here.
		tr := http.DefaultTransport.(*http.Transport).Clone()
		tr.DisableKeepAlives = true
		defer tr.CloseIdleConnections()
		client = &http.Client{Timeout: time.Minute, Transport: tr}
	}
	files := map[string][]byte{}
	for _, pkg := range pkgs {
		want := map[string]string{} // path in the tarball → asset name
		for _, a := range webAssets {
			if a.pkg == pkg.Name {
				want["package/"+a.path] = a.name
			}
		}
		tgz, err := downloadTarball(ctx, client, pkg, registry)
		if err != nil {
			return nil, err
		}
		got, err := extractFiles(tgz, want)
		if err != nil {
			return nil, fmt.Errorf("%s@%s: %w", pkg.Name, pkg.Version, err)
		}
		for k, v := range got {
			files[k] = v
		}
	}
	return files, nil
}

func downloadTarball(ctx context.Context, client *http.Client, pkg npmPackage, registry string) ([]byte, error) {
	u, err := pkg.tarballURL(registry)
	if err != nil {
		return nil, err
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		return nil, err
	}
	resp, err := client.Do(req)
	if err != nil {
		return nil, fmt.Errorf("download %s@%s: %w", pkg.Name, pkg.Version, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("download %s: %s", u, resp.Status)
	}
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxTarball+1))
	if err != nil {
		return nil, fmt.Errorf("download %s: %w", u, err)
	}
	if len(b) > maxTarball {
		return nil, fmt.Errorf("download %s: larger than %d bytes", u, maxTarball)
	}
	if sum := sha512.Sum512(b); !bytes.Equal(sum[:], pkg.Integrity) {
		return nil, fmt.Errorf("download %s: sha512 differs from package-lock.json's integrity: refused", u)
	}
	return b, nil
}

// extractFiles returns the regular files of a gzipped tarball named in want, by want's value.
func extractFiles(tgz []byte, want map[string]string) (map[string][]byte, error) {
	zr, err := gzip.NewReader(bytes.NewReader(tgz))
	if err != nil {
		return nil, err
	}
	tr := tar.NewReader(zr)
	out := map[string][]byte{}
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, err
		}
		name, ok := want[h.Name]
		if !ok || h.Typeflag != tar.TypeReg {
			continue
		}
		b, err := io.ReadAll(io.LimitReader(tr, maxTarball))
		if err != nil {
			return nil, err
		}
		out[name] = b
	}
	for p, name := range want {
		if _, ok := out[name]; !ok {
			return nil, fmt.Errorf("no %s in the tarball", p)
		}
	}
	return out, nil
}

// runWebAssets is the web-assets command: it writes the pages' files (from the cache or the
// registry, checked against the lockfile) into a directory, for `go generate` to embed them.
func runWebAssets(args []string) error {
	fs := flag.NewFlagSet("web-assets", flag.ContinueOnError)
	out := fs.String("o", "web/dist", "directory to write the files to (web/dist is embedded by the next build)")
	cache := fs.String("cache", defaultAssetCache(), "download cache directory (empty: none)")
	registry := fs.String("registry", npmRegistry(), "npm registry base URL (default $npm_config_registry, else the public registry)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	set, err := loadWebAssets(ctx, *cache, *registry, nil)
	if err != nil {
		return err
	}
	if err := writeAssets(*out, set.files); err != nil {
		return err
	}
	fmt.Printf("wrote %d files to %s (from %s)\n", len(set.files), *out, set.source)
	return nil
}
