//! Launch socket-activated daemons.
