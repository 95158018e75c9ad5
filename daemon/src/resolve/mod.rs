//! The speculative resolver: address → VMA → (device, inode, file offset).
