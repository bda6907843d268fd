//! The only module that touches sockets.
