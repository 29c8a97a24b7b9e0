"""The top layer: the `xlir` command line (`cli.main`) and `make demo` (`cli.demo`)."""
