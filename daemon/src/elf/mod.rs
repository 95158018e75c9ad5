//! ELF reading: symbols, segments, file offset math (object + safe file access).
