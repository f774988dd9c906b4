//go:build unix

package testserver

import (
	"errors"
	"syscall"
)

// Pause freezes the server process with SIGSTOP: until Resume it neither decodes nor answers
// gRPC or metrics calls, while the kernel still accepts what clients send. A test pauses the
// server to act on a stream that provably cannot finish meanwhile (a cancel, a deadline);
// the Python tests freeze their server subprocess the same way. Pair every Pause with a
// deferred or t.Cleanup Resume: a server left paused hangs every later call.
func (s *Server) Pause() error { return s.signal(syscall.SIGSTOP) }

// Resume lets a paused server run again (SIGCONT); resuming a running server does nothing.
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(signal syscall.Signal) error {
	if s.command == nil || s.command.Process == nil {
		return errors.New("the server is not running")
	}
	return s.command.Process.Signal(signal)
}
