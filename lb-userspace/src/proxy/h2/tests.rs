//! Tests of the HTTP/2 server: a client of frames written by hand against a connection.
