"""FS backends: memory, posix (worker threads), uring, object store."""
