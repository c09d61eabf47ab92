"""Task presets as data (TOML). Each names only what differs from `lmpref.config`'s defaults."""
