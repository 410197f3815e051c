"""CLI commands beyond the core ones in ``sxtdask.cli``, one module each.

A module here defines ``NAME`` (the command word), ``add_parser(subparsers)`` (adds its
``argparse`` sub-parser) and ``run(args, console) -> dict`` (does the work; user errors are raised
as ``SxtdaskError``). ``sxtdask.cli`` finds the modules itself; nothing else imports them. Like
``sxtdask.cli``, these modules may print (through the console) but library code may not.
"""
