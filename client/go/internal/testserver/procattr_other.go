//go:build !linux

package testserver

import "os/exec"

// setParentDeathSignal has no portable equivalent outside Linux; Stop still ends the server.
func setParentDeathSignal(command *exec.Cmd) {}
