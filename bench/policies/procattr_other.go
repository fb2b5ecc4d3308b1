//go:build !linux

package main

import "syscall"

// childAttr has nothing to add where there is no parent-death signal: the
// deferred stop of every process still ends them on errors and interrupts.
func childAttr() *syscall.SysProcAttr { return nil }
