package storage

// OpenFiles reports how many files d's cache holds.
func OpenFiles(d *Disk) int { return d.fds.len() }
