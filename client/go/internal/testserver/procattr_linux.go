package testserver

import (
	"os/exec"
	"syscall"
)

// setParentDeathSignal kills the Python server if the test binary dies without calling Stop
// (a panic or a CI timeout), so no orphan keeps the port and the CPU.
func setParentDeathSignal(command *exec.Cmd) {
	command.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
