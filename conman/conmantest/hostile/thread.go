//go:build linux

package main

import "runtime"

func lockThread() { runtime.LockOSThread() }
