package main

import "syscall"

// childAttr makes a child die with the benchmark, even if the benchmark is
// killed without a chance to stop it.
func childAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
