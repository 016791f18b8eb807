// Package config resolves where banger keeps its files and what its settings
// are.
//
// It owns two things: the Layout (every path banger reads or writes, derived
// from the XDG base-directory variables so tests isolate by setting them) and
// the Config (the settings in config.toml, with defaults resolved from the
// config file, then a heuristic over the host, then built-in constants, and a
// record of which source each value came from).
//
// Config errors name the file, the line and the key, because a user fixes
// them by hand. Load reads only the one file it is given and DetectHost reads
// only the host's CPU count and memory size.
//
// It must not start processes, open the daemon's database, or know anything
// about VMs beyond the default values for new ones.
package config
