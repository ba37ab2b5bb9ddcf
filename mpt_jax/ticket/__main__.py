"""``python -m mpt_jax.ticket COMMAND [flags]`` (see ``mpt_jax.ticket.cli``)."""
import sys

from mpt_jax.ticket import cli

if __name__ == "__main__":
    sys.exit(cli.main())
