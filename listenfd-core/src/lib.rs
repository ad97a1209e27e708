//! Receiver for the `LISTEN_FDS`/`LISTEN_PID` socket-passing protocol.
