//go:build !unix

package testserver

import "errors"

var errNoPause = errors.New("pausing the server needs SIGSTOP, which only unix systems have")

// Pause would freeze the server (SIGSTOP); outside unix it cannot.
func (s *Server) Pause() error { return errNoPause }

// Resume has nothing to resume outside unix.
func (s *Server) Resume() error { return nil }
