//! Windows sources (ETW): see etw.rs.
