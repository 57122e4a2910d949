package main

import (
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
)

// adminKeyFlag declares -admin-key-file and returns a function reading the admin key from
// that file or, without it, from $SWITCHYARD_ADMIN_KEY. Secrets never travel in argv, where
// every process on the machine can read them (/proc/<pid>/cmdline).
func adminKeyFlag(fs *flag.FlagSet) func() (string, error) {
	file := fs.String("admin-key-file", "", "file holding the admin key (default: $"+envAdminKey+")")
	return func() (string, error) {
		if *file == "" {
			return os.Getenv(envAdminKey), nil
		}
		return readSecret(*file)
	}
}

// readSecret reads a secret from a file that only its owner may read.
func readSecret(path string) (string, error) {
	fi, err := os.Stat(path)
	if err != nil {
		return "", err
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return "", fmt.Errorf("%s is readable by others (mode %v): chmod 600 it", path, fi.Mode().Perm())
	}
	b, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", errors.New(path + " is empty")
	}
	return s, nil
}

// keepAdminKey returns the admin key of the platform kept in stateDir: the given one (saved
// for the next start) or, without one, the saved one or a new one.
func keepAdminKey(stateDir, key string) (string, error) {
	path := filepath.Join(stateDir, "admin-key")
	if key == "" {
		if saved, err := readSecret(path); err == nil {
			return saved, nil
		} else if !errors.Is(err, os.ErrNotExist) {
			return "", err
		}
		key = randomKey()
	}
	if err := os.WriteFile(path, []byte(key+"\n"), 0o600); err != nil {
		return "", err
	}
	return key, nil
}
