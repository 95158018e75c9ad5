//! File offset → symbol, cached per (device, inode) and shared across processes.
