"""The `mm4ke-ray` subcommands, one module each (NAME, HELP, add_arguments, run), on top of the
flow: they load configs, resolve the demo and call the packages below.

Flow: config → data → rsft → merge → evaluate → search → tracking → export, [commands] on top.
"""
