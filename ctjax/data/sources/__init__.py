"""One module per kind of source; each defines `open_source(data_config, split)`."""
